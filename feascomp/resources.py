"""Memory before allocation: a run's peak estimated from its plan, checked against what
the machine (or ``--max-memory``) allows, so a run that cannot fit is refused with the
figure instead of growing until the kernel kills it.

The estimate, per process (one device today; per device under a mesh later):

    peak = runtime + parameters x PARAM_COPIES + edge state x (1 + TEMPORARIES_RATIO)

- edge state: what the lowering stores (``Program.state_bytes``: materialized edges, less
  AP's elided inputs; the collapsed lowering's slots and coefficients);
- XLA temporaries: the projections' intermediate states inside the jitted update
  (P0(z), the reflection, P1(...)), at the largest ratio measured on the examples (the
  table is in docs/errors.md: peak less runtime was 0.9x to 3.4x the edge state, so
  1 + TEMPORARIES_RATIO = 3.5); with edges stored narrower than the arithmetic
  (--edge-dtype) at the arithmetic's width, since the steps work on widened copies (measured
  on the 1x32 CNN: float16 edges halve the state, XLA's temporaries fall by a quarter);
- parameters: the model's values, their means, the previous update's and the host copy;
- runtime: the Python process with JAX and XLA loaded, and the dataset.

Nothing here allocates: it reads types from the plan.
"""
from __future__ import annotations

import dataclasses
import math
import re

from .errors import FeascompError

TEMPORARIES_RATIO = 2.5
PARAM_COPIES = 4
RUNTIME_BYTES = 512 * 2**20

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes from '4G', '512M', '1.5GB', '1000000' (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 4G, 512M, 1.5GB)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not value >= 1:
        raise ValueError(f"{text!r} must be at least one byte")
    return int(value)


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup (v2 or v1)
    limit less its usage; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as a, open(usage) as b:
                text = a.read().strip()
                if text != "max" and int(text) < 2**60:
                    found.append(int(text) - int(b.read().strip()))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """A run's estimated peak, in bytes, with its parts; ``families``: the edge state each
    family's in-edges take as the lowering stores them (plan order)."""

    edge_state: int  # per device, under a mesh
    params: int
    families: tuple[tuple[str, int], ...] = ()
    devices: int = 1
    total_edge_state: int | None = None  # over every device (None: edge_state)
    widening: float = 1.0  # the arithmetic's itemsize over the edges' (2 for float16 edges, float32 steps)

    @property
    def temporaries(self) -> int:
        return int(self.edge_state * self.widening * TEMPORARIES_RATIO)

    @property
    def peak(self) -> int:
        return RUNTIME_BYTES + self.params * PARAM_COPIES + self.edge_state + self.temporaries

    def as_dict(self) -> dict:
        return {"edge_state_bytes": self.edge_state, "param_bytes": self.params,
                "temporaries_bytes": self.temporaries, "runtime_bytes": RUNTIME_BYTES,
                "estimated_peak_bytes": self.peak, "family_state_bytes": dict(self.families),
                "devices": self.devices, "total_edge_state_bytes": self.total_edge_state or self.edge_state}

    def describe(self) -> str:
        return (f"edge state {fmt_bytes(self.edge_state)} + XLA temporaries {fmt_bytes(self.temporaries)} + "
                f"parameters {fmt_bytes(self.params)} x {PARAM_COPIES} + runtime {fmt_bytes(RUNTIME_BYTES)}")


def check(estimate: MemoryEstimate, max_memory: int | None, *, batch_size: int, where=None) -> None:
    """Refuse a run whose estimated peak exceeds its budget, saying what to reduce. The
    budget is ``max_memory`` where given (the user's word: the estimate is an upper bound,
    up to 4x a run's real peak, so a budget above what is free now is allowed), else the
    memory available now."""
    limit, source = max_memory, "--max-memory"
    if limit is None:
        limit, source = available_bytes(), "available memory"
    if limit is None or estimate.peak <= limit:
        return
    largest = max(estimate.families, key=lambda kv: kv[1], default=None)
    hint = f"; the largest family is %{largest[0]} ({fmt_bytes(largest[1])})" if largest and largest[1] else ""
    fits = max(1, int(batch_size * max(limit - RUNTIME_BYTES - estimate.params * PARAM_COPIES, 0)
                      / max(estimate.peak - RUNTIME_BYTES - estimate.params * PARAM_COPIES, 1)))
    raise FeascompError(
        f"this run needs an estimated {fmt_bytes(estimate.peak)} ({estimate.describe()}), more than the "
        f"{fmt_bytes(limit)} of {source}{hint}",
        where,
        note=f"reduce --batch-size (the edge state grows with it; about {fits} would fit), use "
             "--lowering collapsed (AP, DR, DM: dense and conv layers keep no edge copies), or a smaller model"
             + ("" if source == "--max-memory" else "; or set the budget yourself with --max-memory SIZE"),
    )


def check_param(name: str, shape, itemsize: int, where=None) -> None:
    """Refuse to allocate a parameter larger than the memory available now, naming it."""
    need = math.prod(shape) * itemsize
    free = available_bytes()
    if free is not None and need > free:
        raise FeascompError(f"parameter {name} ({list(shape)}) needs {fmt_bytes(need)}, more than the "
                            f"{fmt_bytes(free)} of memory available", where)
