"""The NumPy backend: the scalar-graph oracle (scalar_graph.py) driven by the same
algorithms as every other backend. For small models: it loops over scalar nodes."""
from __future__ import annotations

import numpy as np

from ..errors import FeascompError
from .scalar_graph import ScalarGraph

MAX_SCALAR_EDGES = 1_000_000


class NumpyBackend:
    name = "numpy"

    def __init__(self, solver):
        edges = sum(e.type.size for e in solver.plan.edges)
        if edges > MAX_SCALAR_EDGES:
            raise FeascompError(
                f"the numpy backend is a per-scalar reference for small models; this one has {edges:,} scalar "
                f"edges (limit {MAX_SCALAR_EDGES:,}): use --backend jax, or a smaller model or batch"
            )
        self.solver = solver
        self.graph = None if solver.tokens else self._build(None)

    def _build(self, tokens):
        s = self.solver
        g = ScalarGraph(s.tensor, s.batch_size, weighted=s.weighted, loss_options=s.loss_options, tokens=tokens)
        self.classes = g.by_layer if s.algorithm.uses_layers else g.by_colour
        return g

    def compile(self, params) -> float:
        return 0.0

    def update(self, params, x, onehot, edges=None):
        s = self.solver
        dt = s.np_dtype
        if s.tokens:  # which table rows feed which nodes depends on the batch: a graph per batch
            if edges is not None:
                raise FeascompError("the numpy backend cannot warm-start a model with token ids (its graph changes per batch)")
            g = self.graph = self._build(np.asarray(x))
        else:
            g = self.graph
        x = np.asarray(x, s.input_dtype)
        onehot = np.asarray(onehot, dt)
        if s.monitor:
            raise NotImplementedError("the numpy backend reports step residuals only")
        z = g.forward_edges({k: np.asarray(v, dt) for k, v in params.items()}, x, dt) if edges is None else edges

        def project(c, z):
            return g.project(self.classes[c], z, x, onehot)

        residuals = []
        for _ in range(s.steps):
            z, r = s.algorithm.step(np, project, z)
            residuals.append(r)
        shadow = s.algorithm.shadow(project, z)
        return g.param_means(shadow, {k: np.asarray(v, dt) for k, v in params.items()}), {"step": np.asarray(residuals)}, z
