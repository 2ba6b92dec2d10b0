"""Static analysis of a coloured plan, done once at compile time in NumPy and shared by
every lowering: each family's ports and out-edges, its primitive, its out-degree (the
count a producer's mean divides by), the fused groups, the colour classes or CP's layers,
a topological order, and which families are parameters, the input and the target.

Nothing here depends on how edges are stored (backends/storage.py) or which algorithm
runs: a lowering is a choice of storage per family over this analysis.

The mean of a producer's out-edges is sum_e map_e^T(z_e) / deg, deg = sum_e map_e^T(1).
A producer with no outgoing edge this step (deg = 0) keeps its value. Degrees are static
except where an out-edge gathers at runtime indices (an embedding table): then they are
counted from the batch's indices (the same scatter-add applied to ones), once per update
(:meth:`PlanAnalysis.with_degrees`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from ..ir.feasibility import BroadcastMap, Edge, Family, FeasModule
from ..primitives import get

DEGREE = "__degree__:"  # data key of a family's out-degree counted per batch (with_degrees)


@dataclasses.dataclass
class FamilyInfo:
    family: Family
    in_ports: list[tuple[str, int, list[Edge]]]  # (port, length, edges sorted by start)
    out: list[Edge]
    degree: Any  # float if uniform, else np.ndarray shaped like the family; 0 = no out-edges;
    # None: counted per batch (an out-edge gathers at runtime indices)
    prim: Any = None

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def runtime(self) -> bool:
        return self.degree is None

    @property
    def has_unused(self) -> bool:
        """Some (not all) nodes may have no outgoing edge (a pixel a stride skips, an
        embedding row no token of the batch names)."""
        return self.runtime or (not isinstance(self.degree, float) and bool(np.any(self.degree == 0)))

    @property
    def in_edges(self) -> list[Edge]:
        return [e for _, _, es in self.in_ports for e in es]


def copies(e: Edge, src_shape) -> Any:
    """map_e^T applied to ones: how many edge entries copy each producer entry. Computed
    without materializing the edge (a dense layer's copies are as large as its state): the
    final broadcast copies uniformly, the structural steps before it (windows, slices, ...)
    are transposed on ones of their (smaller) shape."""
    count = float(math.prod(n for a, n in enumerate(e.type.shape) if a not in e.map.final.src_axes))
    if isinstance(e.map, BroadcastMap):
        return count
    shapes = e.map.shapes(src_shape)
    y = np.full(shapes[-1], count)
    for step, shape in zip(reversed(e.map.steps), reversed(shapes[:-1])):
        y = step.transpose(np, y, shape, None)
    return y


def _degree(f: Family, out: list[Edge]):
    if not out:
        return 0.0
    if any(e.map.runtime for e in out):
        return None
    deg = 0.0
    for e in out:
        deg = deg + copies(e, f.type.shape)
    if isinstance(deg, float):  # every out-edge a plain broadcast: uniform
        return deg
    deg = np.broadcast_to(deg, f.type.shape)
    flat = deg.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return float(flat[0])
    return deg


class PlanAnalysis:
    """The static facts of a plan (see the module docstring). ``schedule``: the classes a
    step projects onto in turn, ``colours`` (AP, DR, DM) or ``layers`` (CP). ``kernels``: by
    primitive name, the implementation a primitive that offers several (option ``kernel``)
    runs here unless its family names one (a lowering's choice: backends/lowering.py); a
    primitive not named keeps its default."""

    def __init__(self, plan: FeasModule, *, loss_options: dict | None = None, schedule: str = "colours",
                 kernels: Mapping[str, str] | None = None):
        self.plan = plan
        self.info: dict[str, FamilyInfo] = {}
        for f in plan.families:
            ins = []
            for port, n in f.ports:
                es = sorted((e for e in plan.in_edges(f.name) if e.port == port), key=lambda e: e.start)
                ins.append((port, n, es))
            out = plan.out_edges(f.name)
            info = FamilyInfo(f, ins, out, _degree(f, out))
            if f.is_function:
                info.prim = get(f.kind, **f.options())
                kernel = (kernels or {}).get(f.kind)
                if kernel is not None and "kernel" in info.prim.defaults and "kernel" not in f.options():
                    info.prim = info.prim.with_options(kernel=kernel)
            elif f.kind == "target":
                opts = f.options()
                opts.update(loss_options or {})
                info.prim = get(f.attr("kind"), **opts)
            self.info[f.name] = info
        # fused groups (fuse-projections), of families that are projected at all
        self.groups: list[list[str]] = []
        for g in plan.groups:
            members = [n for n in g.members if self.info[n].out]
            if len(members) > 1:
                self.groups.append(members)
        self.colours = sorted({f.attr("colour") for f in plan.families})
        self.by_colour = {c: [f.name for f in plan.families if f.attr("colour") == c] for c in self.colours}
        if schedule not in ("colours", "layers"):
            raise ValueError(f"schedule must be 'colours' or 'layers', not {schedule!r}")
        self.classes = [self.by_colour[c] for c in self.colours] if schedule == "colours" else self._layers()
        self.order = self._topological()
        # families indexed by the batch (the input's descendants: their leading axis is
        # the batch), which a mesh's data axis splits; the rest (parameters and functions
        # of them) are the same on every device
        self.batched: set[str] = set()
        for name in self.order:
            if self.info[name].family.kind == "const" or any(e.src in self.batched for e in self.info[name].in_edges):
                self.batched.add(name)
        self.params = [f.name for f in plan.families if f.kind == "param"]
        self.consts = [f.name for f in plan.families if f.kind == "const"]
        self.targets = [f.name for f in plan.families if f.kind == "target"]  # one per position of a sequence model
        self.target = self.targets[0]
        self.dtype = next((f.type.np_dtype for f in plan.families if f.type.dtype != "i32"), np.dtype(np.float32))

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

    def is_const(self, name: str) -> bool:
        return self.info[name].family.kind == "const"

    def with_degrees(self, xp, data: dict) -> dict:
        """``data`` (the batch: inputs and labels) plus the out-degrees that depend on it: a
        family with a runtime gather among its out-edges (an embedding table) counted from
        the batch's indices, once per update rather than in every projection."""
        dtype = data["__labels__"].dtype
        counted = {}
        for name, info in self.info.items():
            if info.runtime:
                shape = info.family.type.shape
                parts = [e.map.transpose(xp, xp.ones(e.type.shape, dtype), shape, data) for e in info.out]
                counted[DEGREE + name] = sum(parts[1:], parts[0])
        return {**data, **counted}

    def degree(self, info: FamilyInfo, data: dict):
        """A family's out-degree: a float, a NumPy array (static), or the array counted from
        this batch's indices (``with_degrees``)."""
        return data[DEGREE + info.family.name] if info.runtime else info.degree

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
                value = _contracted(xp, info, vals, data) if f.kind == "dot" else None
                if value is None:
                    ins = [gather(xp, es, n, lambda e: e.map.apply(xp, vals[e.src], e.type.shape, data))
                           for _, n, es in info.in_ports]
                    value = info.prim.forward(*ins)
                vals[name] = value
        return vals


def _contracted(xp, info: FamilyInfo, vals: dict, data: dict):
    """A dot family's forward value as one contraction (einsum) of what its edges'
    broadcasts copy, rather than the sum of products of the copies: a conv's [B, H, W, C, k]
    copies of its kernel and patches are never formed (on the 1x32 CNN the product form
    took ~190 ms per update). None where a port has several edges or a map does not end in
    a broadcast."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    specs, args = [], []
    for _, n, es in info.in_ports:
        if len(es) != 1:
            return None
        (e,) = es
        final = e.map.final
        if not isinstance(final, BroadcastMap) or len(e.type.shape) > len(letters):
            return None
        args.append(e.map.apply_steps(xp, vals[e.src], data))
        specs.append("".join(letters[a] for a in final.src_axes))
    out = letters[: len(info.in_ports[0][2][0].type.shape) - 1]  # the edge's axes but the port's
    if not set(out) <= set("".join(specs)):
        return None  # an axis neither operand varies along: the product form broadcasts it
    return xp.einsum(f"{specs[0]},{specs[1]}->{out}", *args)


def gather(xp, edges, n, read):
    """A port's value from its edges (concatenated along the port axis; a scalar port has
    exactly one edge)."""
    if n == 0:
        return read(edges[0])
    parts = [read(e) for e in edges]
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-1)


def target_labels(family, labels):
    """A target family's rows of the batch's one-hot labels: all of them, or, for a
    sequence model's per-step target (attribute ``rows`` = [first, count]), its positions
    of ``[batch, T, classes]``."""
    rows = family.attr("rows")
    if rows is None:
        return labels
    first, count = rows
    return labels[:, first : first + count]
