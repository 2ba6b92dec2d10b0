"""How a family's in-edges live in the solver state: one storage strategy per family.

The state of a lowered plan is a dict of arrays. Every edge belongs to its consumer, so
each family's :class:`Storage` owns the state keys of its in-edges and is the only code
that reads or writes them: the forward-pass initialisation, a port's value, an edge's
contribution to its producer's sum (map^T), a producer writing its new value, the
family's own projection writing its ports, the algorithms' linear combinations, the
distance between two states, and the bytes the family takes. A lowering
(backends/lowering.py) is a choice of storage per family; the :class:`~.program.Program`
that runs the projections is the same for all of them.

Strategies in the package:

- :class:`Edges`: every in-edge one array shaped like the consumer's port slice (the
  paper's representation);
- :class:`ElidedInputs`: the input's edges not stored under AP (below);
- :class:`FoldedInputs`: under DR and DM, a product node with the input as an operand
  projects with it held fixed, and the input's edges are not stored (below);
- ``FactoredCopies`` (backends/factored.py): a folded family's copies of its other
  operand as one shared array plus a multiple of the input per node;
- ``FusedSums`` (backends/fused.py): edges, plus the sums the native DR step carries;
- ``CollapsedSlots`` (backends/collapsed.py): a dense layer's producers' values and
  per-node coefficients instead of its edges.

Input edges under AP (:class:`ElidedInputs`) are not stored. A const's projection writes
its edges without reading them, and under AP their only other reader -- the consumer, in
the other colour -- always finds them just written (each step is P1(P0(z)) and every
edge joins the two colours). So the consumer reads the input's map and its result on
those edges is dropped: the same iterates and parameters, without the traffic of the
largest edge family of a first dense layer (half the 784-128-10 MLP's state). The step
residual is then |P1(P0 z) - P0 z| over the stored edges. Not for DR or DM (their
iterates combine projections, so input edges are free variables), warm starts (stored
input edges would hold the previous batch) or monitoring (per-family distances read
every edge); options.CompileOptions.resolve decides.
"""
from __future__ import annotations

import math

from ..ir.feasibility import Edge
from .analysis import FamilyInfo, PlanAnalysis


class Storage:
    """The plain strategy (:class:`Edges`) and the interface every strategy implements.

    ``stacks``: the family may be projected in one call with its fuse-projections group;
    ``tracks_writes``: states must record which projections wrote them
    (program.TrackedState); ``project``: None, or ``project(program, xp, z, new, data,
    slot)`` when the strategy projects its family itself (the program's generic
    projection reads the ports through :meth:`read` otherwise)."""

    kind = "edges"
    stacks = True
    tracks_writes = False
    project = None

    def __init__(self, analysis: PlanAnalysis, info: FamilyInfo):
        self.analysis = analysis
        self.info = info
        self.edges: list[Edge] = info.in_edges

    def stored(self, e: Edge) -> bool:
        return True

    def keys(self) -> list[str]:
        return [e.key for e in self.edges if self.stored(e)]

    def state_keys(self) -> list[str]:
        """Every key this strategy keeps in the state between steps."""
        return self.keys()

    def batch_axis(self, key: str) -> int | None:
        """The axis of state array ``key`` that indexes the batch (a mesh's data axis
        splits it), or None: the same on every device."""
        return 0 if self.info.name in self.analysis.batched else None

    def unit_axis(self, key: str) -> int | None:
        """The axis a mesh's model axis may split: a dense layer's units (its edges
        [batch, units, fan_in]), or None."""
        f = self.info.family
        return 1 if f.kind == "dot" and len(f.type.shape) == 2 and self.info.name in self.analysis.batched else None

    def per_update(self, xp, data: dict) -> dict:
        """Arrays derived from the batch alone that this strategy's projections read (data
        keys): computed once per update (Program.with_degrees), not in every step."""
        return {}

    def init(self, xp, vals: dict, data: dict, z: dict, spare: dict | None = None) -> None:
        """Write the forward pass's copies (every edge its producer's value) into ``z``.
        ``spare``: buffers of the previous update this strategy may write into."""
        for e in self.edges:
            if self.stored(e):
                z[e.key] = e.map.apply(xp, vals[e.src], e.type.shape, data)

    def read(self, xp, e: Edge, z: dict, data: dict):
        """Edge e's value in state z (shaped like its port slice)."""
        return z[e.key]

    def transpose(self, xp, e: Edge, z: dict, data: dict):
        """map_e^T of edge e's value: its contribution to its producer's sum."""
        return e.map.transpose(xp, z[e.key], self.analysis.info[e.src].family.type.shape, data)

    def write(self, xp, e: Edge, value, new: dict, data: dict, slot=0) -> None:
        """The producer's projection set its value: edge e becomes its copy through the map.
        ``slot``: which of the producer's writes this is (collapsed.SlotPlan)."""
        new[e.key] = e.map.apply(xp, value, e.type.shape, data)

    def put(self, xp, e: Edge, part, new: dict) -> None:
        """This family's projection set edge e's value to ``part``."""
        new[e.key] = part

    def after_write(self, xp, new: dict, data: dict, projected: set, slot) -> None:
        """Called after a class ``projected`` wrote its edges into ``new``."""

    def combine(self, xp, fn, states: list, out: dict, data: dict) -> None:
        """``fn`` (linear) of the states' values of this family's keys, into ``out``."""
        for k in self.keys():
            if k in states[0]:
                out[k] = fn(*(s[k] for s in states))

    def distance_sq(self, xp, a: dict, b: dict, data: dict):
        """|a - b|² over this family's edges as represented."""
        total = 0.0
        for k in self.keys():
            if k in a and k in b:
                total = total + xp.sum((a[k] - b[k]) ** 2)
        return total

    def nbytes(self, itemsize: int) -> int:
        return sum(math.prod(e.type.shape) for e in self.edges if self.stored(e)) * itemsize

    def device_nbytes(self, itemsize: int, data: int) -> int:
        """What one device holds when a mesh's data axis splits the batch over ``data``."""
        split = self.info.name in self.analysis.batched and data > 1
        return self.nbytes(itemsize) // data if split else self.nbytes(itemsize)


