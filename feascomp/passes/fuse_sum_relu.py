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

from ..ir.feasibility import Edge, FeasModule


def _is_elementwise_copy(e: Edge) -> bool:
    """The edge copies each producer node to the same consumer node (port length 1)."""
    return e.map.src_axes == tuple(range(len(e.map.src_axes))) and e.type.shape[-1] == 1 and len(e.map.src_axes) == e.type.rank - 1


@dataclasses.dataclass(frozen=True)
class FuseSumReluPass:
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

        for relu in m.families:
            if relu.kind not in names("function") or not get(relu.kind).fuses_sum or relu.ports != (("x", 1),):
                continue
            (e,) = m.in_edges(relu.name)
            src = m.family(e.src)
            if src.kind == "sum" and m.out_edges(src.name) == [e] and _is_elementwise_copy(e):
                return src, relu, e
        return None

    def _fuse(self, m, s, relu, link):
        fused = dataclasses.replace(relu, ports=s.ports, loc=relu.loc)
        fams = tuple(fused if f.name == relu.name else f for f in m.families if f.name != s.name)
        edges = []
        for e in m.edges:
            if e == link:
                continue
            edges.append(dataclasses.replace(e, dst=relu.name) if e.dst == s.name else e)
        return m.replace(families=fams, edges=tuple(edges))
