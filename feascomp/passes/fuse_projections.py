"""fuse-projections: group the function families of one primitive and one colour into one
batched projection.

    %h1 = sum_relu(x: 2) {colour = 0, ...}          ...
    %h2 = sum_relu(x: 2) {colour = 0, ...}   ==>    group @sum_relu_c0 {colour = 0} sum_relu(%h1, %h2)

A group's members are projected by one call of the primitive over their nodes stacked
together (the backend flattens each member's node axes and concatenates). Members must
agree on the primitive's options and on their port lengths, except where the primitive
declares ``zero_padding`` (dot: zero inputs in both vectors leave the rest of the
projection unchanged and stay zero), whose shorter ports are padded with zeros. Families
that cannot share a group get groups of their own; every function family with outgoing
edges is in exactly one group. Families without outgoing edges are never projected (their
output is free) and are left out.
"""
from __future__ import annotations

import dataclasses

from ..ir.feasibility import FeasModule, Group


@dataclasses.dataclass(frozen=True)
class FuseProjectionsPass:
    """Group families of one primitive and one colour into batched projections."""

    name = "fuse-projections"
    output_stage = "plan"
    input_level = "feasibility"
    pad: bool = True  # allow zero padding for primitives that declare it (dot)

    def run(self, m: FeasModule) -> FeasModule:
        from ..errors import FeascompError, Loc
        from ..primitives import get

        if any(f.attr("colour") is None for f in m.families):
            raise FeascompError("fuse-projections needs a coloured plan; run color first", Loc(m.name))
        groups: dict[tuple, list[str]] = {}
        for f in m.families:
            if not f.is_function or not m.out_edges(f.name):
                continue
            prim = get(f.kind)
            lengths = "padded" if (self.pad and prim.zero_padding) else f.ports
            key = (f.kind, f.attr("colour"), tuple(sorted(f.options().items())), lengths)
            groups.setdefault(key, []).append(f.name)
        out, taken = [], set()
        for (kind, colour, _, _), members in groups.items():
            name = f"{kind}_c{colour}"
            while name in taken:
                name += "_"
            taken.add(name)
            out.append(Group(name, colour, kind, tuple(members)))
        return m.replace(groups=tuple(out))