Edges = Storage


class InputsNotStored:
    """A mixin for a strategy whose edges from the input are not stored: read as the
    input's map, and whatever is written on them dropped (before the strategy it mixes
    into, which stores the rest)."""

    def stored(self, e: Edge) -> bool:
        return not self.analysis.is_const(e.src)

    def read(self, xp, e: Edge, z: dict, data: dict):
        if not self.stored(e):
            return e.map.apply(xp, data[e.src], e.type.shape, data)
        return super().read(xp, e, z, data)

    def write(self, xp, e: Edge, value, new: dict, data: dict, slot=0) -> None:
        if self.stored(e):
            super().write(xp, e, value, new, data, slot)

    def put(self, xp, e: Edge, part, new: dict) -> None:
        if self.stored(e):
            super().put(xp, e, part, new)


class ElidedInputs(InputsNotStored, Storage):
    """Edges, except that those from the input are not stored (module docstring)."""

    kind = "edges, input elided"


class FoldedInputs(ElidedInputs):
    """A product family whose ports fed by constants alone are held at the constants'
    values in its projection (module docstring): those edges are not stored, read as the
    input's map, and the family projects itself through its primitive's ``fixed_rule``."""

    kind = "edges, input folded"
    stacks = False  # projected by its own rule, not with a fuse-projections group

    def __init__(self, analysis: PlanAnalysis, info: FamilyInfo, fixed: tuple[bool, ...]):
        super().__init__(analysis, info)
        self.fixed = fixed

    def project(self, program, xp, z: dict, new: dict, data: dict, slot=0) -> None:
        project_folded(self, program, xp, z, new, data, slot)


def project_folded(storage, program, xp, z: dict, new: dict, data: dict, slot=0) -> None:
    """A folded family's projection (its ports flagged in ``storage.fixed`` held at the
    input, through the primitive's ``fixed_rule``), written into ``new``: the generic
    path of FoldedInputs and of fused.FoldedSums outside the native step."""
    info = storage.info
    ins, ybar, w = program.read_function(xp, info, z, data)
    xs, y = info.prim.project_fixed(ins, storage.fixed, ybar, w)
    for (_, n, es), x, f in zip(info.in_ports, xs, storage.fixed):
        if not f:
            program.put(xp, es, n, x, new)
    program.write_out(xp, info, y, new, data, slot)


def fixed_ports(analysis: PlanAnalysis, info: FamilyInfo) -> tuple[bool, ...] | None:
    """Which of ``info``'s ports are fed by constants alone, if its primitive can hold them
    fixed (a ``fixed_rule``) and one is; else None."""
    prim = info.prim
    if info.family.kind in ("const", "param", "target") or prim is None or getattr(prim, "fixed_rule", None) is None:
        return None
    fixed = tuple(bool(es) and all(analysis.is_const(e.src) for e in es) for _, _, es in info.in_ports)
    return fixed if any(fixed) else None
