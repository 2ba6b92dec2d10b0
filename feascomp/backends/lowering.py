"""Lowerings: a coloured plan to a :class:`~.program.Program`, by choosing one storage
strategy (backends/storage.py) per family.

A lowering is registered by name in :data:`LOWERINGS` (``--lowering NAME``,
``feascomp.compile(lowering=NAME)``). It says what it needs of the options
(:meth:`Lowering.refusals`, which options.CompileOptions.resolve reports as the
refusal's reason), how many values a producer keeps per update (:meth:`Lowering.slots`),
and which strategy stores each family (:meth:`Lowering.storage`). The Program that runs
the projections, and the algorithms, are the same for every lowering; a native step
(backends/fused.py) is looked up by algorithm type and lowering name.

- ``materialized``: every edge one array (the paper's representation); the input's edges
  elided under AP, folded into their product nodes under DR and DM, where the folded
  layer's other operand's copies are stored factored (backends/factored.py); dense
  layers' edges with carried sums under the native DR step.
- ``collapsed``: dense layers keep their producers' values and per-node coefficients
  instead of their edges (backends/collapsed.py); the rest as materialized.

Inside a lowered step XLA's own form of the dot projection is faster than its native
kernel (feascomp/kernels): the inputs arrive through maps and the algorithm's arithmetic,
which XLA fuses into the projection's passes and a custom call needs materialized
(measured, 784-128-10, K = 10: AP 56 against 77 ms per step, DR equal;
docs/performance.md). So both lowerings ask for ``kernel = "xla"`` on dot and mul
(:attr:`Lowering.kernels`), unless a family names its own. max and min keep their native
kernel: XLA's form takes TOP + 1 passes over the rows where the kernel takes one (the
1x32 CNN's global max-pool: docs/performance.md).
"""
from __future__ import annotations

import math

from . import fused
from . import mesh as meshes
from .analysis import FamilyInfo, PlanAnalysis
from .collapsed import SlotPlan, collapsible
from .factored import factorable
from .lowered import np_dtype
from .program import Program
from .storage import ElidedInputs, FoldedInputs, Storage, fixed_ports


class Lowering:
    """The materialized lowering, and the interface a lowering implements."""

    name = "materialized"
    # by primitive: the implementation its projection runs here (option ``kernel``)
    kernels = {"dot": "xla", "mul": "xla"}

    def refusals(self, algorithm, options, colours: int) -> list[str]:
        """What this lowering needs that ``options`` (with ``algorithm``, on a plan of
        ``colours`` colours) do not give: phrases completing "the NAME lowering needs ..."."""
        return []

    def slots(self, resolved) -> SlotPlan | None:
        """Which slot each projection writes, or None: one place per value."""
        return None

    def storage(self, analysis: PlanAnalysis, info: FamilyInfo, resolved, slots) -> Storage:
        """The strategy that stores ``info``'s in-edges."""
        fixed = fixed_ports(analysis, info) if resolved.fold_inputs else None
        if fixed is not None and resolved.factor_copies:
            found = factorable(analysis, info, fixed)
            if found is not None:
                return found
        if resolved.fuse_order is not None and resolved.schedule == "colours" and len(analysis.classes) == 2:
            store = None if resolved.edge_dtype in ("float32", "float64") else np_dtype(resolved.edge_dtype)
            found = fused.fusable(analysis, info, resolved.fuse_order, meshes.build(resolved.mesh), store, fixed)
            if found is not None:
                return found
        if fixed is not None:
            return FoldedInputs(analysis, info, fixed)
        if resolved.elide_inputs and any(analysis.is_const(e.src) for e in info.in_edges):
            return ElidedInputs(analysis, info)
        return Storage(analysis, info)

    def lower(self, plan, resolved, options) -> Program:
        kernels = dict(self.kernels)
        # over several devices XLA partitions the step, and would replicate a custom call
        # (the whole batch's rows gathered onto each device): max and min in XLA's form, and
        # no fusion boundaries (Program._kept)
        one_device = math.prod(n for _, n in resolved.mesh) == 1
        if not one_device:
            kernels.update(max="xla", min="xla")
        analysis = PlanAnalysis(plan, loss_options=dict(options.loss_options), schedule=resolved.schedule,
                                kernels=kernels)
        model = meshes.size(resolved.mesh, "model")
        if model > 1:  # the model axis splits dense layers' units: some must divide
            units = {f.name: f.type.shape[1] for f in plan.families
                     if f.kind == "dot" and len(f.type.shape) == 2 and f.name in analysis.batched}
            if not any(m % model == 0 for m in units.values()):
                from ..errors import FeascompError

                found = ", ".join(f"%{n}: {m}" for n, m in units.items()) or "none"
                raise FeascompError(f"the mesh's model axis ({model} devices) divides no dense layer's units (the "
                                    f"dense layers' units: {found}); use a model axis that divides one, or data only")
        slots = self.slots(resolved)
        storage = {name: self.storage(analysis, info, resolved, slots) for name, info in analysis.info.items()}
        if any(isinstance(s, fused.FusedSums) for s in storage.values()) and not fused.available():
            # the native kernels do not build here: the plain edges throughout
            storage = {n: Storage(analysis, s.info) if isinstance(s, fused.FusedSums) else s for n, s in storage.items()}
        return Program(analysis, storage, lowering=self.name, weighted=options.weighted, slots=slots,
                       mesh_spec=resolved.mesh, boundaries=one_device and fused.available())


Materialized = Lowering


class Collapsed(Lowering):
    name = "collapsed"

    def refusals(self, algorithm, options, colours: int) -> list[str]:
        return [w for w, bad in (("--algorithm ap, dr or dm", algorithm.uses_layers),
                                 ("a cold start (no --warm-start)", options.warm_start),
                                 ("no per-family monitoring", options.monitor), ("the jax backend", options.backend != "jax"),
                                 ("a two-colour plan", colours != 2)) if bad]

    def slots(self, resolved) -> SlotPlan:
        return SlotPlan(resolved.algorithm.projections, resolved.steps)

    def storage(self, analysis, info, resolved, slots) -> Storage:
        found = collapsible(analysis, info, slots, resolved.elide_inputs)
        return found if found is not None else super().storage(analysis, info, resolved, slots)


LOWERINGS: dict[str, Lowering] = {"materialized": Materialized(), "collapsed": Collapsed()}


def plain(plan, *, schedule: str = "colours", weighted: bool = False) -> Program:
    """``plan`` with every edge stored as an array, and nothing else chosen (no elision,
    no native step): the reference form of the materialized lowering."""
    analysis = PlanAnalysis(plan, schedule=schedule, kernels=Lowering.kernels)
    storage = {name: Storage(analysis, info) for name, info in analysis.info.items()}
    return Program(analysis, storage, lowering=Lowering.name, weighted=weighted)
