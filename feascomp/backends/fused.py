"""The native DR step: a dense layer's step on its input edges in native kernels
(feascomp/kernels), as an implementation of DR's step over the families stored by
:class:`FusedSums`.

Native steps are looked up by (algorithm type, lowering name) in :data:`NATIVE_STEPS`
(and the shadows parameters are read from in :data:`NATIVE_SHADOWS`); each entry
``make(program, algorithm)`` returns ``step(xp, z, data) -> (z, residual)`` or None where
it does not apply. Each is checked against the algorithm's own formula
(algorithms.py) by tests/test_fused.py, and against the oracle by the mutation tests.

A fused family is a dot, float32 or float64, with nodes [N, m] (or [*lead, m]: a conv's
[N, Ho, Wo, Co], whose rows the kernels see as N*Ho*Wo), port a's edges copies of
[N, n_i] values along m and port b's of [n_i, m] values along N (a dense layer's x @ W, a
conv's patches times its reshaped kernel;
each value may be a view of its producer -- an embedding's rows, a slice of W -- and a
concat read along the contraction makes several edges per port, which the kernels see
joined), every node with an outgoing edge, option ``kernel="auto"``; and only where the
kernel builds on this machine (:func:`fusable`). Where port a is the input folded into
the family (fold_inputs), :class:`FoldedSums` stores port b's edges alone and the step runs
the kernels that hold the a-rows at the input.
"""
from __future__ import annotations

import math

from ..algorithms import DifferenceMap, DouglasRachford
from ..ir.feasibility import Edge, sum_axes
from .storage import InputsNotStored, Storage, project_folded

INPUTS = "__inputs__:"  # data key of a folded family's input rows (FoldedSums.per_update)
SUM = "__sum__:"  # state key of an edge's contribution to its producer's sum (the fused DR step)
FUSED_GROUPS = 8  # row groups of the fused DR kernel's partial sums (fixed: results do not depend on threads)


