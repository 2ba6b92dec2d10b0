"""The JAX backend: the lowered Program, K steps in one jitted ``lax.scan``."""
from __future__ import annotations

import time


class JaxBackend:
    name = "jax"

    def __init__(self, lowered):
        self.lowered = lowered
        self._compiled = None
        self._compiled_warm = None
        # a cold-start update writes its forward-pass copies of the fused families' edges
        # into the previous update's buffers (Program.init_edges(spare=...); the storages'
        # ``buffer_keys``), which the solver state carries (``buffers``): new memory's page
        # faults cost ~17 ms per 100 MB, more than the copy itself
        self._spare_keys = list(lowered.program.buffer_keys)

    def update_fn(self, warm: bool = False):
        """The pure update (params, x, onehot[, z[, spare]]) -> (params, residuals, z), for
        jit or tracing. ``z``: start from this edge state instead of a forward pass;
        ``spare``: buffers (donated) for the forward pass's copies of the fused families'
        edges. residuals: {"step": [K]} plus, when monitoring, {"family": [K, families]}."""
        import jax
        import jax.numpy as jnp

        s = self.lowered
        prog, alg, K, input_name, monitor = s.program, s.algorithm, s.steps, s.input_name, s.monitor

        def update(params, x, onehot, z=None, spare=None):
            data = prog.with_degrees(jnp, {input_name: x, "__labels__": onehot})
            if z is None:
                z = prog.init_edges(jnp, prog.forward_values(jnp, params, data), data, spare)
            combine = lambda fn, *zs: prog.combine(jnp, data, fn, *zs)  # noqa: E731
            distance = lambda a, b: prog.distance(jnp, a, b, data)  # noqa: E731
            native = prog.native_step(alg)

            def body(z, i):
                if native is not None:
                    z, r = native(jnp, z, data)
                else:
                    z, r = alg.step(jnp, prog.projector(jnp, data, i), z, distance, combine)
                out = {"step": r}
                if monitor:
                    out["family"] = prog.family_distances(jnp, alg.shadow(prog.projector(jnp, data, i), z, combine), data)
                return z, out

            z, residuals = jax.lax.scan(body, z, jnp.arange(K))
            shadow_fn = prog.native_shadow(alg)
            shadow = shadow_fn(jnp, z, data) if shadow_fn is not None else alg.shadow(prog.projector(jnp, data, K), z, combine)
            return prog.param_means(jnp, shadow, params, data), residuals, z

        return update

    def carry_template(self, params):
        """The edge state an update returns (what --warm-start carries), as shapes."""
        import jax

        x, y = self.lowered.example_batch()
        with self.lowered.precision():
            return jax.eval_shape(lambda p, x, y: self.update_fn()(p, x, y)[2], params, x, y)

    def _spare_shapes(self):
        import jax

        shapes = {e.key: e.type.shape for e in self.lowered.plan.edges}
        return {k: jax.ShapeDtypeStruct(shapes[k], self.lowered.np_dtype) for k in self._spare_keys}

    def compile(self, params) -> float:
        import jax

        if self._compiled is not None:
            return 0.0
        s = self.lowered
        x, y = s.example_batch()
        t0 = time.perf_counter()
        with s.precision():
            if self._spare_keys:
                fn = jax.jit(lambda p, x, y, spare: self.update_fn()(p, x, y, None, spare), donate_argnums=(3,))
                self._compiled = fn.lower(params, x, y, self._spare_shapes()).compile()
            else:
                self._compiled = jax.jit(self.update_fn()).lower(params, x, y).compile()
        return time.perf_counter() - t0

    def buffers(self, z):
        """What of an update's edge state the next cold-start update may write into (the
        fused families' edges: the solver state carries them, and the update donates them),
        or None."""
        return {k: z[k] for k in self._spare_keys} if self._spare_keys else None

    def update(self, params, x, onehot, edges=None, buffers=None):
        """One update: from ``edges`` (warm start) or a forward pass, written into
        ``buffers`` (donated) where given. Returns (params, residuals, edge state)."""
        import jax
        import jax.numpy as jnp

        self.compile(params)
        with self.lowered.precision():
            if edges is None:
                if not self._spare_keys:
                    return self._compiled(params, x, onehot)
                want = self._spare_shapes()
                if buffers is None or set(buffers) != set(want) or any(  # none yet, given away, or another batch's
                        b.is_deleted() or b.shape != want[k].shape or b.dtype != want[k].dtype for k, b in buffers.items()):
                    buffers = {k: jnp.zeros(v.shape, v.dtype) for k, v in want.items()}
                return self._compiled(params, x, onehot, buffers)
            if self._compiled_warm is None:
                self._compiled_warm = jax.jit(self.update_fn(), donate_argnums=(3,))
            return self._compiled_warm(params, x, onehot, edges)
