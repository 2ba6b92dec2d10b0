"""The JAX backend: the materialized Program, K steps in one jitted ``lax.scan``."""
from __future__ import annotations

import time

import numpy as np


class JaxBackend:
    name = "jax"

    def __init__(self, solver):
        self.solver = solver
        self._compiled = None

    def update_fn(self):
        """The pure update (params, x, onehot) -> (params, residuals), for jit or tracing."""
        import jax
        import jax.numpy as jnp

        s = self.solver
        prog, alg, K, input_name = s.program, s.algorithm, s.steps, s.input_name

        def update(params, x, onehot):
            data = {input_name: x, "__labels__": onehot}
            z = prog.init_edges(jnp, prog.forward_values(jnp, params, data))

            def project(c, z):
                return prog.project(jnp, c, z, data)

            def body(z, _):
                return alg.step(jnp, project, z)

            z, residuals = jax.lax.scan(body, z, None, length=K)
            return prog.param_means(jnp, alg.shadow(project, z), params), residuals

        return update

    def compile(self, params) -> float:
        import jax

        if self._compiled is not None:
            return 0.0
        s = self.solver
        x = np.zeros((s.batch_size,) + s.input_shape, s.np_dtype)
        y = np.zeros((s.batch_size, s.num_classes), s.np_dtype)
        t0 = time.perf_counter()
        with s.precision():
            self._compiled = jax.jit(self.update_fn()).lower(params, x, y).compile()
        return time.perf_counter() - t0

    def update(self, params, x, onehot):
        self.compile(params)
        with self.solver.precision():
            return self._compiled(params, x, onehot)
