"""scalarize: tensor IR -> feasibility IR, adding the batch axis.

Each tensor op becomes one node family over its batched index space; each operand becomes
one edge family with a broadcast map. Per-sample values gain a leading batch axis of
length ``batch``; parameters are shared across it.

    %0 = matmul(%x, %W1) : f32[128]          %0 = dot(a: 784, b: 784) : f32[256, 128]
                                      ==>    edge %x -> %0.a[0:784] bcast "ac->abc" : f32[256, 128, 784]
                                             edge %W1 -> %0.b[0:784] bcast "cb->abc" : f32[256, 128, 784]
    %1 = add(%0, %b1) : f32[128]             %1 = sum(x: 2) : f32[256, 128]
    %h = relu(%1) : f32[128]                 %h = sum_relu(x: 1) : f32[256, 128]
    loss(%logits) {kind = ...}               %target = target(logits: 10) {kind = ...} : f32[256]

``fuse-sum-relu`` then merges %1 into %h (the paper's form).
"""
from __future__ import annotations

import dataclasses

from ..errors import FeascompError
from ..ir.feasibility import BroadcastMap, Edge, Expand, Family, FeasModule, make_map
from ..ir.tensor import Op, TensorModule
from ..ir.types import TensorType
from ..ops import opdef


@dataclasses.dataclass(frozen=True)
class ScalarizePass:
    """Tensor IR to node and edge families, batch axis added."""

    name = "scalarize"
    batch: int = 1
    output_stage = "feasibility"
    input_level = "tensor"

    def run(self, m: TensorModule) -> FeasModule:
        return _Scalarize(self.batch, m).run()


class _Scalarize:
    """The pass's context: each op's scalarize rule (feascomp/ops) makes its families,
    edges or view through ``family``, ``connect``, ``view``, ``lead``, ``aligned``,
    ``expand`` and ``defer``."""

    def __init__(self, batch: int, m: TensorModule):
        if batch < 1:
            raise FeascompError(f"batch size must be positive, got {batch}")
        self.B, self.m = batch, m
        self.fams: dict[str, Family] = {}
        self.edges: list[Edge] = []
        self.batched: dict[str, bool] = {}
        self.types = m.types()
        # Views (reshape, transpose, slice) make no family: value -> (producer family, steps
        # on the producer's batched array, batched). Values that make a family only when
        # something views them (a concat consumed along a dot's contraction stays virtual:
        # port slices) are in ``virtual`` and ``pending``.
        self.views: dict[str, tuple[str, tuple, bool]] = {}
        self.virtual: dict[str, Op] = {}
        self.pending: dict[str, object] = {}

    def run(self) -> FeasModule:
        for op in self.m.ops:
            d = opdef(op.opname)
            if d is None:
                raise FeascompError(f"scalarize does not know tensor op {op.opname!r}", op.loc)
            d.scalarize(self, op)
        return FeasModule(self.m.name, tuple(self.fams.values()), tuple(self.edges), (("batch", self.B),))

    def family(self, op: Op, kind: str, ports=(), attrs=(), name=None) -> Family:
        shape = (self.B,) + op.type.shape if kind != "param" else op.type.shape
        f = Family(name or op.result, kind, op.type.with_shape(shape), tuple(ports), tuple(attrs), op.loc)
        self.fams[f.name] = f
        self.batched[f.name] = kind != "param"
        return f

    def defer(self, v: str, make) -> None:
        """``make()`` builds v's family the first time something views v."""
        self.pending[v] = make

    def view(self, v: str) -> tuple[str, tuple, bool]:
        if v in self.pending:
            self.pending.pop(v)()
        return self.views.get(v, (v, (), self.batched.get(v, False)))

    def lead(self, v: str) -> tuple[int, ...]:
        """The batch prefix of value v's array: (B,) if it varies per sample."""
        return (self.B,) if self.view(v)[2] else ()

    def connect(self, src: str, dst: Family, port: str, start: int, stop: int, value_axes: list[int], op: Op, steps=()):
        """An edge from the family holding value ``src`` into dst.port[start:stop].

        ``value_axes[i]`` is the edge axis that axis i of the value (after ``steps``, per
        sample) runs along; the batch axis, if the value has one, runs along edge axis 0.
        """
        base, vsteps, batched = self.view(src)
        n = dst.port_length(port)
        shape = dst.type.shape + ((stop - start,) if n else ())
        axes = ([0] if batched else []) + value_axes
        producer = self.fams[base]
        emap = make_map(tuple(vsteps) + tuple(steps), BroadcastMap(tuple(axes)))
        have = emap.shapes(producer.type.shape)[-1] if vsteps or steps else producer.type.shape
        if isinstance(have, str):
            raise FeascompError(f"cannot scalarize: {have}", op.loc)
        for j, a in enumerate(axes):
            if have[j] != shape[a]:
                raise FeascompError(
                    f"cannot scalarize: axis {j} of %{src} ({have[j]}) would have to "
                    f"broadcast to {shape[a]}; size-1 broadcasting is not supported yet",
                    op.loc,
                )
        self.edges.append(Edge(base, dst.name, port, start, stop, emap, TensorType(producer.type.dtype, shape)))

    def expand(self, v: str, op: Op) -> tuple:
        """Steps repeating v's length-1 axes to op's shape (right-aligned broadcasting)."""
        tv, ro = self.types[v], op.type.rank
        want = op.type.shape[ro - tv.rank :]
        if want == tv.shape:
            return ()
        lead = self.lead(v)
        return (Expand(lead + want, tuple(range(len(lead) + tv.rank))),)

    def aligned(self, v: str, op: Op) -> list[int]:
        """Right-aligned (NumPy) broadcasting of operand v into op's per-sample shape."""
        rv, ro = self.types[v].rank, op.type.rank
        return [1 + ro - rv + i for i in range(rv)]
