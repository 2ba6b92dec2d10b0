"""Projection algorithms, written once over ``project(c, z)`` and pytree arithmetic.

Colour 0 holds the target and is projected first (as in the paper's code).

- AP: z <- P1(P0(z))
- DR: z <- (1 - r) z + r R1(R0(z)), R = 2P - I; i.e. z + 2r (P1(2 P0 z - z) - P0 z).
  The iterate is not itself feasible: results are read from the shadow P0(z).

Each ``step`` returns the new iterate and a residual: the distance the second colour's
projection moved the state (AP: |P1(P0 z) - P0 z|; DR: |P1(R0 z) - P0 z|, the
fixed-point residual). Both vanish exactly at a feasible point.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

tree_map = jax.tree_util.tree_map


def _norm(xp, a, b):
    leaves = jax.tree_util.tree_leaves(tree_map(lambda x, y: xp.sum((x - y) ** 2), a, b))
    return xp.sqrt(sum(leaves))


@dataclasses.dataclass(frozen=True)
class AlternatingProjections:
    name = "ap"

    def step(self, xp, project: Callable, z):
        p0 = project(0, z)
        p1 = project(1, p0)
        return p1, _norm(xp, p1, p0)

    def shadow(self, project, z):
        return z


@dataclasses.dataclass(frozen=True)
class DouglasRachford:
    name = "dr"
    relaxation: float = 0.5

    def step(self, xp, project: Callable, z):
        r = self.relaxation
        p0 = project(0, z)
        p1 = project(1, tree_map(lambda p, x: 2 * p - x, p0, z))
        new = tree_map(lambda x, a, b: x + 2 * r * (b - a), z, p0, p1)
        return new, _norm(xp, p1, p0)

    def shadow(self, project, z):
        return project(0, z)


ALGORITHMS = {"ap": AlternatingProjections, "dr": DouglasRachford}


def get_algorithm(name: str, **options):
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}") from None
    if name == "dr" and not 0 < options.get("relaxation", 0.5) <= 1:
        raise ValueError("DR relaxation must lie in (0, 1]")
    return cls(**options)
