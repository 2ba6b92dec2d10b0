"""fuse-sum-relu: a sum family feeding only a one-input function of a sum (sum_relu, and
any primitive declaring ``fuses_sum``: leaky_relu, clip, sum) becomes one family of it.

    %1 = sum(x: 2) : f32[256, 128]                %h = sum_relu(x: 2) : f32[256, 128]
    %h = sum_relu(x: 1) : f32[256, 128]   ==>     edge %0 -> %h.x[0:1] ...
    edge %0 -> %1.x[0:1] ...                      edge %b1 -> %h.x[1:2] ...
    edge %b1 -> %1.x[1:2] ...
    edge %1 -> %h.x[0:1] bcast "abc->abc" ...

This is the paper's form (bias as a sum_relu input). It removes a family and an edge
family, and makes MLP graphs bipartite with no identities.

A sum read in slices along one axis (a recurrent cell's pre-activation: its state half
feeds a relu, its output half a readout) is first split into one sum family per slice,
when that lets a slice fuse; each input edge gets the matching slice of its map:

    %u = sum(x: 3) : f32[B, 26]                       %u_s0 = sum(x: 3) : f32[B, 16]
    edge %u -> %h.x[0:1] slice {axis = 1, start = 0,  %u_s16 = sum(x: 3) : f32[B, 10]
         stop = 16, step = 1} | bcast ...      ==>   edge %u_s0 -> %h.x[0:1] bcast "ab->abc"
    edge %u -> %o.x[0:1] slice {axis = 1, start = 16, edge %u_s16 -> %o.x[0:1] bcast "ab->abc"
         stop = 26, step = 1} | bcast ...            (then %u_s0 fuses into %h)
"""
from __future__ import annotations

import dataclasses

from ..ir.feasibility import BroadcastMap, Edge, FeasModule, Slice, make_map


def _is_elementwise_copy(e: Edge) -> bool:
    """The edge copies each producer node to the same consumer node, into one port slot."""
    if not isinstance(e.map, BroadcastMap):
        return False
    return e.stop - e.start == 1 and e.map.src_axes == tuple(range(e.type.rank - 1)) and e.type.shape[-1] == 1


@dataclasses.dataclass(frozen=True)
class FuseSumReluPass:
    """Splice each sum family into the port slot it feeds of a function of a sum.

    Applies when the sum's only outgoing edge family is an elementwise copy into one slot of
    a primitive declaring ``fuses_sum`` (sum_relu, leaky_relu, clip, and sum itself, which
    flattens chains: ((a + b) + c) + d becomes one 4-input sum -- what keeps a readout over
    several layers bipartite)."""

    name = "fuse-sum-relu"
    output_stage = "feasibility"
    input_level = "feasibility"

    def run(self, m: FeasModule) -> FeasModule:
        while True:
            match = self._find(m)
            if match is not None:
                m = self._fuse(m, *match)
                continue
            split = self._find_split(m)
            if split is None:
                return m
            m = _split(m, *split)

    def _fusable_into(self, m: FeasModule, e: Edge) -> bool:
        from ..primitives import get, names

        r = m.family(e.dst)
        return r.kind in names("function") and get(r.kind).fuses_sum and [p for p, _ in r.ports] == ["x"]

    def _find_split(self, m: FeasModule):
        """A sum family whose every outgoing edge starts by slicing one node axis (unit step),
        the slices disjoint or equal, one of them an elementwise copy into a function of a
        sum once sliced off: (family, axis, cut points)."""
        for s in m.families:
            if s.kind != "sum":
                continue
            outs = m.out_edges(s.name)
            cuts = [_leading_slice(e) for e in outs]
            if not outs or any(c is None for c in cuts) or len({c[0] for c in cuts}) != 1:
                continue
            axis = cuts[0][0]
            spans = sorted({(a, b) for _, a, b in cuts})
            if any(b1 > a2 for (_, b1), (a2, _) in zip(spans, spans[1:])):
                continue  # overlapping reads
            if not any(_is_elementwise_copy(_unsliced(e)) and self._fusable_into(m, e) for e in outs):
                continue
            points = sorted({0, s.type.shape[axis]} | {a for a, _ in spans} | {b for _, b in spans})
            return s, axis, points
        return None

    def _find(self, m: FeasModule):
        from ..primitives import get, names

        for s in m.families:
            if s.kind != "sum":
                continue
            outs = m.out_edges(s.name)
            if len(outs) != 1 or not _is_elementwise_copy(outs[0]):
                continue
            e = outs[0]
            r = m.family(e.dst)
            if r.kind in names("function") and get(r.kind).fuses_sum and [p for p, _ in r.ports] == ["x"]:
                return s, r, e
        return None

    def _fuse(self, m, s, r, link):
        n_s = s.port_length("x")
        grow = n_s - 1
        fused = dataclasses.replace(r, ports=(("x", r.port_length("x") + grow),))
        fams = tuple(fused if f.name == r.name else f for f in m.families if f.name != s.name)
        edges = []
        for e in m.edges:
            if e == link:
                continue
            if e.dst == s.name:  # the sum's inputs take its slot in r
                edges.append(dataclasses.replace(e, dst=r.name, start=e.start + link.start, stop=e.stop + link.start))
            elif e.dst == r.name and e.start >= link.stop:  # later slots shift
                edges.append(dataclasses.replace(e, start=e.start + grow, stop=e.stop + grow))
            else:
                edges.append(e)
        return m.replace(families=fams, edges=tuple(edges))


