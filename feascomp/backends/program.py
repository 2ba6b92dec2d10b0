"""A lowered plan: the projections of a coloured plan as functions over an array namespace.

A :class:`Program` is built once by a lowering (backends/lowering.py) from the plan's
static analysis (backends/analysis.py) and one storage strategy per family
(backends/storage.py). The functions it provides do only array work and are written
against an array namespace ``xp``, so the JAX backend jits them and tests can run them
in NumPy. Every read or write of the state goes through the strategy of the family that
owns the key, so the Program is the same for every lowering.

Projection onto class c (Theorem 2: the families of a colour touch disjoint edges):

- const:     out-edges <- map(data)
- param:     out-edges <- map(mean of out-edges)         (consensus)
- function:  x0 <- in-edges (per port, concatenated), y0 <- mean of out-edges,
             (x, y) <- project(x0, y0, weight), in-edges <- x, out-edges <- map(y)
- target:    in-edges <- prox(in-edges, labels)

The algorithms (algorithms.py) are written once over ``project(c, z)`` (from
:meth:`Program.projector`), ``combine`` and ``distance``; a native step for some
algorithm and lowering (backends/fused.py) replaces a whole step where it applies.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from .analysis import FamilyInfo, PlanAnalysis, gather, target_labels
from .storage import Storage


class TrackedState(dict):
    """A state that knows which projections of the current step wrote into it
    (``written``: tokens, at trace time), for a strategy whose slots merge along a chain
    of states (collapsed.py). A JAX pytree whose structure is its keys only: across
    ``lax.scan``'s carry ``written`` starts empty."""

    def __init__(self, items=(), written: frozenset = frozenset()):
        super().__init__(items)
        self.written = written


def _flatten_state(s: TrackedState):
    keys = tuple(sorted(s))
    return tuple(s[k] for k in keys), keys


def _unflatten_state(keys, values) -> TrackedState:
    return TrackedState(zip(keys, values))


jax.tree_util.register_pytree_node(TrackedState, _flatten_state, _unflatten_state)


