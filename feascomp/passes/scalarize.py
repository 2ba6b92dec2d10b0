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
from ..ir.feasibility import BroadcastMap, Edge, Family, FeasModule
from ..ir.tensor import Op, TensorModule
from ..ir.types import TensorType


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
    def __init__(self, batch: int, m: TensorModule):
        if batch < 1:
            raise FeascompError(f"batch size must be positive, got {batch}")
        self.B, self.m = batch, m
        self.fams: dict[str, Family] = {}
        self.edges: list[Edge] = []
        self.batched: dict[str, bool] = {}
        self.types = m.types()

    def run(self) -> FeasModule:
        from ..ir.tensor import primitive_op

        for op in self.m.ops:
            method = getattr(self, "op_" + op.opname, None)
            if method is not None:
                method(op)
            elif primitive_op(op.opname) is not None:
                self.op_primitive(op, primitive_op(op.opname))
            else:
                raise FeascompError(f"scalarize does not know tensor op {op.opname!r}", op.loc)
        return FeasModule(self.m.name, tuple(self.fams.values()), tuple(self.edges), (("batch", self.B),))

    def family(self, op: Op, kind: str, ports=(), attrs=(), name=None) -> Family:
        shape = (self.B,) + op.type.shape if kind != "param" else op.type.shape
        f = Family(name or op.result, kind, op.type.with_shape(shape), tuple(ports), tuple(attrs), op.loc)
        self.fams[f.name] = f
        self.batched[f.name] = kind != "param"
        return f

    def connect(self, src: str, dst: Family, port: str, start: int, stop: int, value_axes: list[int], op: Op):
        """An edge from the family holding value ``src`` into dst.port[start:stop].

        ``value_axes[i]`` is the edge axis that the value's (per-sample) axis i runs along;
        the batch axis, if the producer has one, runs along edge axis 0.
        """
        n = dst.port_length(port)
        shape = dst.type.shape + ((stop - start,) if n else ())
        axes = ([0] if self.batched[src] else []) + value_axes
        producer = self.fams[src]
        for j, a in enumerate(axes):
            if producer.type.shape[j] != shape[a]:
                raise FeascompError(
                    f"cannot scalarize: axis {j} of %{src} ({producer.type.shape[j]}) would have to "
                    f"broadcast to {shape[a]}; size-1 broadcasting is not supported yet",
                    op.loc,
                )
        self.edges.append(Edge(src, dst.name, port, start, stop, BroadcastMap(tuple(axes)), TensorType(producer.type.dtype, shape)))

    # one method per tensor op ------------------------------------------------------------
    def op_input(self, op):
        self.family(op, "const")

    def op_param(self, op):
        self.family(op, "param", attrs=op.attrs)

    def op_matmul(self, op):
        u, w = op.operands
        tu = self.types[u]
        k = tu.shape[-1]
        f = self.family(op, "dot", ports=(("a", k), ("b", k)))
        r = tu.rank  # node axes: batch, u's leading axes (r - 1), then j; edge adds k at r + 1
        self.connect(u, f, "a", 0, k, list(range(1, r)) + [r + 1], op)
        self.connect(w, f, "b", 0, k, [r + 1, r], op)

    def op_add(self, op):
        f = self.family(op, "sum", ports=(("x", len(op.operands)),))
        for i, v in enumerate(op.operands):
            self.connect(v, f, "x", i, i + 1, self._aligned(v, op), op)

    def op_relu(self, op):
        f = self.family(op, "sum_relu", ports=(("x", 1),))
        self.connect(op.operands[0], f, "x", 0, 1, self._aligned(op.operands[0], op), op)

    def op_primitive(self, op, prim):
        """A registered primitive applied elementwise: one family of that primitive; a
        vector port takes one slot per operand, scalar ports one operand each."""
        if len(prim.ports) == 1 and prim.ports[0].vector:
            f = self.family(op, prim.name, ports=((prim.ports[0].name, len(op.operands)),), attrs=op.attrs)
            for i, v in enumerate(op.operands):
                self.connect(v, f, prim.ports[0].name, i, i + 1, self._aligned(v, op), op)
            return
        f = self.family(op, prim.name, ports=tuple((p.name, 0) for p in prim.ports), attrs=op.attrs)
        for port, v in zip(prim.ports, op.operands):
            self.connect(v, f, port.name, 0, 1, self._aligned(v, op), op)

    def _aligned(self, v: str, op: Op) -> list[int]:
        """Right-aligned (NumPy) broadcasting of operand v into op's per-sample shape."""
        rv, ro = self.types[v].rank, op.type.rank
        return [1 + ro - rv + i for i in range(rv)]

    def op_output(self, op):
        pass

    def op_loss(self, op):
        (v,) = op.operands
        c = self.types[v].shape[0]
        name = "target"
        while name in self.fams:
            name += "_"
        tgt = Family(name, "target", TensorType(self.types[v].dtype, (self.B,)), (("logits", c),), op.attrs, op.loc)
        self.fams[name] = tgt
        self.batched[name] = True
        self.connect(v, tgt, "logits", 0, c, [1], op)