class FusedSums(Storage):
    """A fused dot family's edges, stored as arrays; ``rows`` are its a-edges, ``cols`` its
    b-edges, each port's edges in port order (one each for x @ W; several where the input
    is a concat read along the contraction -- ``concat(e[t], h) @ W`` -- and then one slice
    of W per piece). The kernels see each port as one array (the edges joined along the
    port axis). ``order``: the two classes in DR's terms (P0, P1; DM with beta = 1 swaps
    them); ``first``: of the first of them (DR reflects through its own projection: two
    kernel passes) rather than the second (one pass). A family of the second carries its
    non-input edges' sums in the state (SUM keys: each edge's copies summed, shaped like
    the value its map broadcasts, i.e. after the map's view steps), which its producers'
    means read instead of the edges; the kernel's first pass returns them for a family of
    the first. With one plain edge per port the edges are also the buffers a cold-start
    update writes its forward pass into (``buffer_keys``: the solver state carries them,
    donated)."""

    kind = "edges, fused DR"

    def __init__(self, analysis, info, rows: list, cols: list, order: tuple[int, int], first: bool, mesh=None,
                 store=None):
        super().__init__(analysis, info)
        self.rows, self.cols, self.order, self.first = list(rows), list(cols), order, first
        self.mesh = mesh  # a device mesh: the kernels run on each device's rows (per_shard)
        self.store = store  # the edges' storage dtype where narrower than the arithmetic's (--edge-dtype), or None
        self.summed = [] if first else [e for e in self.rows + self.cols if not analysis.is_const(e.src)]
        # nodes [*lead, m] as the kernels' [rows, m]: a conv's [N, Ho, Wo, Co] as N*Ho*Wo rows
        shape = info.family.type.shape
        self.lead, self.m = tuple(shape[:-1]), shape[-1]
        self.nrows = math.prod(self.lead)
        plain = len(self.rows) == len(self.cols) == 1 and not any(e.map.steps for e in self.rows + self.cols) \
            and len(shape) == 2
        self.buffer_keys = (self.rows[0].key, self.cols[0].key) if plain else ()
        self.edge_keys = tuple(e.key for e in self.rows + self.cols)
        self.native_keys = self.edge_keys  # the kernels take them in the storage dtype (--edge-dtype)

    def init(self, xp, vals: dict, data: dict, z: dict, spare: dict | None = None) -> None:
        """The edges (written into ``spare``'s buffers where given: the native ``fill``),
        and the carried sums: for a broadcast, the value times its copies (not a reduction
        over the materialized edges)."""
        from .. import kernels

        for e in self.edges:
            if not self.stored(e):  # a folded input (FoldedSums)
                continue
            if spare is not None and e.key in spare:
                by_row = e is self.rows[0]  # rows: [N, n] copied along m; cols: [n, m] along N
                src = vals[e.src] if by_row else xp.transpose(vals[e.src])
                fill = per_shard(self.mesh, lambda d, s, b=by_row: kernels.fill(d, s, b), (True, by_row), True)
                z[e.key] = fill(spare[e.key], src)
            else:
                z[e.key] = e.map.apply(xp, vals[e.src], e.type.shape, data)
        for e in self.summed:
            count = math.prod(n for a, n in enumerate(e.type.shape) if a not in e.map.final.src_axes)
            v = e.map.apply_steps(xp, vals[e.src], data)
            if self.store is not None:  # the sum of the edges as stored: copies of the rounded value
                v = v.astype(self.store).astype(v.dtype)
            z[SUM + e.key] = v * xp.asarray(count, v.dtype)

    def state_keys(self) -> list[str]:
        return self.keys() + [SUM + e.key for e in self.summed]

    def batch_axis(self, key: str) -> int | None:
        if key.startswith(SUM):  # shaped like what the edge's broadcast copies
            rows = {e.key for e in self.rows}
            return 0 if key[len(SUM):] in rows and self.info.name in self.analysis.batched else None
        return super().batch_axis(key)

    def transpose(self, xp, e: Edge, z: dict, data: dict):
        if SUM + e.key in z:
            return e.map.transpose_steps(xp, z[SUM + e.key], self.analysis.info[e.src].family.type.shape, data)
        return super().transpose(xp, e, z, data)

    def write(self, xp, e: Edge, value, new: dict, data: dict, slot=0) -> None:
        super().write(xp, e, value, new, data, slot)
        new.pop(SUM + e.key, None)  # the sum of an edge just written is stale

    def put(self, xp, e: Edge, part, new: dict) -> None:
        new[e.key] = part
        new.pop(SUM + e.key, None)

    def combine(self, xp, fn, states: list, out: dict, data: dict) -> None:
        """Edges leaf by leaf; a carried sum only where every state has it (a projection
        drops the sums of the edges it rewrites)."""
        super().combine(xp, fn, states, out, data)
        for e in self.summed:
            k = SUM + e.key
            if all(k in s for s in states):
                out[k] = fn(*(s[k] for s in states))

    # the ports as the kernels see them ---------------------------------------------------
    def _3d(self, a):
        return a.reshape((self.nrows, self.m, a.shape[-1]))

    def flat(self, a):
        """Per-node values [*lead, m] as the kernels' [rows, m]."""
        return a.reshape((self.nrows, self.m))

    def nodes(self, a):
        """The kernels' [rows, m] back to the family's [*lead, m]."""
        return a.reshape(self.lead + (self.m,))

    def port(self, xp, z: dict, rows: bool):
        """Port a's (``rows``) or b's edges in state z as one [..., m, k] array (the kernels
        take the leading axes as rows: a conv's edges are passed as stored, since a reshape
        before an in-place call made XLA copy them)."""
        es = self.rows if rows else self.cols
        if len(es) == 1:
            return z[es[0].key]
        return xp.concatenate([self._3d(z[e.key]) for e in es], axis=-1)

    def split(self, new: dict, rows: bool, value) -> None:
        """A port's new [rows, m, k] array back onto its edges."""
        es = self.rows if rows else self.cols
        for e in es:
            new[e.key] = (value if len(es) == 1 else value[..., e.start : e.stop]).reshape(e.type.shape)

    def sources(self, xp, z: dict, rows: bool):
        """What a port's edges copy, where each holds its producer's value (after the
        producers' projection): port a's [rows, k] (its copies along m), port b's [m, k]
        (its copies along the rows)."""
        es = self.rows if rows else self.cols
        parts = [self._3d(z[e.key])[:, 0, :] if rows else self._3d(z[e.key])[0] for e in es]
        return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-1)

    def put_sums(self, out: dict, sa, sb, where: dict | None = None) -> None:
        """The kernel's sums of a port's edges -- sa [rows, k] over m, sb [k, m] over the
        rows -- as each edge's SUM key (its slice of the port, shaped like what the edge's
        broadcast copies); only the keys ``where`` has, if given."""
        for e in self.rows if sa is not None else ():
            if where is None or SUM + e.key in where:
                part = sa if len(self.rows) == 1 else sa[:, e.start : e.stop]
                out[SUM + e.key] = part.reshape(self.lead + (e.stop - e.start,))
        for e in self.cols:
            if where is None or SUM + e.key in where:
                out[SUM + e.key] = sb if len(self.cols) == 1 else sb[e.start : e.stop]


