"""fuse-sum-relu: a sum family feeding only a one-input function of a sum (sum_relu, and
any primitive declaring ``fuses_sum``: leaky_relu, clip, sum) becomes one family of it.

    %1 = sum(x: 2) : f32[256, 128]                %h = sum_relu(x: 2) : f32[256, 128]
    %h = sum_relu(x: 1) : f32[256, 128]   ==>     edge %0 -> %h.x[0:1] ...
    edge %0 -> %1.x[0:1] ...                      edge %b1 -> %h.x[1:2] ...
    edge %b1 -> %1.x[1:2] ...
    edge %1 -> %h.x[0:1] bcast "abc->abc" ...

This is the paper's form (bias as a sum_relu input). It removes a family and an edge
family, and makes MLP graphs bipartite with no identities.
"""
from __future__ import annotations

import dataclasses

from ..ir.feasibility import BroadcastMap, Edge, FeasModule


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
            if match is None:
                return m
            m = self._fuse(m, *match)

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
