"""The JAX backend: the materialized Program, K steps in one jitted ``lax.scan``."""
from __future__ import annotations

import time

import numpy as np


class JaxBackend:
    name = "jax"

    def __init__(self, solver):
        self.solver = solver
        self._compiled = None
        self._compiled_warm = None

    def update_fn(self, warm: bool = False):
        """The pure update (params, x, onehot[, z]) -> (params, residuals, z), for jit or
        tracing. ``warm``: start from the given edge state instead of a forward pass.
        residuals: {"step": [K]} plus, when monitoring, {"family": [K, families]}."""
        import jax
        import jax.numpy as jnp

        s = self.solver
        prog, alg, K, input_name, monitor = s.program, s.algorithm, s.steps, s.input_name, s.monitor

        def update(params, x, onehot, z=None):
            data = prog.with_degrees(jnp, {input_name: x, "__labels__": onehot})
            if z is None:
                z = prog.init_edges(jnp, prog.forward_values(jnp, params, data), data)
            combine = lambda fn, *zs: prog.combine(jnp, data, fn, *zs)  # noqa: E731
            distance = lambda a, b: prog.distance(jnp, a, b, data)  # noqa: E731

            def projector(i):
                """project(c, z) for step i (K: the shadow after the last step): each call
                knows which of the step's projections onto its class it is (collapsed.py)."""
                calls = {}

                def project(c, z):
                    m = calls[c] = calls.get(c, -1) + 1
                    return prog.project(jnp, c, z, data, prog.write_slot(c, i, m))

                return project

            fused = prog.fused_step(alg)

            def body(z, i):
                if fused is not None:
                    z, r = fused(jnp, z, data)
                else:
                    z, r = alg.step(jnp, projector(i), z, distance, combine)
                out = {"step": r}
                if monitor:
                    out["family"] = prog.family_distances(jnp, alg.shadow(projector(i), z, combine), data)
                return z, out

            z, residuals = jax.lax.scan(body, z, jnp.arange(K))
            native = prog.fused_shadow(alg)
            shadow = native(jnp, z, data) if native is not None else alg.shadow(projector(K), z, combine)
            return prog.param_means(jnp, shadow, params, data), residuals, z

        return update

    def compile(self, params) -> float:
        import jax

        if self._compiled is not None:
            return 0.0
        s = self.solver
        x = np.zeros((s.batch_size,) + s.input_shape, s.input_dtype)
        y = np.zeros((s.batch_size, s.num_classes), s.np_dtype)
        t0 = time.perf_counter()
        with s.precision():
            self._compiled = jax.jit(self.update_fn()).lower(params, x, y).compile()
        return time.perf_counter() - t0

    def update(self, params, x, onehot, edges=None):
        import jax

        self.compile(params)
        with self.solver.precision():
            if edges is None:
                return self._compiled(params, x, onehot)
            if self._compiled_warm is None:
                self._compiled_warm = jax.jit(self.update_fn(), donate_argnums=(3,))
            return self._compiled_warm(params, x, onehot, edges)