class Program:
    """The plan's projections over the states its storages define. ``lowering``: the
    lowering's name (native steps are looked up by algorithm type and lowering);
    ``slots``: which slot each projection writes (collapsed.SlotPlan) or None (one
    place per value); ``weighted``: project with the out-degree as the output's weight;
    ``boundaries``: materialize each projection's outputs once (:meth:`_kept`)."""

    def __init__(self, analysis: PlanAnalysis, storage: dict[str, Storage], *, lowering: str,
                 weighted: bool = False, slots=None, mesh_spec: tuple = (), boundaries: bool = False):
        self.analysis = analysis
        # materialize each projection's outputs (kernels.keep; the lowering decides: one
        # device, the native kernels built here)
        self.boundaries = boundaries
        self.storage = storage
        self.lowering = lowering
        self.weighted = weighted
        self.slots = slots
        a = analysis
        self.plan, self.info, self.classes, self.order = a.plan, a.info, a.classes, a.order
        self.params, self.consts, self.target, self.dtype = a.params, a.consts, a.target, a.dtype
        self.edge_storage = {e.key: storage[e.dst] for e in a.plan.edges}
        # a fused group (fuse-projections) of the members that may be stacked
        self.group_of: dict[str, list[str]] = {}
        for members in a.groups:
            members = [n for n in members if storage[n].stacks]
            if len(members) > 1:
                self.group_of.update((n, members) for n in members)
        self.tracks_writes = any(s.tracks_writes for s in storage.values())
        self.buffer_keys = sorted(k for s in storage.values() for k in getattr(s, "buffer_keys", ()))
        # the edges a native step reads and writes in their storage dtype (--edge-dtype), not widened
        self.native_keys = frozenset(k for s in storage.values() for k in getattr(s, "native_keys", ()))
        self.mesh_spec = mesh_spec  # (("data", n), ...): the device mesh the state is split over
        self.owner = {k: s for s in storage.values() for k in s.state_keys()}

    def communication(self, algorithm, itemsize: int) -> dict[str, int]:
        """Bytes all-reduced per step under a mesh's data axis, by family: a family that is
        the same on every device but has out-edges along the batch (a parameter) sums them
        across devices each time its class is projected."""
        a = self.analysis
        calls = algorithm.projections.step
        cls = {n: c for c, names in enumerate(a.classes) for n in names}
        out = {}
        for name, info in a.info.items():
            if name not in a.batched and any(e.dst in a.batched for e in info.out):
                out[name] = math.prod(info.family.type.shape) * itemsize * calls.get(cls[name], 0)
        return out

    def partition(self, key: str, shape) -> tuple:
        """How state array ``key`` (of ``shape``) is laid over the mesh: per axis ``"data"``
        (its batch axis), ``"model"`` (a dense layer's units, where the axis divides them)
        or None (the same on every device)."""
        out = [None] * len(shape)
        owner = self.owner.get(key)
        if owner is None:
            return tuple(out)
        sizes = dict(self.mesh_spec)
        b = owner.batch_axis(key)
        if b is not None and sizes.get("data", 1) > 1 and shape[b] % sizes["data"] == 0:
            out[b] = "data"
        u = owner.unit_axis(key)
        if u is not None and sizes.get("model", 1) > 1 and shape[u] % sizes["model"] == 0:
            out[u] = "model"
        return tuple(out)

    def strategies(self, cls) -> dict[str, Storage]:
        """The families stored by strategy ``cls`` (or a subclass), by name."""
        return {n: s for n, s in self.storage.items() if isinstance(s, cls)}

    # sizes -------------------------------------------------------------------------------
    def state_bytes(self, itemsize: int | None = None) -> int:
        return sum(self.family_state_bytes(itemsize).values())

    def family_state_bytes(self, itemsize: int | None = None, per_device: bool = False) -> dict[str, int]:
        """The state each family's in-edges take as stored, in plan order (``per_device``:
        on one device of the mesh)."""
        import numpy as np

        size = itemsize or np.dtype(self.dtype).itemsize
        data = dict(self.mesh_spec).get("data", 1)
        if per_device:
            return {f.name: self.storage[f.name].device_nbytes(size, data) for f in self.plan.families}
        return {f.name: self.storage[f.name].nbytes(size) for f in self.plan.families}

    # the state ---------------------------------------------------------------------------
    def forward_values(self, xp, params: dict, data: dict) -> dict:
        return self.analysis.forward_values(xp, params, data)

    def with_degrees(self, xp, data: dict) -> dict:
        """The batch's data plus what every step reads of it, computed once per update: the
        runtime out-degrees (analysis.with_degrees) and each strategy's ``per_update``."""
        data = self.analysis.with_degrees(xp, data)
        extra = {}
        for s in self.storage.values():
            extra.update(s.per_update(xp, data))
        return {**data, **extra}

    def init_edges(self, xp, vals: dict, data: dict, spare: dict | None = None) -> dict:
        """The state of a forward pass (every edge a copy of its producer's value), as each
        strategy stores it. ``spare``: the previous update's buffers (``buffer_keys``),
        donated, for the strategies that write into them."""
        z = {}
        for s in self.storage.values():
            s.init(xp, vals, data, z, spare)
        return TrackedState(z) if self.tracks_writes else z

    def combine(self, xp, data: dict, fn, *states) -> dict:
        """``fn`` (linear) applied to states (the algorithms' arithmetic), by each strategy."""
        written = frozenset().union(*(getattr(s, "written", frozenset()) for s in states))
        out = TrackedState(written=written) if self.tracks_writes else {}
        for s in self.storage.values():
            s.combine(xp, fn, list(states), out, data)
        return out

    def distance(self, xp, a: dict, b: dict, data: dict):
        """|a - b| over the edges both states represent (the algorithms' step residual)."""
        total = xp.zeros((), self.dtype)
        for s in self.storage.values():
            part = s.distance_sq(xp, a, b, data)
            if not (isinstance(part, float) and part == 0.0):  # a family with nothing stored
                total = total + part
        return xp.sqrt(total)

    # reading and writing edges -----------------------------------------------------------
    def read(self, xp, e, z: dict, data: dict):
        return self.edge_storage[e.key].read(xp, e, z, data)

    def sum_out(self, xp, info: FamilyInfo, z: dict, data: dict):
        total = None
        for e in info.out:
            t = self.edge_storage[e.key].transpose(xp, e, z, data)
            total = t if total is None else total + t
        return total

    def mean_out(self, xp, info: FamilyInfo, z: dict, data: dict, deg=None):
        total = self.sum_out(xp, info, z, data)
        deg = self.analysis.degree(info, data) if deg is None else deg
        if isinstance(deg, float):
            return total / deg
        return total / xp.maximum(xp.asarray(deg, total.dtype), 1)

    def write_out(self, xp, info: FamilyInfo, value, new: dict, data: dict, slot=0) -> None:
        for e in info.out:
            self.edge_storage[e.key].write(xp, e, value, new, data, slot)

    def put(self, xp, edges, n, x, new: dict) -> None:
        """A port's new value ``x`` onto its edges (split along the port axis)."""
        for e in edges:
            part = x if n == 0 or len(edges) == 1 else x[..., e.start : e.stop]
            self.edge_storage[e.key].put(xp, e, part, new)

    def weight(self, xp, deg, dtype):
        """The projection's weight on the output: its out-degree (at least 1), or 1."""
        if not self.weighted:
            return 1.0
        return deg if isinstance(deg, float) else xp.maximum(xp.asarray(deg, dtype), 1)

    def output_args(self, xp, info: FamilyInfo, z: dict, data: dict):
        """A family's projection arguments besides its inputs: the mean of its outgoing
        edges and its weight, per node."""
        deg = self.analysis.degree(info, data)
        ybar = self.mean_out(xp, info, z, data, deg)
        return ybar, xp.broadcast_to(xp.asarray(self.weight(xp, deg, ybar.dtype), ybar.dtype), ybar.shape)

    def read_function(self, xp, info: FamilyInfo, z: dict, data: dict):
        """A function family's projection arguments: its inputs per port, the mean of its
        outgoing edges (a node with no outgoing edge is free: it keeps f(x)), its weight."""
        ins = [gather(xp, es, n, lambda e: self.read(xp, e, z, data)) for _, n, es in info.in_ports]
        deg = self.analysis.degree(info, data)
        ybar = self.mean_out(xp, info, z, data, deg)
        if info.has_unused:
            ybar = xp.where(xp.asarray(deg) > 0, ybar, info.prim.forward(*ins))
        return ins, ybar, self.weight(xp, deg, ybar.dtype)

    # projection --------------------------------------------------------------------------
    def projector(self, xp, data: dict, step):
        """``project(c, z)`` for step ``step`` of an update (the number of steps: the shadow
        after the last one); each call knows which of the step's projections onto its class
        it is, for the slots it writes (``slots``)."""
        calls: dict[int, int] = {}

        def project(c, z):
            m = calls[c] = calls.get(c, -1) + 1
            return self.project(xp, c, z, data, self.slots.slot(c, step, m) if self.slots is not None else 0)

        return project

    def project(self, xp, c: int, z: dict, data: dict, slot=0) -> dict:
        """P_c(z) for class c of the schedule (a colour, or a CP layer): a new state in
        which every edge incident to the class's families is projected."""
        new = self.project_families(xp, self.classes[c], z, data, slot)
        if self.tracks_writes:
            return TrackedState(new, getattr(z, "written", frozenset()) | {object()})
        return new

    def project_families(self, xp, names, z: dict, data: dict, slot=0) -> dict:
        new = dict(z)
        done = set()
        for name in names:
            if name in done:
                continue
            group = self.group_of.get(name)
            if group is not None and set(group) <= set(names):
                self._project_group(xp, group, z, new, data, slot)
                done.update(group)
                continue
            info = self.info[name]
            f = info.family
            if f.kind == "const":
                self.write_out(xp, info, data[name], new, data, slot)
            elif f.kind == "param":
                if info.out:
                    self.write_out(xp, info, self.mean_out(xp, info, z, data), new, data, slot)
            elif f.kind == "target":
                (_, n, es), = info.in_ports
                logits = gather(xp, es, n, lambda e: self.read(xp, e, z, data))
                self.put(xp, es, n, info.prim.prox(logits, target_labels(f, data["__labels__"])), new)
            elif not info.out:
                continue  # output unconstrained: the inputs are already feasible
            elif self.storage[name].project is not None:
                self.storage[name].project(self, xp, z, new, data, slot)
            else:
                ins, ybar, w = self.read_function(xp, info, z, data)
                new_ins, y = self._kept(xp, info.prim.project(ins, ybar, w))
                for (_, n, es), x in zip(info.in_ports, new_ins):
                    self.put(xp, es, n, x, new)
                self.write_out(xp, info, y, new, data, slot)
        projected = set(names)
        for s in self.storage.values():
            s.after_write(xp, new, data, projected, slot)
        return new

    def _project_group(self, xp, group, z: dict, new: dict, data: dict, slot=0):
        """One projection call for a fused group (fuse-projections): each member's nodes
        flattened, vector ports zero-padded to the longest (primitives declaring
        ``zero_padding`` only; otherwise the pass gave equal lengths), stacked, projected,
        and split back."""
        infos = [self.info[n] for n in group]
        prim = infos[0].prim
        per_port = [[] for _ in infos[0].in_ports]
        ybars, weights, counts = [], [], []
        for info in infos:
            ins, ybar, w = self.read_function(xp, info, z, data)
            count = math.prod(info.family.type.shape)
            counts.append(count)
            ybars.append(xp.reshape(ybar, (count,)))
            weights.append(xp.reshape(xp.broadcast_to(xp.asarray(w, ybar.dtype), ybar.shape), (count,)))
            for k, ((_, n, _), x) in enumerate(zip(info.in_ports, ins)):
                per_port[k].append(xp.reshape(x, (count, n) if n else (count,)))
        stacked = []
        for k, parts in enumerate(per_port):
            n = max(int(p.shape[1]) if p.ndim == 2 else 0 for p in parts)
            if n:
                parts = [p if p.shape[1] == n else xp.pad(p, ((0, 0), (0, n - p.shape[1]))) for p in parts]
            stacked.append(xp.concatenate(parts, axis=0))
        xs, y = self._kept(xp, prim.project(stacked, xp.concatenate(ybars), xp.concatenate(weights)))
        start = 0
        for info, count in zip(infos, counts):
            shape = info.family.type.shape
            for (_, n, es), x in zip(info.in_ports, xs):
                part = x[start : start + count]
                self.put(xp, es, n, xp.reshape(part[:, :n] if n else part, shape + ((n,) if n else ())), new)
            self.write_out(xp, info, xp.reshape(y[start : start + count], shape), new, data, slot)
            start += count

    def _kept(self, xp, projected):
        """A projection's outputs (inputs, output), each materialized once where
        ``boundaries``: XLA on CPU would otherwise recompute the whole projection in each
        consumer's loop fusion -- one per output array, each re-reading every input (and
        re-transposing a transposed read). Measured: 1x32 CNN DR step 201 -> 175 ms, AP 382
        -> 317, character RNN AP 335 -> 223; MLPs unchanged (docs/performance.md)."""
        if not self.boundaries or xp is np:
            return projected
        from .. import kernels

        ins, y = projected
        return tuple(kernels.keep(x) for x in ins), kernels.keep(y)

    # native steps ------------------------------------------------------------------------
    def native_step(self, algorithm):
        """A whole step for ``algorithm`` that this lowering implements natively (looked up
        by the algorithm's type and the lowering in fused.NATIVE_STEPS), or None: the
        algorithm's own step over ``projector``."""
        from .fused import NATIVE_STEPS

        make = NATIVE_STEPS.get((type(algorithm), self.lowering))
        return make(self, algorithm) if make is not None else None

    def native_shadow(self, algorithm):
        """The shadow parameters are read from, where computed natively
        (fused.NATIVE_SHADOWS), or None."""
        from .fused import NATIVE_SHADOWS

        make = NATIVE_SHADOWS.get((type(algorithm), self.lowering))
        return make(self, algorithm) if make is not None else None

    # readout -----------------------------------------------------------------------------
    def param_means(self, xp, z: dict, previous: dict, data: dict) -> dict:
        """Each parameter as the mean of its outgoing edges; a parameter (or an entry of
        one, e.g. an embedding row no token of the batch names) with no outgoing edge keeps
        its previous value."""
        out = {}
        for p in self.params:
            info = self.info[p]
            if not info.out:
                out[p] = previous[p]
                continue
            deg = self.analysis.degree(info, data)
            mean = self.mean_out(xp, info, z, data, deg)
            out[p] = mean if isinstance(deg, float) else xp.where(xp.asarray(deg) > 0, mean, previous[p])
        return out

    def family_distances(self, xp, s: dict, data: dict):
        """Distance of state s to each family's constraint set, in plan order: for a family of
        colour c, the norm of P_c(s) - s over its incident edges (P_c(s) agrees with P_f(s)
        there, since the colour's families touch disjoint edges)."""
        sq = {}
        a = self.analysis
        for c in a.colours:
            p = self.project_families(xp, a.by_colour[c], s, data)
            for name in a.by_colour[c]:
                info = self.info[name]
                keys = ({e.key for e in info.out} | {e.key for e in info.in_edges}) & set(s)  # as stored
                sq[name] = sum((xp.sum((p[k] - s[k]) ** 2) for k in keys), xp.zeros((), self.dtype))
        return xp.sqrt(xp.stack([sq[f.name] for f in self.plan.families]))