class FoldedSums(InputsNotStored, FusedSums):
    """A fused dot family whose port a is the input, folded into the family
    (storage.FoldedInputs): only port b's edges are stored (with their carried sums), and
    the native step runs the ``*_fixed`` kernels, which hold each node's a-row at the
    input's row. Elsewhere (the shadow's plain projections, monitoring) the family projects
    through its primitive's ``fixed_rule``."""

    kind = "edges, input folded, fused DR"
    stacks = False

    def __init__(self, analysis, info, rows: list, cols: list, order, first: bool, mesh=None, store=None):
        super().__init__(analysis, info, rows, cols, order, first, mesh=mesh, store=store)
        self.fixed = (True, False)
        plain = len(self.cols) == 1 and not self.cols[0].map.steps and len(info.family.type.shape) == 2
        self.buffer_keys = (self.cols[0].key,) if plain else ()
        self.edge_keys = tuple(e.key for e in self.cols)
        self.native_keys = self.edge_keys

    def project(self, program, xp, z: dict, new: dict, data: dict, slot=0) -> None:
        project_folded(self, program, xp, z, new, data, slot)

    def per_update(self, xp, data: dict) -> dict:
        """The input's rows the kernels hold port a at, [rows, k] (a conv's patches): once
        per update, not in every kernel call."""
        parts = [e.map.apply_steps(xp, data[e.src], data).reshape((self.nrows, e.stop - e.start)) for e in self.rows]
        return {INPUTS + self.info.name: parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-1)}

    def inputs(self, xp, data: dict):
        """The input's rows (:meth:`per_update`)."""
        return data[INPUTS + self.info.name]


def per_shard(mesh, fn, ins, outs):
    """``fn`` as is, or under a mesh run on each device's rows (``shard_map`` over the data
    axis): ``ins``/``outs`` say per operand whether it is split along its leading axis
    (the rows) or the same on every device. The kernels are CPU custom calls with no
    partitioning rule; every row's work is its own, and per-group partial sums come out
    stacked along the devices, so the caller's sum over groups reduces across them."""
    if mesh is None:
        return fn
    import jax
    from jax.sharding import PartitionSpec as P

    def specs(flags):
        if isinstance(flags, bool):
            return P("data") if flags else P()
        return tuple(P("data") if f else P() for f in flags)

    return jax.shard_map(fn, mesh=mesh, in_specs=specs(ins), out_specs=specs(outs), check_vma=False)


def fusable(analysis, info, order, mesh=None, store=None, fixed=None) -> FusedSums | None:
    """``info``'s family as a :class:`FusedSums` if the native step can take it (module
    docstring), else None. ``fixed``: which ports are folded inputs (storage.fixed_ports).
    The caller checks that the kernel builds (:func:`available`)."""
    if fixed is not None and fixed != (True, False):
        return None
    f = info.family
    if f.kind != "dot" or f.options().get("kernel", "auto") != "auto" or len(f.type.shape) < 2:
        return None
    r = len(f.type.shape)  # nodes [*lead, m], edges [*lead, m, k]
    if f.type.dtype not in ("f32", "f64") or not info.out or info.has_unused:
        return None
    ports = info.in_ports
    if [p for p, _, _ in ports] != ["a", "b"] or any(n < 1 or not es for _, n, es in ports):
        return None
    (_, _, rows), (_, _, cols) = ports
    # port a's values copied along the units (m), port b's along every leading node axis
    if any(e.map.final.src_axes != tuple(range(r - 1)) + (r,) for e in rows) or \
            any(e.map.final.src_axes != (r, r - 1) for e in cols):
        return None
    cls = FusedSums if fixed is None else FoldedSums
    return cls(analysis, info, rows, cols, order, first=f.name in analysis.classes[order[0]], mesh=mesh, store=store)


def available() -> bool:
    from .. import kernels

    return kernels.load("dot_project")


def _fused(prog) -> list[FusedSums]:
    return list(prog.strategies(FusedSums).values())


def _group_sum(xp, sb):
    """The kernel's per-group sums [G, m, n] as the producer's sum [n, m] (the group axis
    summed as a contraction: XLA on CPU reduces short leading axes slowly)."""
    return xp.transpose(sum_axes(xp, sb, (0,)))


