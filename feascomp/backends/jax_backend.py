"""The JAX backend: the lowered Program, K steps in one jitted ``lax.scan``.

Under a device mesh (backends/mesh.py) the update is one SPMD program: the batch and
every batch-indexed state array are split along the mesh's data axis (``NamedSharding``,
the state constrained to its layout at every step), parameters are the same on every
device, and a parameter's consensus -- a sum over the batch -- becomes the all-reduce XLA
inserts. The native kernels run per shard (fused.per_shard). Across processes
(``jax.distributed``) each process passes its own rows of every batch.
"""
from __future__ import annotations

import time

from . import mesh as meshes
from .program import TrackedState


def _like(tree, fn):
    """``fn(key, leaf)`` over a state (a dict or a TrackedState), keeping its type."""
    out = {k: fn(k, v) for k, v in tree.items()}
    return TrackedState(out, getattr(tree, "written", frozenset())) if isinstance(tree, TrackedState) else out


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
        self.mesh = meshes.build(lowered.resolved.mesh)
        # --edge-dtype: the edges are stored in a narrower dtype than the arithmetic's. Every
        # step reads them widened and stores them rounded (the native kernels read and write
        # their own families' edges in the storage dtype directly)
        self._edge_keys = frozenset(e.key for e in lowered.plan.edges) \
            if lowered.edge_np_dtype != lowered.np_dtype else frozenset()
        self._native_keys = lowered.program.native_keys

    # the mesh -------------------------------------------------------------------------------
    def _sharding(self, spec=()):
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def state_sharding(self, key: str, shape):
        return self._sharding(self.lowered.program.partition(key, shape))

    def _constrain(self, z):
        """The state laid over the mesh as the program says (each array's batch axis split)."""
        import jax

        if self.mesh is None:
            return z
        return jax.lax.with_sharding_constraint(z, _like(z, lambda k, v: self.state_sharding(k, v.shape)))

    def _stored(self, z):
        """The state as stored: its edges rounded to the edge dtype."""
        if not self._edge_keys:
            return z
        dtype = self.lowered.edge_np_dtype
        return _like(z, lambda k, v: v.astype(dtype) if k in self._edge_keys else v)

    def _widened(self, z, native: bool):
        """The state for the step's arithmetic: its edges in the compute dtype, but for the
        native kernels' own edges when ``native`` (they read the storage dtype)."""
        if not self._edge_keys:
            return z
        dtype = self.lowered.np_dtype
        keep = self._native_keys if native else frozenset()
        return _like(z, lambda k, v: v.astype(dtype) if k in self._edge_keys and k not in keep else v)

    def _global(self, params, x, onehot):
        """Arguments as global arrays across processes (each process holds its rows of the
        batch, and the same parameters); as given in one process."""
        import jax

        if self.mesh is None or jax.process_count() == 1:
            return params, x, onehot
        batch, same = self._sharding(("data",)), self._sharding()
        rows = lambda a: jax.make_array_from_process_local_data(batch, a)  # noqa: E731
        whole = lambda a: jax.make_array_from_callback(a.shape, same, lambda i: a[i])  # noqa: E731
        import numpy as np

        return {k: whole(np.asarray(v)) for k, v in params.items()}, rows(x), rows(onehot)

    @staticmethod
    def _host(out):
        """Parameters and residuals as host arrays where they span processes."""
        import jax
        import numpy as np

        if jax.process_count() == 1:
            return out
        params, residuals, z = out
        local = lambda a: np.asarray(a.addressable_data(0))  # noqa: E731
        return jax.tree_util.tree_map(local, params), jax.tree_util.tree_map(local, residuals), z

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
                z = self._stored(prog.init_edges(jnp, prog.forward_values(jnp, params, data), data, spare))
            z = self._constrain(z)
            combine = lambda fn, *zs: prog.combine(jnp, data, fn, *zs)  # noqa: E731
            distance = lambda a, b: prog.distance(jnp, a, b, data)  # noqa: E731
            native = prog.native_step(alg)

            def body(z, i):
                if native is not None:
                    z, r = native(jnp, self._widened(z, True), data)
                else:
                    z, r = alg.step(jnp, prog.projector(jnp, data, i), self._widened(z, False), distance, combine)
                z = self._constrain(self._stored(z))
                out = {"step": r}
                if monitor:
                    out["family"] = prog.family_distances(
                        jnp, alg.shadow(prog.projector(jnp, data, i), self._widened(z, False), combine), data)
                return z, out

            z, residuals = jax.lax.scan(body, z, jnp.arange(K))
            shadow_fn = prog.native_shadow(alg)
            shadow = shadow_fn(jnp, self._widened(z, True), data) if shadow_fn is not None else \
                alg.shadow(prog.projector(jnp, data, K), self._widened(z, False), combine)
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
        sharding = (lambda k: self.state_sharding(k, shapes[k])) if self.mesh is not None else (lambda k: None)
        return {k: jax.ShapeDtypeStruct(shapes[k], self.lowered.edge_np_dtype, sharding=sharding(k))
                for k in self._spare_keys}

    def _jit(self, fn, params, warm: bool = False, **kw):
        """``jax.jit`` of an update, with the mesh's layouts for its arguments and results."""
        import jax

        if self.mesh is None:
            return jax.jit(fn, **kw)
        same, batch = self._sharding(), self._sharding(("data",))
        z = _like(self.carry_template(params), lambda k, v: self.state_sharding(k, v.shape))
        ins = (same, batch, batch) + ((z,) if warm else ({k: z[k] for k in self._spare_keys},) if self._spare_keys
                                      else ())
        return jax.jit(fn, in_shardings=ins, out_shardings=(same, same, z), **kw)

    def compile(self, params) -> float:
        import jax

        if self._compiled is not None:
            return 0.0
        s = self.lowered
        x, y = s.example_batch()
        t0 = time.perf_counter()
        with s.precision():
            if self.mesh is not None:  # shapes only: the arguments' layouts are the jit's
                shape = lambda a: jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a))  # noqa: E731
                params, x, y = jax.tree_util.tree_map(shape, params), shape(x), shape(y)
            if self._spare_keys:
                fn = self._jit(lambda p, x, y, spare: self.update_fn()(p, x, y, None, spare), params,
                               donate_argnums=(3,))
                self._compiled = fn.lower(params, x, y, self._spare_shapes()).compile()
            else:
                self._compiled = self._jit(self.update_fn(), params).lower(params, x, y).compile()
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
            params, x, onehot = self._global(params, x, onehot)
            if edges is None:
                if not self._spare_keys:
                    return self._host(self._compiled(params, x, onehot))
                want = self._spare_shapes()
                if buffers is None or set(buffers) != set(want) or any(  # none yet, given away, or another batch's
                        b.is_deleted() or b.shape != want[k].shape or b.dtype != want[k].dtype for k, b in buffers.items()):
                    zeros = lambda: {k: jnp.zeros(v.shape, v.dtype) for k, v in want.items()}  # noqa: E731
                    shardings = {k: v.sharding for k, v in want.items()} if self.mesh is not None else None
                    buffers = jax.jit(zeros, out_shardings=shardings)()
                return self._host(self._compiled(params, x, onehot, buffers))
            if self._compiled_warm is None:
                self._compiled_warm = self._jit(self.update_fn(), params, warm=True, donate_argnums=(3,))
            return self._host(self._compiled_warm(params, x, onehot, edges))
