"""A folded product family's copies of its other operand, stored factored: one shared
array plus a multiple of the input per node (:class:`FactoredCopies`).

Under DR and DM a product family whose port is fed by the input projects with that port
held at the input (storage.FoldedInputs): node i's constraint is the hyperplane
``<x_i, v_i> = y_i``, whose projection moves the copy v_i along x_i only,
``v_i = v0_i - mu_i x_i``. Every other write of the copies is the producer's: its value
through the edge map, the same (a broadcast of one array) at every node. The algorithms
combine states linearly with scalar coefficients. So every state's copies are

    v_i = C + alpha_i x_i

with C shaped like what the edge's map broadcasts (a dense layer's W, a conv's reshaped
kernel) and one coefficient alpha_i per node: a dense layer's [batch, units] instead of
its [batch, units, fan_in] copies; a 3x3 conv's [B, H, W, C] instead of [B, H, W, C, 9].
The representation is linear in (C, alpha), so the algorithms' arithmetic applies to it
key by key. What the projections read are contractions:

- the node's projection: ``<x_i, v_i> = <x_i, C> + alpha_i |x_i|²``, the family's forward
  contraction of the input with C (a matmul; a conv) -- C is unchanged, alpha_i -= mu_i;
- the producer's consensus: ``sum_i map^T(v_i) = count * C + sum_i alpha_i x_i``, the
  contraction of alpha with the input (the matmul a gradient would take);
- the step residual: ``|dv|² = count |dC|² + 2 sum_i dalpha_i <x_i, dC> + sum_i dalpha_i² |x_i|²``.

These are the folded family's iterates in exact arithmetic (tests/test_factored.py compares
them with the copies stored as arrays, in float64); a step costs two contractions of the
layer's size, about what a forward and a backward pass of it cost, where the stored copies
cost passes over [batch, units, fan_in]. Chosen where it applies by the materialized
lowering under DR and DM (``factor_copies``, on by default; ``--no-factor-copies``), except
with ``--warm-start`` (a carried alpha would multiply the next batch's inputs), per-family
monitoring (its distances read edges), and 16-bit edge storage.
"""
from __future__ import annotations

import math

