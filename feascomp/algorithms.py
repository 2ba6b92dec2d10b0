"""Projection algorithms, written once over ``project(c, z)`` and pytree arithmetic.

``project(c, z)`` projects onto class c of the plan. AP, DR and DM use the two colours
(class 0 holds the target and is projected first, as in the paper's code); CP uses the
ordered classes (backward-BFS layers from the target), ``classes`` of them.

- AP: z <- P1(P0(z))
- DR: z <- (1 - r) z + r R1(R0(z)), R = 2P - I; i.e. z + 2r (P1(2 P0 z - z) - P0 z).
  Results are read from the shadow P0(z).
- CP: z <- P_{L-1}(... P1(P0(z)))
- DM (Elser): z <- z + β [P0(f1(z)) - P1(f0(z))], f0 = P0 - (P0 - I)/β,
  f1 = P1 + (P1 - I)/β. Results are read from the shadow P0(f1(z)). With β = 1,
  f0 = I, so a step costs two projections instead of four.

A lowering whose state is not the edge arrays themselves (the collapsed one) passes its own
``combine(fn, *states)`` (apply the linear ``fn`` to states) and ``distance(a, b)``;
the defaults act leaf by leaf.

Each algorithm also declares its :class:`Projections`: how often a step and the shadow
project onto each class and how they combine states. A lowering that keeps one value per
projection (the collapsed one: backends/collapsed.py) sizes its state from it;
tests/test_collapsed.py checks each declaration against a run of the formula.

Each ``step`` returns the new iterate and a residual that vanishes exactly at a feasible
point: AP, CP: how far the projections after the first moved the state; DR: |P1(R0 z) - P0 z|
(the fixed-point residual); DM: |P0(f1 z) - P1(f0 z)|.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

tree_map = jax.tree_util.tree_map


def _combine(fn, *states):
    """The default linear combination of states: ``fn`` (linear) leaf by leaf."""
    return tree_map(fn, *states)


def _norm(xp, a, b):
    """|a - b| over every leaf; a lowering whose state is not the edges themselves (the
    collapsed one) passes its own ``distance`` to ``step``."""
    leaves = jax.tree_util.tree_leaves(tree_map(lambda x, y: xp.sum((x - y) ** 2), a, b))
    return xp.sqrt(sum(leaves))


@dataclasses.dataclass(frozen=True)
class Projections:
    """How an algorithm's step and shadow use the projections: ``step[c]`` and
    ``shadow[c]`` calls of project(c, .) each; ``combines``: whether they combine states
    linearly; ``chain``: whether every combination is of a chain of states (each operand
    derived from the others by projections: DR, DM with beta = 1) rather than of sibling
    branches (DM with beta != 1)."""

    step: dict
    shadow: dict
    combines: bool
    chain: bool = True


@dataclasses.dataclass(frozen=True)
class DouglasRachford:
    name = "dr"
    uses_layers = False
    relaxation: float = 0.5

    def step(self, xp, project: Callable, z, distance: Callable | None = None, combine: Callable = _combine):
        dist = distance or (lambda a, b: _norm(xp, a, b))
        r = self.relaxation
        p0 = project(0, z)
        p1 = project(1, combine(lambda p, x: 2 * p - x, p0, z))
        new = combine(lambda x, a, b: x + 2 * r * (b - a), z, p0, p1)
        return new, dist(p1, p0)

    def shadow(self, project, z, combine: Callable = _combine):
        return project(0, z)

    @property
    def projections(self) -> Projections:
        return Projections(step={0: 1, 1: 1}, shadow={0: 1}, combines=True)


@dataclasses.dataclass(frozen=True)
class CyclicProjections:
    name = "cp"
    classes: int = 2
    uses_layers = True

    def step(self, xp, project: Callable, z, distance: Callable | None = None, combine: Callable = _combine):
        dist = distance or (lambda a, b: _norm(xp, a, b))
        first = project(0, z)
        cur = first
        for c in range(1, self.classes):
            cur = project(c, cur)
        return cur, dist(cur, first)

    def shadow(self, project, z, combine: Callable = _combine):
        return z

    @property
    def projections(self) -> Projections:
        return Projections(step={c: 1 for c in range(self.classes)}, shadow={}, combines=False)


@dataclasses.dataclass(frozen=True)
class AlternatingProjections(CyclicProjections):
    """AP is CP over the two colours: P1(P0(z))."""

    name = "ap"
    classes: int = 2
    uses_layers = False


@dataclasses.dataclass(frozen=True)
class DifferenceMap:
    name = "dm"
    uses_layers = False
    beta: float = 1.0

    def _parts(self, project, z, combine):
        b = self.beta
        p1 = project(1, z)
        f1 = combine(lambda p, x: p + (p - x) / b, p1, z)
        pa = project(0, f1)
        if b == 1.0:
            pb = p1  # f0 = I
        else:
            p0 = project(0, z)
            pb = project(1, combine(lambda p, x: p - (p - x) / b, p0, z))
        return pa, pb

    def step(self, xp, project: Callable, z, distance: Callable | None = None, combine: Callable = _combine):
        dist = distance or (lambda a, b: _norm(xp, a, b))
        pa, pb = self._parts(project, z, combine)
        new = combine(lambda x, a, c: x + self.beta * (a - c), z, pa, pb)
        return new, dist(pa, pb)

    def shadow(self, project, z, combine: Callable = _combine):
        return self._parts(project, z, combine)[0]

    @property
    def projections(self) -> Projections:
        n = 1 if self.beta == 1.0 else 2
        return Projections(step={0: n, 1: n}, shadow={0: n, 1: n}, combines=True, chain=self.beta == 1.0)


ALGORITHMS = {"ap": AlternatingProjections, "dr": DouglasRachford, "cp": CyclicProjections, "dm": DifferenceMap}


def get_algorithm(name: str, **options):
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}") from None
    if name == "dr" and not 0 < options.get("relaxation", 0.5) <= 1:
        raise ValueError("DR relaxation must lie in (0, 1]")
    if name == "dm" and not options.get("beta", 1.0) != 0:
        raise ValueError("DM beta must not be 0")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in fields})