def dr_shadow(prog, xp, z: dict, data: dict) -> dict:
    """P0(z) for reading parameter means (``param_means``), with each fused family of the
    first colour projected by the kernel's first pass, which returns its projected edges'
    sums rather than the edges: the state holds those sums (SUM keys, which producers'
    means read) and the unprojected edges, so it is for means only, not for distances
    (monitoring projects the shadow the plain way)."""
    from .. import kernels

    fused = _fused(prog)
    names = {f.info.name for f in fused}
    p0 = prog.project_families(xp, [n for n in prog.classes[0] if n not in names], z, data)
    for f in fused:
        if not f.first:
            continue
        ybar, w = prog.output_args(xp, f.info, z, data)
        if isinstance(f, FoldedSums):
            project = per_shard(f.mesh, lambda zb, x, c0, w: kernels.dot_dr_project_fixed(
                zb, x, c0, w, min(zb.shape[0], FUSED_GROUPS), reflect=False), (True,) * 4, (True,) * 3)
            y, _, sb = project(f.port(xp, z, False), f.inputs(xp, data), f.flat(ybar), f.flat(w))
            prog.write_out(xp, f.info, f.nodes(y), p0, data)
            f.put_sums(p0, None, _group_sum(xp, sb))
            continue
        project = per_shard(f.mesh, lambda za, zb, c0, w: kernels.dot_dr_project(
            za, zb, c0, w, min(za.shape[0], FUSED_GROUPS), reflect=False), (True,) * 4, (True,) * 4)
        y, _, sa, sb = project(f.port(xp, z, True), f.port(xp, z, False), f.flat(ybar), f.flat(w))
        prog.write_out(xp, f.info, f.nodes(y), p0, data)
        f.put_sums(p0, sa, _group_sum(xp, sb))
    return p0


