"""The materialized lowering: every edge family stored as one array (as in the paper).

A :class:`Program` is built once from a coloured plan. Everything static -- which edges
feed which port slice, each producer's out-degree, each family's projection weight -- is
computed here at compile time, in NumPy; the functions it returns do only array work and
are written against an array namespace ``xp``, so the JAX backend jits them and tests can
run them in NumPy.

State: ``z = {edge.key: array}``, each array shaped like its consumer's port slice.
Projection onto colour c (Theorem 2: the families of a colour touch disjoint edges):

- const:     out-edges <- map(data)
- param:     out-edges <- map(mean of out-edges)         (consensus)
- function:  x0 <- in-edges (per port, concatenated), y0 <- mean of out-edges,
             (x, y) <- project(x0, y0, weight), in-edges <- x, out-edges <- map(y)
- target:    in-edges <- prox(in-edges, labels)

The mean of a producer's out-edges is sum_e map_e^T(z_e) / deg, deg = sum_e map_e^T(1).
A producer with no outgoing edge this step (deg = 0) keeps its value. Degrees are static
except where an out-edge gathers at runtime indices (an embedding table): then they are
counted from the batch's indices (the same scatter-add applied to ones), once per update
(``with_degrees``).

Input edges under AP (``elide_inputs``) are not stored. A const's projection writes its
edges without reading them, and under AP their only other reader -- the consumer, in the
other colour -- always finds them just written (each step is P1(P0(z)) and every edge joins
the two colours). So the consumer reads the input's map and its result on those edges is
dropped: the same iterates and parameters, without the traffic of the largest edge family
of a first dense layer (half the 784-128-10 MLP's state). The step residual is then
|P1(P0 z) - P0 z| over the stored edges. Not for DR or DM (their iterates combine
projections, so input edges are free variables), warm starts (stored input edges would
hold the previous batch) or monitoring (per-family distances read every edge).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..algorithms import DifferenceMap, DouglasRachford
from ..ir.feasibility import BroadcastMap, ChainMap, Edge, Family, FeasModule
from ..primitives import get

DEGREE = "__degree__:"  # data key of a family's out-degree counted per batch (with_degrees)
SUM = "__sum__:"  # state key of an edge's contribution to its producer's sum (the fused DR step)
FUSED_GROUPS = 8  # row groups of the fused DR kernel's partial sums (fixed: results do not depend on threads)


@dataclasses.dataclass(frozen=True)
class _Fused:
    """A dense dot family whose DR step runs in the native kernel: nodes [N, m], ports of
    length n; ``rows`` is its a-edge, copying a [N, n] source along m, ``cols`` its b-edge,
    copying a [n, m] source along N; ``first``: of the first colour (DR reflects through its
    own projection; two kernel passes) rather than the second (one pass)."""

    name: str
    rows: Edge
    cols: Edge
    first: bool


@dataclasses.dataclass
class _FamilyInfo:
    family: Family
    in_ports: list[tuple[str, int, list[Edge]]]  # (port, length, edges sorted by start)
    out: list[Edge]
    degree: Any  # float if uniform, else np.ndarray shaped like the family; 0 = no out-edges;
    # None: counted per batch (an out-edge gathers at runtime indices)
    prim: Any = None

    @property
    def runtime(self) -> bool:
        return self.degree is None

    @property
    def has_unused(self) -> bool:
        """Some (not all) nodes may have no outgoing edge (a pixel a stride skips, an
        embedding row no token of the batch names)."""
        return self.runtime or (not isinstance(self.degree, float) and bool(np.any(self.degree == 0)))


def _copies(e: Edge, src_shape) -> Any:
    """map_e^T applied to ones: how many edge entries copy each producer entry. Computed
    without materializing the edge (a dense layer's copies are as large as its state): the
    final broadcast copies uniformly, the structural steps before it (windows, slices, ...)
    are transposed on ones of their (smaller) shape."""
    final = e.map.final if isinstance(e.map, ChainMap) else e.map
    copies = float(math.prod(n for a, n in enumerate(e.type.shape) if a not in final.src_axes))
    if not isinstance(e.map, ChainMap):
        return copies
    shapes = e.map.shapes(src_shape)
    y = np.full(shapes[-1], copies)
    for step, shape in zip(reversed(e.map.steps), reversed(shapes[:-1])):
        y = step.transpose(np, y, shape, None)
    return y


class Program:
    def __init__(self, plan: FeasModule, *, weighted: bool = False, loss_options: dict | None = None, schedule: str = "colours",
                 elide_inputs: bool = False, fuse_order: tuple[int, int] | None = None):
        self.plan = plan
        self.weighted = weighted
        self.info: dict[str, _FamilyInfo] = {}
        for f in plan.families:
            ins = []
            for port, n in f.ports:
                es = sorted((e for e in plan.in_edges(f.name) if e.port == port), key=lambda e: e.start)
                ins.append((port, n, es))
            out = plan.out_edges(f.name)
            info = _FamilyInfo(f, ins, out, self._degree(f, out))
            if f.is_function:
                info.prim = get(f.kind, **f.options())
                if "kernel" in info.prim.defaults and "kernel" not in f.options():
                    # inside a lowered step XLA's own form of the projection is faster than
                    # the native kernel (feascomp/kernels): the inputs arrive through maps and
                    # the algorithm's arithmetic, which XLA fuses into the projection's passes
                    # and a custom call needs materialized (measured, 784-128-10, K = 10: AP
                    # 56 against 77 ms per step, DR equal; docs/performance.md)
                    info.prim = info.prim.with_options(kernel="xla")
            elif f.kind == "target":
                opts = f.options()
                opts.update(loss_options or {})
                info.prim = get(f.attr("kind"), **opts)
            self.info[f.name] = info
        # fused groups (fuse-projections), of families that are projected at all
        self.group_of: dict[str, list[str]] = {}
        for g in plan.groups:
            members = [n for n in g.members if self.info[n].out]
            if len(members) > 1:
                for n in members:
                    self.group_of[n] = members
        self.colours = sorted({f.attr("colour") for f in plan.families})
        self.by_colour = {c: [f.name for f in plan.families if f.attr("colour") == c] for c in self.colours}
        if schedule not in ("colours", "layers"):
            raise ValueError(f"schedule must be 'colours' or 'layers', not {schedule!r}")
        self.classes = [self.by_colour[c] for c in self.colours] if schedule == "colours" else self._layers()
        self.order = self._topological()
        self.params = [f.name for f in plan.families if f.kind == "param"]
        self.consts = [f.name for f in plan.families if f.kind == "const"]
        self.target = next(f.name for f in plan.families if f.kind == "target")
        # input edges not stored (AP: see the module docstring)
        self.elided = {e.key: e for e in plan.edges if self.info[e.src].family.kind == "const"} if elide_inputs else {}
        if self.elided and len(self.classes) != 2:
            raise ValueError("input edges can be elided only under a two-colour schedule (AP)")
        self.dtype = next((f.type.np_dtype for f in plan.families if f.type.dtype != "i32"), np.dtype(np.float32))
        # dense dot families whose DR step runs in the native kernel (dr_step); fuse_order: the
        # order of the two classes in the step (DR: (0, 1); DM with beta = 1, which is DR with
        # r = 1/2 reflecting through P1 first: (1, 0)); None: nothing fused
        self.fuse_order = fuse_order
        fusing = fuse_order is not None and schedule == "colours" and not self.elided
        self.fused: dict[str, _Fused] = self._fusable() if fusing else {}
        self.fused_edges = {e.key for f in self.fused.values() for e in (f.rows, f.cols)}
        # edges whose producer reads their sum (not a const's): carried in the state (SUM keys)
        # (second colour only: the first colour's producers read the reflected edges' sums,
        # which the kernel's first pass returns)
        self.summed = [e for f in self.fused.values() if not f.first for e in (f.rows, f.cols)
                       if self.info[e.src].family.kind != "const"]

    def _fusable(self) -> dict[str, _Fused]:
        """The families ``dr_step`` gives to the native kernel: dots, float32 or float64, with
        nodes [N, m], each port one edge, port a's a copy of a [N, n] source along m and port
        b's of a [n, m] source along N (a dense layer's x @ W), every node with an outgoing
        edge, option ``kernel="auto"``; and only where the kernel builds on this machine."""
        if len(self.classes) != 2:
            return {}
        found = {}
        before, after = (self.classes[c] for c in self.fuse_order)
        for name in before + after:
            info = self.info[name]
            f = info.family
            if f.kind != "dot" or f.options().get("kernel", "auto") != "auto" or len(f.type.shape) != 2:
                continue
            if f.type.dtype not in ("f32", "f64") or not info.out or info.has_unused:
                continue
            edges = [es[0] if len(es) == 1 else None for _, _, es in info.in_ports]
            if None in edges or any(n < 1 for _, n, _ in info.in_ports):
                continue
            kinds = [e.map.src_axes if isinstance(e.map, BroadcastMap) else None for e in edges]
            if kinds == [(0, 2), (2, 1)]:
                found[name] = _Fused(name, edges[0], edges[1], first=name in before)
        if found:
            from .. import kernels

            if not kernels.load("dot_project"):
                return {}
        return found

    @staticmethod
    def _degree(f: Family, out: list[Edge]):
        if not out:
            return 0.0
        if any(e.map.runtime for e in out):
            return None
        deg = 0.0
        for e in out:
            deg = deg + _copies(e, f.type.shape)
        if isinstance(deg, float):  # every out-edge a plain broadcast: uniform
            return deg
        deg = np.broadcast_to(deg, f.type.shape)
        flat = deg.reshape(-1)
        if flat.size and np.all(flat == flat[0]):
            return float(flat[0])
        return deg

    def _layers(self) -> list[list[str]]:
        """CP's ordered classes: the plan's ``layer`` attributes (backward-BFS layers from
        the target, set by the color pass), in order, each split by colour (a layer of a graph
        that is not bipartite may hold adjacent families)."""
        key = {f.name: (f.attr("layer"), f.attr("colour")) for f in self.plan.families}
        if any(v[0] is None for v in key.values()):
            raise ValueError("the plan has no CP layers; run the color pass")
        return [[n for n in key if key[n] == k] for k in sorted(set(key.values()))]

    def _topological(self) -> list[str]:
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.info)
        g.add_edges_from((e.src, e.dst) for e in self.plan.edges)
        return list(nx.lexicographical_topological_sort(g))

    # sizes -------------------------------------------------------------------------------
    def state_bytes(self, itemsize: int | None = None) -> int:
        return sum(self.family_state_bytes(itemsize).values())

    def family_state_bytes(self, itemsize: int | None = None) -> dict[str, int]:
        """The state each family's in-edges take as stored (elided inputs take none), in
        plan order."""
        size = itemsize or np.dtype(self.dtype).itemsize
        out = {f.name: 0 for f in self.plan.families}
        for e in self.plan.edges:
            if e.key not in self.elided:
                out[e.dst] += math.prod(e.type.shape) * size
        return out

    def combine(self, xp, data: dict, fn, *states) -> dict:
        """``fn`` (linear) applied to states leaf by leaf (the algorithms' arithmetic); a
        carried sum (SUM keys) only where every state has it (a projection drops the sums of
        the edges it rewrites)."""
        return {k: fn(*(s[k] for s in states)) for k in states[0]
                if not k.startswith(SUM) or all(k in s for s in states[1:])}

    def write_slot(self, c: int, step, call: int):
        """Where a projection puts the values it writes: one place per edge here (the
        collapsed lowering keeps several)."""
        return 0

    def distance(self, xp, a: dict, b: dict, data: dict):
        """|a - b| over every stored edge (the algorithms' step residual)."""
        keys = [k for k in a if k in b and not k.startswith(SUM)]
        return xp.sqrt(sum((xp.sum((a[k] - b[k]) ** 2) for k in keys), xp.zeros((), self.dtype)))

    # forward -----------------------------------------------------------------------------
    def forward_values(self, xp, params: dict, data: dict) -> dict:
        """Every family's value by a forward pass (targets excluded)."""
        vals = {}
        for name in self.order:
            info = self.info[name]
            f = info.family
            if f.kind == "const":
                vals[name] = data[name]
            elif f.kind == "param":
                vals[name] = params[name]
            elif f.is_function:
                ins = [self._gather(xp, es, n, lambda e: e.map.apply(xp, vals[e.src], e.type.shape, data))
                       for _, n, es in info.in_ports]
                vals[name] = info.prim.forward(*ins)
        return vals

    def init_edges(self, xp, vals: dict, data: dict, spare: dict | None = None) -> dict:
        """The edges of a forward pass (every edge a copy of its producer's value), plus the
        sums the fused DR step carries: for a broadcast, the value times its copies (not a
        reduction over the materialized edges). ``spare``: buffers to write the fused
        families' edges into (the previous update's, donated; the native ``fill``)."""
        z = {}
        for e in self.plan.edges:
            if e.key in self.elided:
                continue
            if spare is not None and e.key in spare:
                by_row = e.map.src_axes == (0, 2)  # rows: [N, n] copied along m; cols: [n, m] along N
                src = vals[e.src] if by_row else xp.transpose(vals[e.src])
                from .. import kernels

                z[e.key] = kernels.fill(spare[e.key], src, by_row)
            else:
                z[e.key] = e.map.apply(xp, vals[e.src], e.type.shape, data)
        for e in self.summed:
            copies = math.prod(n for a, n in enumerate(e.type.shape) if a not in e.map.src_axes)
            z[SUM + e.key] = vals[e.src] * xp.asarray(copies, vals[e.src].dtype)
        return z

    def _edge(self, xp, e: Edge, z: dict, data: dict):
        """An edge's value: stored, or (an elided input edge) the input's map."""
        if e.key in self.elided:
            return e.map.apply(xp, data[e.src], e.type.shape, data)
        return z[e.key]

    # projection --------------------------------------------------------------------------
    @staticmethod
    def _gather(xp, edges, n, read):
        if n == 0:  # scalar port: exactly one edge
            return read(edges[0])
        parts = [read(e) for e in edges]
        return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-1)

    def _sum_out(self, xp, info: _FamilyInfo, z: dict, data: dict):
        total = None
        for e in info.out:
            t = self._transpose_edge(xp, e, z, data)
            total = t if total is None else total + t
        return total

    def _transpose_edge(self, xp, e: Edge, z: dict, data: dict):
        """map_e^T of edge e's values: its contribution to its producer's sum (carried in the
        state by the fused DR step for its edges)."""
        if SUM + e.key in z:
            return z[SUM + e.key]
        return e.map.transpose(xp, z[e.key], self.info[e.src].family.type.shape, data)

    def with_degrees(self, xp, data: dict) -> dict:
        """``data`` (the batch: inputs and labels) plus the out-degrees that depend on it: a
        family with a runtime gather among its out-edges (an embedding table) counted from
        the batch's indices, once per update rather than in every projection."""
        dtype = data["__labels__"].dtype
        counted = {DEGREE + name: self._sum_out(xp, info, {e.key: xp.ones(e.type.shape, dtype) for e in info.out}, data)
                   for name, info in self.info.items() if info.runtime}
        return {**data, **counted}

    def degree(self, info: _FamilyInfo, data: dict):
        """A family's out-degree: a float, a NumPy array (static), or the array counted from
        this batch's indices (``with_degrees``)."""
        return data[DEGREE + info.family.name] if info.runtime else info.degree

    def _mean_out(self, xp, info: _FamilyInfo, z: dict, data: dict, deg=None):
        total = self._sum_out(xp, info, z, data)
        deg = self.degree(info, data) if deg is None else deg
        if isinstance(deg, float):
            return total / deg
        return total / xp.maximum(xp.asarray(deg, total.dtype), 1)

    def _write_out(self, xp, info, value, new: dict, data: dict, write=0):
        for e in info.out:
            if e.key not in self.elided:
                new[e.key] = e.map.apply(xp, value, e.type.shape, data)

    def project(self, xp, c: int, z: dict, data: dict, write=0) -> dict:
        """P_c(z) for class c of the schedule (a colour, or a CP layer): a new state in
        which every edge incident to the class's families is projected. ``write``: where a
        lowering that keeps several values per producer puts this projection's (collapsed.py)."""
        return self.project_families(xp, self.classes[c], z, data, write)

    def project_families(self, xp, names, z: dict, data: dict, write=0) -> dict:
        new = dict(z)
        done = set()
        for name in names:
            if name in done:
                continue
            group = self.group_of.get(name)
            if group is not None and set(group) <= set(names):
                self._project_group(xp, group, z, new, data, write)
                done.update(group)
                continue
            info = self.info[name]
            f = info.family
            if f.kind == "const":
                self._write_out(xp, info, data[name], new, data, write)
            elif f.kind == "param":
                if not info.out:
                    continue
                self._write_out(xp, info, self._mean_out(xp, info, z, data), new, data, write)
            elif f.kind == "target":
                (_, n, es), = info.in_ports
                logits = self._gather(xp, es, n, lambda e: self._edge(xp, e, z, data))
                out = info.prim.prox(logits, data["__labels__"])
                self._scatter(xp, es, n, out, new)
            else:
                if not info.out:
                    continue  # output unconstrained: the inputs are already feasible
                ins, ybar, w = self._read(xp, info, z, data)
                new_ins, y = info.prim.project(ins, ybar, w)
                for (_, n, es), x in zip(info.in_ports, new_ins):
                    self._scatter(xp, es, n, x, new)
                self._write_out(xp, info, y, new, data, write)
        for k in [k for k in new if k.startswith(SUM)]:  # a sum of edges just written is stale
            edge = k[len(SUM):]
            if edge in new and new[edge] is not z.get(edge):
                del new[k]
        return new

    # the fused DR step -------------------------------------------------------------------
    def fused_step(self, algorithm):
        """A whole step for ``algorithm`` where this lowering has one (DR, or DM with
        beta = 1, with fused dot families: ``dr_step``; looked up by the algorithm's type in
        ``FUSED_STEPS``), else None (the algorithm's own step over ``project``)."""
        native = FUSED_STEPS.get(type(algorithm))
        return native(self, algorithm) if native is not None and self.fused else None

    def fused_shadow(self, algorithm):
        """The shadow for reading parameters where this lowering computes it natively (DR
        with fused families of the first colour: ``dr_shadow``), else None (DM's shadow
        P0(2 P1 z - z) runs the plain code)."""
        native = FUSED_SHADOWS.get(type(algorithm))
        return native(self, algorithm) if native is not None else None

    def dr_shadow(self, xp, z: dict, data: dict) -> dict:
        """P0(z) for reading parameter means (``param_means``), with each fused family of the
        first colour projected by the kernel's first pass, which returns its projected edges'
        sums rather than the edges: the state holds those sums (SUM keys, which producers'
        means read) and the unprojected edges, so it is for means only, not for distances
        (monitoring projects the shadow the plain way)."""
        from .. import kernels

        first = [f for f in self.fused.values() if f.first]
        p0 = self.project_families(xp, [n for n in self.classes[0] if n not in self.fused], z, data)
        for f in first:
            info = self.info[f.name]
            N, m = info.family.type.shape
            ybar, w = self._fused_output(xp, info, z, data)
            y, _, sa, sb = kernels.dot_dr_project(z[f.rows.key], z[f.cols.key], ybar, w, min(N, FUSED_GROUPS),
                                                  reflect=False)
            self._write_out(xp, info, y, p0, data)
            p0[SUM + f.rows.key] = sa
            p0[SUM + f.cols.key] = self._group_sum(xp, sb)
        return p0

    def dr_step(self, xp, z: dict, data: dict, relaxation: float):
        """One DR step, z + 2r (P1(2 P0 z - z) - P0 z), with each fused dot family's input
        edges done by the native kernel instead of XLA's passes; the rest of the plan as in
        the algorithm. P0, P1 are the classes in ``fuse_order`` (DM with beta = 1 swaps
        them). Same iterates as algorithms.DouglasRachford.step and DifferenceMap.step
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
        before, after = (self.classes[c] for c in self.fuse_order)  # P0, P1 in DR's terms
        first = [f for f in self.fused.values() if f.first]
        second = [f for f in self.fused.values() if not f.first]
        p0 = self.project_families(xp, [n for n in before if n not in self.fused], z, data)
        q = {}
        passes = {}
        for f in first:
            info = self.info[f.name]
            N, m = info.family.type.shape
            ybar, w = self._fused_output(xp, info, z, data)
            y, coef, sa, sb = kernels.dot_dr_project(z[f.rows.key], z[f.cols.key], ybar, w, min(N, FUSED_GROUPS))
            passes[f.name] = coef
            self._write_out(xp, info, y, p0, data)
            q[SUM + f.rows.key] = sa  # the reflected edges' sums, for their producers' P1
            q[SUM + f.cols.key] = self._group_sum(xp, sb)
        q.update({k: 2 * p0[k] - z[k] for k in z if not k.startswith(SUM) and k not in self.fused_edges})
        p1 = self.project_families(xp, [n for n in after if n not in self.fused], q, data)
        new: dict = {}
        moved = 0.0  # a Python float: the sums below give it their dtype
        for f in second:
            info = self.info[f.name]
            N, m = info.family.type.shape
            pa = p0[f.rows.key][:, 0, :]  # the [N, n] source of the edges copied along m
            pb = p0[f.cols.key][0]  # the transposed [n, m] source: [m, n]
            ybar, w = self._fused_output(xp, info, q, data)
            za, zb, y, res, sa, sb = kernels.dot_dr_step(z[f.rows.key], z[f.cols.key], pa, pb, ybar, w, r,
                                                         min(N, FUSED_GROUPS))
            new[f.rows.key], new[f.cols.key] = za, zb
            if SUM + f.rows.key in z:
                new[SUM + f.rows.key] = sa
            if SUM + f.cols.key in z:
                new[SUM + f.cols.key] = self._group_sum(xp, sb)
            moved = moved + xp.sum(res)
            self._write_out(xp, info, y, p1, data)
        for f in first:
            va = p1[f.rows.key][:, 0, :]
            vb = p1[f.cols.key][0]
            za, zb, res = kernels.dot_dr_update(z[f.rows.key], z[f.cols.key], passes[f.name], va, vb, r)
            new[f.rows.key], new[f.cols.key] = za, zb
            moved = moved + xp.sum(res)
        for k in q:
            if not k.startswith(SUM):
                d = p1[k] - p0[k]
                new[k] = z[k] + 2 * r * d
                moved = moved + xp.sum(d**2)
        return {k: new[k] for k in z}, xp.sqrt(moved)

    @staticmethod
    def _group_sum(xp, sb):
        """The kernel's per-group sums [G, m, n] as the producer's sum [n, m] (the group axis
        summed as a contraction: XLA on CPU reduces short leading axes slowly)."""
        from ..ir.feasibility import sum_axes

        return xp.transpose(sum_axes(xp, sb, (0,)))

    def _fused_output(self, xp, info, z: dict, data: dict):
        """A fused family's projection arguments besides its inputs: the mean of its
        outgoing edges in state z and its weight, per node."""
        deg = self.degree(info, data)
        ybar = self._mean_out(xp, info, z, data, deg)
        return ybar, xp.broadcast_to(xp.asarray(self._weight(xp, deg, ybar.dtype), ybar.dtype), ybar.shape)

    def _read(self, xp, info, z: dict, data: dict):
        """A function family's projection arguments: its inputs per port, the mean of its
        outgoing edges (a node with no outgoing edge is free: it keeps f(x)), its weight."""
        ins = [self._gather(xp, es, n, lambda e: self._edge(xp, e, z, data)) for _, n, es in info.in_ports]
        deg = self.degree(info, data)
        ybar = self._mean_out(xp, info, z, data, deg)
        if info.has_unused:
            ybar = xp.where(xp.asarray(deg) > 0, ybar, info.prim.forward(*ins))
        return ins, ybar, self._weight(xp, deg, ybar.dtype)

    def _project_group(self, xp, group, z: dict, new: dict, data: dict, write=0):
        """One projection call for a fused group (fuse-projections): each member's nodes
        flattened, vector ports zero-padded to the longest (primitives declaring
        ``zero_padding`` only; otherwise the pass gave equal lengths), stacked, projected,
        and split back."""
        infos = [self.info[n] for n in group]
        prim = infos[0].prim
        per_port = [[] for _ in infos[0].in_ports]
        ybars, weights, counts = [], [], []
        for info in infos:
            ins, ybar, w = self._read(xp, info, z, data)
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
        xs, y = prim.project(stacked, xp.concatenate(ybars), xp.concatenate(weights))
        start = 0
        for info, count in zip(infos, counts):
            shape = info.family.type.shape
            for (_, n, es), x in zip(info.in_ports, xs):
                part = x[start : start + count]
                part = xp.reshape(part[:, :n] if n else part, shape + ((n,) if n else ()))
                self._scatter(xp, es, n, part, new)
            self._write_out(xp, info, xp.reshape(y[start : start + count], shape), new, data, write)
            start += count

    def _weight(self, xp, deg, dtype):
        """The projection's weight on the output: its out-degree (at least 1), or 1."""
        if not self.weighted:
            return 1.0
        return deg if isinstance(deg, float) else xp.maximum(xp.asarray(deg, dtype), 1)

    def _scatter(self, xp, edges, n, x, new):
        for e in edges:
            part = x if n == 0 or len(edges) == 1 else x[..., e.start : e.stop]
            if e.key not in self.elided:
                new[e.key] = part

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
            deg = self.degree(info, data)
            mean = self._mean_out(xp, info, z, data, deg)
            out[p] = mean if isinstance(deg, float) else xp.where(xp.asarray(deg) > 0, mean, previous[p])
        return out

    def family_distances(self, xp, s: dict, data: dict):
        """Distance of state s to each family's constraint set, in plan order: for a family of
        colour c, the norm of P_c(s) - s over its incident edges (P_c(s) agrees with P_f(s)
        there, since the colour's families touch disjoint edges)."""
        sq = {}
        for c in self.colours:
            p = self.project_families(xp, self.by_colour[c], s, data)
            for name in self.by_colour[c]:
                info = self.info[name]
                keys = {e.key for e in info.out} | {e.key for _, _, es in info.in_ports for e in es}
                sq[name] = sum((xp.sum((p[k] - s[k]) ** 2) for k in keys), xp.zeros((), self.dtype))
        return xp.sqrt(xp.stack([sq[f.name] for f in self.plan.families]))


# The native steps of the materialized lowering, by algorithm type: each gives the step (or
# shadow) function for a program and an algorithm, or None where it does not apply. Each is
# checked against the algorithm's own formula (tests/test_fused.py).
def _dr_step(prog, alg):
    if prog.fuse_order != (0, 1):
        return None
    return lambda xp, z, data: prog.dr_step(xp, z, data, alg.relaxation)


def _dm_step(prog, alg):
    # z + P0(2 P1 z - z) - P1 z: DR with r = 1/2 and the classes swapped; its residual
    # |P0(f1 z) - P1 z| is DR's |P1(R0 z) - P0 z| swapped alike
    if alg.beta != 1.0 or prog.fuse_order != (1, 0):
        return None
    return lambda xp, z, data: prog.dr_step(xp, z, data, 0.5)


def _dr_shadow(prog, alg):
    if not any(f.first for f in prog.fused.values()):
        return None
    return lambda xp, z, data: prog.dr_shadow(xp, z, data)


FUSED_STEPS = {DouglasRachford: _dr_step, DifferenceMap: _dm_step}
FUSED_SHADOWS = {DouglasRachford: _dr_shadow}

