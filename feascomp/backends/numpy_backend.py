"""The NumPy backend: the scalar-graph oracle (scalar_graph.py). For small models: it
loops over scalar nodes.

It shares no algorithm code with the product's backends: the scalar graph is built from
the tensor IR by its own code (no scalarize, no edge maps, no passes), and each
algorithm's iteration is written here again, plainly, from the formulas of the design
notes (a flat vector of edge values; P0, P1 the colour classes, P_l the CP layers):

- AP: z <- P1(P0(z)); residual |P1(P0 z) - P0 z|
- DR: z <- (1 - r) z + r R1(R0(z)), R = 2P - I; shadow P0(z); residual |P1(R0 z) - P0 z|
- CP: z <- P_{L-1}(... P1(P0(z))); residual |z_new - P0 z|
- DM: z <- z + b [P0(f1(z)) - P1(f0(z))], f0 = P0 - (P0 - I)/b, f1 = P1 + (P1 - I)/b;
  shadow P0(f1(z)); residual |P0(f1 z) - P1(f0 z)|

What it does share: the primitives' projection and prox rules (feascomp/primitives, each
tested against brute force on its own), the front ends and the tensor IR.
"""
from __future__ import annotations

import numpy as np

from ..algorithms import AlternatingProjections, CyclicProjections, DifferenceMap, DouglasRachford
from ..errors import FeascompError
from .scalar_graph import ScalarGraph

MAX_SCALAR_EDGES = 1_000_000


class NumpyBackend:
    name = "numpy"

    def __init__(self, lowered):
        edges = sum(e.type.size for e in lowered.plan.edges)
        if edges > MAX_SCALAR_EDGES:
            raise FeascompError(
                f"the numpy backend is a per-scalar reference for small models; this one has {edges:,} scalar "
                f"edges (limit {MAX_SCALAR_EDGES:,}): use --backend jax, or a smaller model or batch"
            )
        if lowered.monitor:
            raise FeascompError("the numpy backend reports step residuals only, not per-family distances "
                                "(--residuals): use --backend jax")
        if type(lowered.algorithm) not in ITERATIONS:
            raise FeascompError(f"the numpy backend has no iteration for algorithm {lowered.algorithm.name!r}")
        self.lowered = lowered
        self.graph = None if lowered.tokens else self._build(None)

    def _build(self, tokens):
        s = self.lowered
        g = ScalarGraph(s.tensor, s.batch_size, weighted=s.weighted, loss_options=s.loss_options, tokens=tokens,
                        fold=s.fold_inputs)
        self.classes = g.by_layer if s.algorithm.uses_layers else g.by_colour
        return g

    def compile(self, params) -> float:
        return 0.0

    def update(self, params, x, onehot, edges=None):
        s = self.lowered
        dt = s.np_dtype
        if s.tokens:  # which table rows feed which nodes depends on the batch: a graph per batch
            if edges is not None:
                raise FeascompError("the numpy backend cannot warm-start a model with token ids (its graph changes per batch)")
            g = self.graph = self._build(np.asarray(x))
        else:
            g = self.graph
        x = np.asarray(x, s.input_dtype)
        onehot = np.asarray(onehot, dt)

        z = g.forward_edges({k: np.asarray(v, dt) for k, v in params.items()}, x, dt) if edges is None else edges

        def project(c, z):
            return g.project(self.classes[c], z, x, onehot)

        step, shadow = ITERATIONS[type(s.algorithm)](s.algorithm, project, len(self.classes))
        residuals = []
        for _ in range(s.steps):
            z, r = step(z)
            residuals.append(r)
        return g.param_means(shadow(z), {k: np.asarray(v, dt) for k, v in params.items()}), {"step": np.asarray(residuals)}, z


# The oracle's own iterations (see the module docstring): (step(z) -> (z, residual), shadow(z)).
def _ap(alg, P, classes):
    def step(z):
        a = P(0, z)
        b = P(1, a)
        return b, np.linalg.norm(b - a)

    return step, lambda z: z


def _cp(alg, P, classes):
    def step(z):
        first = cur = P(0, z)
        for layer in range(1, classes):
            cur = P(layer, cur)
        return cur, np.linalg.norm(cur - first)

    return step, lambda z: z


def _dr(alg, P, classes):
    r = alg.relaxation

    def step(z):
        a = P(0, z)
        ra = 2 * a - z  # R0(z)
        b = P(1, ra)
        rb = 2 * b - ra  # R1(R0(z))
        return (1 - r) * z + r * rb, np.linalg.norm(b - a)

    return step, lambda z: P(0, z)


def _dm(alg, P, classes):
    beta = alg.beta

    def parts(z):
        p0, p1 = P(0, z), P(1, z)
        f0 = p0 - (p0 - z) / beta
        f1 = p1 + (p1 - z) / beta
        return P(0, f1), P(1, f0)

    def step(z):
        a, b = parts(z)
        return z + beta * (a - b), np.linalg.norm(a - b)

    return step, lambda z: parts(z)[0]


# the oracle's own iterations, by algorithm type (written independently of algorithms.py)
ITERATIONS = {AlternatingProjections: _ap, CyclicProjections: _cp, DouglasRachford: _dr, DifferenceMap: _dm}