def dr_step(prog, xp, z: dict, data: dict, relaxation: float):
    """One DR step, z + 2r (P1(2 P0 z - z) - P0 z), with each fused dot family's input
    edges done by the native kernel instead of XLA's passes; the rest of the plan as in
    the algorithm. P0, P1 are the classes in the families' ``order`` (DM with beta = 1
    swaps them). Same iterates as algorithms.DouglasRachford.step and DifferenceMap.step
    (tests/test_fused.py).

    A family of the second colour takes one pass (read once, written once, in place):
    its edges' P0 values are copies of its producers' projected values. The kernel also
    returns its new edges' sums, which the state carries (SUM keys) so that the next P0
    -- a parameter's consensus, a function's mean of its copies -- does not read the
    edges again. A family of the first colour takes two: its own projection with the
    reflected edges' sums (which its producers' P1 reads), then the update once P1 is
    known."""
    from .. import kernels

    r = relaxation
    fused = _fused(prog)
    names = {f.info.name for f in fused}
    before, after = (prog.classes[c] for c in fused[0].order)  # P0, P1 in DR's terms
    first = [f for f in fused if f.first]
    second = [f for f in fused if not f.first]
    fused_edges = {k for f in fused for k in f.edge_keys}
    p0 = prog.project_families(xp, [n for n in before if n not in names], z, data)
    q = {}
    passes = {}
    for f in first:
        ybar, w = prog.output_args(xp, f.info, z, data)
        if isinstance(f, FoldedSums):
            project = per_shard(f.mesh, lambda zb, x, c0, w: kernels.dot_dr_project_fixed(
                zb, x, c0, w, min(zb.shape[0], FUSED_GROUPS), edges=True), (True,) * 4, (True,) * 4)
            zb, y, mu, sb = project(f.port(xp, z, False), f.inputs(xp, data), f.flat(ybar), f.flat(w))
            passes[f.info.name] = (zb, mu)
            prog.write_out(xp, f.info, f.nodes(y), p0, data)
            f.put_sums(q, None, _group_sum(xp, sb))
            continue
        project = per_shard(f.mesh, lambda za, zb, c0, w: kernels.dot_dr_project(
            za, zb, c0, w, min(za.shape[0], FUSED_GROUPS), edges=True), (True,) * 4, (True,) * 6)
        # the edges come back unchanged (aliased) and go on to the update: chained in place,
        # XLA does not copy them to keep them for it (a copy of the whole port per step)
        za, zb, y, coef, sa, sb = project(f.port(xp, z, True), f.port(xp, z, False), f.flat(ybar), f.flat(w))
        passes[f.info.name] = (za, zb, coef)
        prog.write_out(xp, f.info, f.nodes(y), p0, data)
        f.put_sums(q, sa, _group_sum(xp, sb))  # the reflected edges' sums, for their producers' P1
    q.update({k: 2 * p0[k] - z[k] for k in z if not k.startswith(SUM) and k not in fused_edges})
    p1 = prog.project_families(xp, [n for n in after if n not in names], q, data)
    new: dict = {}
    moved = 0.0  # a Python float: the sums below give it their dtype
    for f in second:
        if isinstance(f, FoldedSums):
            pb = f.sources(xp, p0, False)
            ybar, w = prog.output_args(xp, f.info, q, data)
            step = per_shard(f.mesh, lambda zb, x, pb, c0, w: kernels.dot_dr_step_fixed(
                zb, x, pb, c0, w, r, min(zb.shape[0], FUSED_GROUPS)), (True, True, False, True, True), (True,) * 4)
            zb, y, res, sb = step(f.port(xp, z, False), f.inputs(xp, data), pb, f.flat(ybar), f.flat(w))
            f.split(new, False, zb)
            f.put_sums(new, None, _group_sum(xp, sb), where=z)
            moved = moved + xp.sum(res)
            prog.write_out(xp, f.info, f.nodes(y), p1, data)
            continue
        pa = f.sources(xp, p0, True)  # the [N, n] source of the edges copied along m
        pb = f.sources(xp, p0, False)  # the transposed [n, m] source: [m, n]
        ybar, w = prog.output_args(xp, f.info, q, data)
        step = per_shard(f.mesh, lambda za, zb, pa, pb, c0, w: kernels.dot_dr_step(
            za, zb, pa, pb, c0, w, r, min(za.shape[0], FUSED_GROUPS)), (True, True, True, False, True, True), (True,) * 6)
        za, zb, y, res, sa, sb = step(f.port(xp, z, True), f.port(xp, z, False), pa, pb, f.flat(ybar), f.flat(w))
        f.split(new, True, za)
        f.split(new, False, zb)
        f.put_sums(new, sa, _group_sum(xp, sb), where=z)
        moved = moved + xp.sum(res)
        prog.write_out(xp, f.info, f.nodes(y), p1, data)
    for f in first:
        if isinstance(f, FoldedSums):
            vb = f.sources(xp, p1, False)
            update = per_shard(f.mesh, lambda zb, mu, x, vb: kernels.dot_dr_update_fixed(zb, mu, x, vb, r),
                               (True, True, True, False), (True,) * 2)
            zb, mu = passes[f.info.name]
            zb, res = update(zb, mu, f.inputs(xp, data), vb)
            f.split(new, False, zb)
            moved = moved + xp.sum(res)
            continue
        va = f.sources(xp, p1, True)
        vb = f.sources(xp, p1, False)
        update = per_shard(f.mesh, lambda za, zb, coef, va, vb: kernels.dot_dr_update(za, zb, coef, va, vb, r),
                           (True, True, True, True, False), (True,) * 3)
        za, zb, coef = passes[f.info.name]
        za, zb, res = update(za, zb, coef, va, vb)
        f.split(new, True, za)
        f.split(new, False, zb)
        moved = moved + xp.sum(res)
    for k in q:
        if not k.startswith(SUM):
            new[k] = z[k] + 2 * r * (p1[k] - p0[k])
    for name, s in prog.storage.items():  # |P1 - P0| over the rest, as each strategy measures it
        if name not in names:
            part = s.distance_sq(xp, p1, p0, data)
            if not (isinstance(part, float) and part == 0.0):
                moved = moved + part
    return {k: new[k] for k in z}, xp.sqrt(moved)


# The native steps, by (algorithm type, lowering): each gives the step (or shadow) function
# for a program and an algorithm, or None where it does not apply.
def _dr_step(prog, alg):
    fused = _fused(prog)
    if not fused or fused[0].order != (0, 1):
        return None
    return lambda xp, z, data: dr_step(prog, xp, z, data, alg.relaxation)


def _dm_step(prog, alg):
    # z + P0(2 P1 z - z) - P1 z: DR with r = 1/2 and the classes swapped; its residual
    # |P0(f1 z) - P1 z| is DR's |P1(R0 z) - P0 z| swapped alike
    fused = _fused(prog)
    if alg.beta != 1.0 or not fused or fused[0].order != (1, 0):
        return None
    return lambda xp, z, data: dr_step(prog, xp, z, data, 0.5)


def _dr_shadow(prog, alg):
    if not any(f.first for f in _fused(prog)):
        return None
    return lambda xp, z, data: dr_shadow(prog, xp, z, data)


NATIVE_STEPS = {(DouglasRachford, "materialized"): _dr_step, (DifferenceMap, "materialized"): _dm_step}
NATIVE_SHADOWS = {(DouglasRachford, "materialized"): _dr_shadow}