def _leading_slice(e: Edge):
    """(axis, start, stop) if the edge's map starts by slicing one axis with unit step."""
    if not e.map.steps:
        return None
    first = e.map.steps[0]
    if not isinstance(first, Slice) or first.step != 1:
        return None
    return first.axis, first.start, first.stop


def _unsliced(e: Edge) -> Edge:
    return dataclasses.replace(e, map=make_map(e.map.steps[1:], e.map.final))


def _slice_edge(e: Edge, axis: int, start: int, stop: int) -> Edge:
    """The edge restricted to consumer nodes start:stop along node axis ``axis``: its map
    followed by that slice (a slice of the pre-broadcast array where the axis comes from the
    source, nothing where the broadcast repeats along it)."""
    shape = list(e.type.shape)
    shape[axis] = stop - start
    final, steps = e.map.final, tuple(e.map.steps)
    if axis in final.src_axes:
        steps += (Slice(final.src_axes.index(axis), start, stop, 1),)
    return dataclasses.replace(e, map=make_map(steps, final), type=e.type.with_shape(shape))


def _split(m: FeasModule, s, axis: int, points: list[int]) -> FeasModule:
    """Replace sum family s by one sum family per span between consecutive cut points."""
    used = {f.name for f in m.families}
    pieces = []
    for a, b in zip(points, points[1:]):
        name = f"{s.name}_s{a}"
        while name in used:
            name += "_"
        used.add(name)
        shape = list(s.type.shape)
        shape[axis] = b - a
        pieces.append((dataclasses.replace(s, name=name, type=s.type.with_shape(shape)), a, b))
    fams = []
    for f in m.families:
        fams += [p for p, _, _ in pieces] if f.name == s.name else [f]
    edges = []
    for e in m.edges:
        if e.dst == s.name:
            edges += [dataclasses.replace(_slice_edge(e, axis, a, b), dst=p.name) for p, a, b in pieces]
        elif e.src == s.name:  # spans are disjoint or equal, so each is exactly one piece
            _, a0, b0 = _leading_slice(e)
            piece = next(p for p, a, b in pieces if (a, b) == (a0, b0))
            edges.append(dataclasses.replace(_unsliced(e), src=piece.name))
        else:
            edges.append(e)
    return m.replace(families=tuple(fams), edges=tuple(edges))