from ..ir.feasibility import BroadcastMap, Edge
from .analysis import FamilyInfo, PlanAnalysis
from .storage import InputsNotStored, Storage

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class FactoredCopies(InputsNotStored, Storage):
    """A dot family with one port held at the input (``fixed``) and the other's copies as
    ``C + alpha x`` (module docstring). State keys ``NAME#shared`` (C) and ``NAME#coef``
    (alpha, shaped like the nodes)."""

    kind = "input folded, copies factored"
    stacks = False  # projected by its own rule

    def __init__(self, analysis: PlanAnalysis, info: FamilyInfo, fixed: tuple[bool, ...]):
        super().__init__(analysis, info)
        self.fixed = fixed
        (self.input,) = [es[0] for (_, _, es), f in zip(info.in_ports, fixed) if f]
        (self.edge,) = [es[0] for (_, _, es), f in zip(info.in_ports, fixed) if not f]
        rank = len(self.edge.type.shape)
        self.spec_x = "".join(LETTERS[a] for a in self.input.map.final.src_axes)
        self.spec_c = "".join(LETTERS[a] for a in self.edge.map.final.src_axes)
        self.out = LETTERS[: rank - 1]  # the nodes' axes
        self.norm_axes = "".join(a for a in self.out if a in self.spec_x)  # |x_i|² varies along these
        self.nodes = tuple(self.edge.type.shape[:-1])
        self.shared_shape = tuple(self.edge.type.shape[a] for a in self.edge.map.final.src_axes)
        # how many copies of each entry of C the broadcast makes
        self.count = math.prod(n for a, n in enumerate(self.edge.type.shape) if a not in self.edge.map.final.src_axes)
        self.shared = f"{info.name}#shared"
        self.coef = f"{info.name}#coef"
        # data keys (per_update): what the input's edges broadcast, and |x_i|² per node
        self.input_key = f"__input__:{info.name}"
        self.norms_key = f"__norms__:{info.name}"

    # the state -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return [self.shared, self.coef]

    def batch_axis(self, key: str) -> int | None:
        if key == self.coef:
            return 0 if self.info.name in self.analysis.batched else None
        final = self.edge.map.final
        return 0 if self.edge.src in self.analysis.batched and final.src_axes[0] == 0 else None

    def unit_axis(self, key: str) -> int | None:
        return super().unit_axis(key) if key == self.coef else None

    def nbytes(self, itemsize: int) -> int:
        return (math.prod(self.shared_shape) + math.prod(self.nodes)) * itemsize

    def device_nbytes(self, itemsize: int, data: int) -> int:
        coef = math.prod(self.nodes) * itemsize
        split = self.info.name in self.analysis.batched and data > 1
        return math.prod(self.shared_shape) * itemsize + (coef // data if split else coef)

    def init(self, xp, vals: dict, data: dict, z: dict, spare: dict | None = None) -> None:
        c = self.edge.map.apply_steps(xp, vals[self.edge.src], data)
        z[self.shared] = c
        z[self.coef] = xp.zeros(self.nodes, c.dtype)

    # the contractions ------------------------------------------------------------------------
    def per_update(self, xp, data: dict) -> dict:
        """What the input's edges broadcast (a conv's patches of x) and |x_i|² per node
        (shaped to broadcast against the nodes): once per update."""
        sx = self.input.map.apply_steps(xp, data[self.input.src], data)
        n = xp.einsum(f"{self.spec_x},{self.spec_x}->{self.norm_axes}", sx, sx)
        norms = xp.reshape(n, tuple(s if a in self.norm_axes else 1 for a, s in zip(self.out, self.nodes)))
        return {self.input_key: sx, self.norms_key: norms}

    def _dots(self, xp, sx, c):
        """<x_i, C> per node: the family's forward contraction of the input with C."""
        return xp.einsum(f"{self.spec_x},{self.spec_c}->{self.out}", sx, c)

    # reading and writing -----------------------------------------------------------------
    def read(self, xp, e: Edge, z: dict, data: dict):
        if e is not self.edge:
            return super().read(xp, e, z, data)
        x = self.input.map.apply(xp, data[self.input.src], self.input.type.shape, data)
        c = self.edge.map.final.apply(xp, z[self.shared], e.type.shape, data)
        return c + z[self.coef][..., None] * x

    def transpose(self, xp, e: Edge, z: dict, data: dict):
        sx = data[self.input_key]
        c = z[self.shared]
        total = c * xp.asarray(self.count, c.dtype) + xp.einsum(f"{self.out},{self.spec_x}->{self.spec_c}",
                                                                 z[self.coef], sx)
        return e.map.transpose_steps(xp, total, self.analysis.info[e.src].family.type.shape, data)

    def write(self, xp, e: Edge, value, new: dict, data: dict, slot=0) -> None:
        if e is self.edge:
            c = e.map.apply_steps(xp, value, data)
            new[self.shared] = c
            new[self.coef] = xp.zeros(self.nodes, c.dtype)

    def put(self, xp, e: Edge, part, new: dict) -> None:
        if e is self.edge:
            raise AssertionError("FactoredCopies projects its family itself: its copies are not written whole")

    def project(self, program, xp, z: dict, new: dict, data: dict, slot=0) -> None:
        """The hyperplane projection of every node (primitives/dot.py, ``fixed_dot``):
        mu = (<x, v0> - y0) / (|x|² + 1/w), v = v0 - mu x, y = y0 + mu / w."""
        ybar, w = program.output_args(xp, self.info, z, data)
        sx = data[self.input_key]
        norms = data[self.norms_key]
        alpha = z[self.coef]
        mu = (self._dots(xp, sx, z[self.shared]) + alpha * norms - ybar) / (norms + 1 / w)
        new[self.coef] = alpha - mu
        program.write_out(xp, self.info, ybar + mu / w, new, data, slot)

    def distance_sq(self, xp, a: dict, b: dict, data: dict):
        if not all(k in a and k in b for k in self.keys()):
            return 0.0
        sx = data[self.input_key]
        dc = a[self.shared] - b[self.shared]
        da = a[self.coef] - b[self.coef]
        return (xp.asarray(self.count, dc.dtype) * xp.sum(dc * dc) + 2 * xp.sum(da * self._dots(xp, sx, dc))
                + xp.sum(da * da * data[self.norms_key]))


def factorable(analysis: PlanAnalysis, info: FamilyInfo, fixed: tuple[bool, ...] | None) -> FactoredCopies | None:
    """``info``'s family as :class:`FactoredCopies` where it qualifies: a dot whose nodes
    all have outgoing edges, one port held at the input and the other not, each port one
    edge whose map ends in a broadcast that varies along the port axis, and whose nodes'
    axes the two operands span (else the product form broadcasts an axis)."""
    f = info.family
    if fixed is None or f.kind != "dot" or sorted(fixed) != [False, True] or not info.out or info.has_unused:
        return None
    if f.type.dtype not in ("f32", "f64") or any(len(es) != 1 or n < 1 for _, n, es in info.in_ports):
        return None
    edges = [es[0] for _, _, es in info.in_ports]
    if not all(isinstance(e.map.final, BroadcastMap) for e in edges):
        return None
    rank = len(edges[0].type.shape)
    if rank > len(LETTERS) or any(rank - 1 not in e.map.final.src_axes for e in edges):
        return None
    if analysis.info[edges[fixed.index(False)].src].family.type.dtype not in ("f32", "f64"):
        return None
    spans = set(edges[0].map.final.src_axes) | set(edges[1].map.final.src_axes)
    if not set(range(rank - 1)) <= spans:
        return None
    return FactoredCopies(analysis, info, fixed)
