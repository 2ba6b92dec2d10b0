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
from .fuse_projections import FuseProjectionsPass
from .fuse_sum_relu import FuseSumReluPass
from .insert_identities import InsertIdentitiesPass
from .scalarize import ScalarizePass

PASSES: dict[str, type] = {p.name: p for p in (ScalarizePass, FuseSumReluPass, InsertIdentitiesPass, ColorPass,
                                               FuseProjectionsPass)}
GROUP = "feascomp.passes"

DEFAULT_PIPELINE = "scalarize,fuse-sum-relu,insert-identities,color"
FUSED_PIPELINE = DEFAULT_PIPELINE + ",fuse-projections"
NO_IDENTITIES_PIPELINE = "scalarize,fuse-sum-relu,color{general=true}"


def available() -> dict[str, type]:
    """Built-in passes and those installed under the entry-point group ``feascomp.passes``."""
    from importlib.metadata import entry_points

    found = dict(PASSES)
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the compiler
            raise FeascompError(f"pass plug-in {ep.name!r} ({ep.value}) cannot be loaded: {e}") from None
    return found


def pipeline_text(passes) -> str:
    """The canonical pipeline string of pass objects (options that differ from defaults)."""
    parts = []
    for p in passes:
        opts = []
        for f in dataclasses.fields(p):
            v = getattr(p, f.name)
            if f.default is dataclasses.MISSING or v != f.default:
                opts.append(f"{f.name}={str(v).lower() if isinstance(v, bool) else v}")
        parts.append(p.name + ("{" + ",".join(opts) + "}" if opts else ""))
    return ",".join(parts)


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


def _same_kind(default, value) -> bool:
    """Whether a pipeline option's value fits its default: bools for bools, whole numbers
    for ints, numbers for floats, strings for strings."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def parse_pipeline(text: str, **defaults) -> list:
    """``a,b{k=v,k2=v2},c`` -> pass objects. ``defaults`` fill options a pass declares
    (e.g. batch) where the text does not set them."""
    passes = []
    for m in re.finditer(r"\s*([A-Za-z][\w-]*)\s*(\{[^}]*\})?\s*(,|$)", text):
        if not m.group(1):
            continue
        name, opts = m.group(1), m.group(2)
        registry = available()
        cls = registry.get(name)
        if cls is None:
            raise FeascompError(f"unknown pass {name!r}; available: {', '.join(sorted(registry))}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in defaults.items() if k in fields}
        if opts:
            for item in filter(None, (s.strip() for s in opts[1:-1].split(","))):
                key, _, val = item.partition("=")
                key = key.strip()
                if key not in fields:
                    raise FeascompError(f"pass {name!r} has no option {key!r}; options: {', '.join(sorted(fields)) or 'none'}")
                kw[key] = _value(val)
                default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
                if default is not dataclasses.MISSING and default is not None and not _same_kind(default, kw[key]):
                    raise FeascompError(f"pass {name!r}: option {key} takes {type(default).__name__} values "
                                        f"(like {default!r}), not {val.strip()!r}")
        passes.append(cls(**kw))
    if not passes and text.strip():
        raise FeascompError(f"cannot read pipeline {text!r}")
    return passes


def verify(module) -> None:
    if isinstance(module, FeasModule):
        feasibility.verify(module)
    else:
        tensor.verify(module)


def run_pipeline(module, passes, *, verify_each: bool = True, after: Callable | None = None, timings: dict | None = None,
                 reproducer_dir: str | None = None):
    """Run passes in order; ``after(pass, module)`` is called after each (for printing).

    A pass that raises, or whose output fails the verifier, is reported by name; with
    ``reproducer_dir`` the IR it received is written there (atomically) so that
    ``feascomp opt FILE --passes NAME`` re-runs exactly the failing step."""
    from ..ir.text import print_feasibility, print_tensor

    for p in passes:
        want = getattr(p, "input_level", None)
        have = "feasibility" if isinstance(module, FeasModule) else "tensor"
        if want and want != have:
            raise FeascompError(f"pass {p.name!r} runs on {want} IR, but the pipeline gives it {have} IR")
        t0 = time.perf_counter()
        try:
            out = p.run(module)
            if verify_each:
                verify(out)
        except FeascompError as e:
            note = None
            if reproducer_dir is not None:
                path = _write_reproducer(reproducer_dir, p, print_tensor(module) if have == "tensor" else print_feasibility(module))
                note = f"the IR the pass received is in {path}; re-run: feascomp opt {path} --passes '{pipeline_text([p])}'"
            raise FeascompError(f"pass {p.name!r} failed: {e.message}", e.loc, note=note) from None
        if timings is not None:
            timings[p.name] = timings.get(p.name, 0.0) + time.perf_counter() - t0
        module = out
        if after is not None:
            after(p, module)
    return module


def _write_reproducer(folder: str, p, text: str) -> str:
    import os

    from ..files import atomic_write

    path = os.path.join(folder, f"feascomp-reproducer-{p.name}.ir")
    header = f"// reproducer: the input of pass {pipeline_text([p])}\n"
    atomic_write(path, lambda fh: fh.write((header + text).encode()))
    return path
