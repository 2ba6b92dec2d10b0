"""Passes and the pass manager.

A pass is a frozen dataclass with a kebab-case ``name``, its options as fields, an
``input_level`` and a pure ``run(module) -> module``. A pipeline is text:
``scalarize{batch=256},fuse-sum-relu,color``. The manager verifies the IR after every pass
(unless told not to) and can print it after each one.
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

from ..errors import FeascompError
from ..ir import feasibility, tensor
from ..ir.feasibility import FeasModule
from .color import ColorPass
from .fuse_sum_relu import FuseSumReluPass
from .scalarize import ScalarizePass

PASSES: dict[str, type] = {p.name: p for p in (ScalarizePass, FuseSumReluPass, ColorPass)}

DEFAULT_PIPELINE = "scalarize,fuse-sum-relu,color"


def _value(text: str):
    t = text.strip()
    if t in ("true", "false"):
        return t == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_pipeline(text: str, **defaults) -> list:
    """``a,b{k=v,k2=v2},c`` -> pass objects. ``defaults`` fill options a pass declares
    (e.g. batch) where the text does not set them."""
    passes = []
    for m in re.finditer(r"\s*([A-Za-z][\w-]*)\s*(\{[^}]*\})?\s*(,|$)", text):
        if not m.group(1):
            continue
        name, opts = m.group(1), m.group(2)
        cls = PASSES.get(name)
        if cls is None:
            raise FeascompError(f"unknown pass {name!r}; available: {', '.join(sorted(PASSES))}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in defaults.items() if k in fields}
        if opts:
            for item in filter(None, (s.strip() for s in opts[1:-1].split(","))):
                key, _, val = item.partition("=")
                key = key.strip()
                if key not in fields:
                    raise FeascompError(f"pass {name!r} has no option {key!r}; options: {', '.join(sorted(fields)) or 'none'}")
                kw[key] = _value(val)
        passes.append(cls(**kw))
    if not passes and text.strip():
        raise FeascompError(f"cannot read pipeline {text!r}")
    return passes


def verify(module) -> None:
    if isinstance(module, FeasModule):
        feasibility.verify(module)
    else:
        tensor.verify(module)


def run_pipeline(module, passes, *, verify_each: bool = True, after: Callable | None = None, timings: dict | None = None):
    """Run passes in order; ``after(pass, module)`` is called after each (for printing)."""
    for p in passes:
        want = getattr(p, "input_level", None)
        have = "feasibility" if isinstance(module, FeasModule) else "tensor"
        if want and want != have:
            raise FeascompError(f"pass {p.name!r} runs on {want} IR, but the pipeline gives it {have} IR")
        t0 = time.perf_counter()
        module = p.run(module)
        if timings is not None:
            timings[p.name] = timings.get(p.name, 0.0) + time.perf_counter() - t0
        if verify_each:
            try:
                verify(module)
            except FeascompError as e:
                raise FeascompError(f"IR after pass {p.name!r} does not verify: {e.message}", e.loc) from None
        if after is not None:
            after(p, module)
    return module
