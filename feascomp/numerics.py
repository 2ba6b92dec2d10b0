"""Non-finite states: detect them cheaply after each update, and on failure find where
they started.

The check after an update reads what the update returns anyway: every step residual
(a norm over the whole edge state, so a NaN or Inf anywhere in a projection's output
reaches it) and the parameters (small). It costs no pass over the state
(benchmarks/nan_check.py measures it).

The diagnosis runs only once a check has failed: it replays the failed update from the
parameters it started with (which were finite), eagerly, projection by projection, with
the unfused algorithm (the same iterates as the fused step: tests/test_fused.py), and
names the first family whose projection wrote a non-finite value, or the family whose
forward-pass value already was.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import FeascompError


@dataclasses.dataclass(frozen=True)
class Where:
    """Where a state first became non-finite: ``step`` 0 is the forward pass, 1..K the
    projection steps (K + 1: the shadow read after the last step); ``family`` None when
    the replay did not reproduce it."""

    step: int
    family: str | None
    kind: str | None = None
    loc: object = None  # the model statement the family comes from

    def describe(self, steps: int) -> str:
        source = f", from {self.loc.file}:{self.loc.line}" if getattr(self.loc, "line", 0) else ""
        if self.family is None:
            if self.step == 0:
                return "the update (replayed projection by projection, it stayed finite: no family can be named)"
            return f"step {self.step} of {steps} (no family named: this method or backend has no projection replay)"
        what = f"family %{self.family} ({self.kind}{source})"
        if self.step == 0:
            return f"the forward pass of {what}"
        if self.step > steps:
            return f"{what}, reading the parameters after the last step"
        return f"step {self.step} of {steps}, in the projection of {what}"


class Diverged(FeascompError):
    """The state became NaN or Inf; ``where`` says where, ``update`` which update."""

    def __init__(self, update: int, where: Where, steps: int, kept: str):
        super().__init__(f"the state became non-finite (NaN or Inf) at update {update}: {where.describe(steps)}",
                         note=kept)
        self.update, self.where = update, where


def finite(info: dict, params: dict) -> bool:
    """Whether an update's result is finite: every step residual and every parameter."""
    if not np.all(np.isfinite(np.asarray(info["residual"]))):
        return False
    return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in params.values())


def _first_bad(state: dict, keys) -> str | None:
    for k in keys:
        if not bool(np.all(np.isfinite(np.asarray(state[k])))):
            return k
    return None


def locate(solver, params: dict, x, y, edges=None) -> Where:
    """Replay one update of ``solver`` from ``params`` (and, for a warm start, the edge
    state ``edges`` it started from) on batch (x, y), projection by projection, and return
    where the state first became non-finite."""
    import jax.numpy as jnp

    prog, alg = solver.program, solver.algorithm
    if getattr(alg, "gradient", False) or solver.backend.name != "jax":  # nothing to replay by families
        return Where(1, None)
    x, onehot = solver._batch(x, y)
    owner = _owners(prog)
    with solver.precision():
        data = prog.with_degrees(jnp, {solver.input_name: jnp.asarray(x), "__labels__": jnp.asarray(onehot)})
        params = {k: jnp.asarray(v) for k, v in solver._flat(params).items()}
        values = prog.forward_values(jnp, params, data)
        for name in prog.order:
            if name in values and not bool(jnp.all(jnp.isfinite(values[name]))):
                return _where(prog, 0, name)
        z = prog.init_edges(jnp, values, data) if edges is None else edges
        combine = lambda fn, *zs: prog.combine(jnp, data, fn, *zs)  # noqa: E731
        distance = lambda a, b: prog.distance(jnp, a, b, data)  # noqa: E731

        class Found(Exception):
            pass

        def projector(step):
            inner = prog.projector(jnp, data, step)

            def project(c, z):
                new = inner(c, z)
                changed = [k for k in new if new[k] is not z.get(k)]
                bad = _first_bad(new, changed)
                if bad is not None:
                    family = owner(bad, set(prog.classes[c]))
                    raise Found(_where(prog, step + 1, family))
                return new

            return project

        try:
            for step in range(solver.steps):
                z, _ = alg.step(jnp, projector(step), z, distance, combine)
            alg.shadow(projector(solver.steps), z, combine)
        except Found as found:
            return found.args[0]
    return Where(0, None)


def _where(prog, step: int, family: str | None) -> Where:
    f = prog.info[family].family if family else None
    return Where(step, family, f.kind if f else None, f.loc if f else None)


def _owners(prog):
    """state key -> the family (of the projected class) that wrote it: an edge belongs to
    its endpoint in that class; a lowering's own keys (``family#...``) to that family."""
    ends = {e.key: (e.src, e.dst) for e in prog.plan.edges}

    def owner(key: str, projected: set) -> str | None:
        if key in ends:
            src, dst = ends[key]
            return dst if dst in projected else src
        name = key.split("#", 1)[0]
        return name if name in prog.info else None

    return owner
