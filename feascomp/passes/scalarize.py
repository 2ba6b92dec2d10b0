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
from ..ir.feasibility import (BroadcastMap, Edge, Expand, Family, FeasModule, Gather, Permute, Place, Reshape, Slice, Window,
                              make_map)
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
        # Views (reshape, transpose, slice) make no family: value -> (producer family, steps
        # on the producer's batched array, batched). Concats consumed along a dot's
        # contraction stay virtual (port slices); any other use materializes them.
        self.views: dict[str, tuple[str, tuple, bool]] = {}
        self.concats: dict[str, Op] = {}

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

    def view(self, v: str) -> tuple[str, tuple, bool]:
        if v in self.concats:
            self._materialize_concat(v)
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

    # one method per tensor op ------------------------------------------------------------
    def op_input(self, op):
        self.family(op, "const")

    def op_param(self, op):
        self.family(op, "param", attrs=op.attrs)

    def op_matmul(self, op):
        u, w = op.operands
        tu = self.types[u]
        k = tu.shape[-1]
        r = tu.rank  # node axes: batch, u's leading axes (r - 1), then j; edge adds k at r + 1
        lead = "tuvwxyz"[: r - 1]
        f = self.family(op, "dot", ports=(("a", k), ("b", k)), attrs=(("spec", f"einsum b{lead}k,kj->b{lead}j"),))
        for part, off, size in self._concat_parts(u, tu.rank - 1):
            self.connect(part, f, "a", off, off + size, list(range(1, r)) + [r + 1], op)
            cut = (Slice(len(self.lead(w)), off, off + size),) if size != k else ()
            self.connect(w, f, "b", off, off + size, [r + 1, r], op, steps=cut)

    def _concat_parts(self, v: str, axis: int, off: int = 0):
        """(value, offset, length) of the pieces of v along ``axis``: v itself unless v is a
        virtual concat along that axis (nested concats expand)."""
        op = self.concats.get(v)
        if op is None or op.attr("axis") != axis:
            return [(v, off, self.types[v].shape[axis])]
        parts = []
        for x in op.operands:
            parts += self._concat_parts(x, axis, off)
            off += self.types[x].shape[axis]
        return parts

    def op_concat(self, op):
        """Virtual if every use is the left operand of a matmul along its contraction (the
        readout over hidden layers: port slices, no family); otherwise a sum family."""
        uses = [u for u in self.m.ops if op.result in u.operands]
        last = op.type.rank - 1
        self.concats[op.result] = op
        if not all(u.opname == "matmul" and u.operands[0] == op.result and u.operands[1] != op.result
                   and op.attr("axis") == last for u in uses):
            self._materialize_concat(op.result)

    def _materialize_concat(self, v: str):
        """A concat used other than along a dot's contraction: a sum family, each operand
        placed into its slice of the result (the rest of its edge is constant zero)."""
        op = self.concats.pop(v)
        ax = op.attr("axis")
        f = self.family(op, "sum", ports=(("x", len(op.operands)),))
        off, total = 0, op.type.shape[ax]
        for i, x in enumerate(op.operands):
            place = Place(len(self.lead(x)) + ax, off, total)
            self.connect(x, f, "x", i, i + 1, self._aligned(x, op), op, steps=(place,))
            off += self.types[x].shape[ax]

    def op_reshape(self, op):
        base, steps, batched = self.view(op.operands[0])
        self.views[op.result] = (base, steps + (Reshape(self.lead(op.operands[0]) + op.type.shape),), batched)

    def op_transpose(self, op):
        base, steps, batched = self.view(op.operands[0])
        b = int(batched)
        perm = tuple(range(b)) + tuple(p + b for p in op.attr("perm"))
        self.views[op.result] = (base, steps + (Permute(perm),), batched)

    def op_slice(self, op):
        base, steps, batched = self.view(op.operands[0])
        cut = Slice(op.attr("axis") + int(batched), op.attr("start"), op.attr("stop"), op.attr("step"))
        self.views[op.result] = (base, steps + (cut,), batched)

    def op_broadcast(self, op):
        base, steps, batched = self.view(op.operands[0])
        b = int(batched)
        dims = tuple(range(b)) + tuple(d + b for d in op.attr("dims"))
        self.views[op.result] = (base, steps + (Expand(self.lead(op.operands[0]) + op.type.shape, dims),), batched)

    def op_embed(self, op):
        """A view: the table's rows at the batch's token ids (a gather step reading the ids
        at run time). The table must not vary per sample (a parameter, or a view of one)."""
        ids, table = op.operands
        base, steps, batched = self.view(table)
        if batched:
            raise FeascompError(f"embed needs a table shared by all samples (a parameter); %{table} varies per sample", op.loc)
        self.views[op.result] = (base, steps + (Gather(ids, (self.B,) + self.types[ids].shape),), True)

    def op_conv2d(self, op):
        """A dot family per output pixel and channel over its k x k x C patch; the patch map
        keeps the convolution's parameters, zero padding is constant-zero edges."""
        x, w = op.operands
        kh, kw, c, co = self.types[w].shape
        stride, padding = tuple(op.attr("stride")), tuple(op.attr("padding", [0, 0, 0, 0]))
        p = kh * kw * c
        spec = (f"conv2d NHWC HWIO kernel {kh}x{kw} stride {stride[0]}x{stride[1]} "
                f"padding {','.join(map(str, padding))}")
        f = self.family(op, "dot", ports=(("a", p), ("b", p)), attrs=(("spec", spec),))
        ho, wo = op.type.shape[:2]
        bx = self.lead(x)
        patches = (Window((kh, kw), stride, padding), Reshape(bx + (ho, wo, p)))
        self.connect(x, f, "a", 0, p, [1, 2, 4], op, steps=patches)
        self.connect(w, f, "b", 0, p, [4, 3], op, steps=(Reshape(self.lead(w) + (p, co)),))

    def op_max_pool(self, op):
        x = op.operands[0]
        kh, kw = op.attr("window")
        f = self.family(op, "max", ports=(("x", kh * kw),))
        self.connect(x, f, "x", 0, kh * kw, [1, 2, 4, 3], op, steps=(Window((kh, kw), tuple(op.attr("stride"))),))

    def op_reduce_max(self, op):
        x = op.operands[0]
        axes = tuple(op.attr("axes"))
        shape = self.types[x].shape
        kept = [i for i in range(len(shape)) if i not in axes]
        n = 1
        for a in axes:
            n *= shape[a]
        f = self.family(op, "max", ports=(("x", n),))
        b = len(self.lead(x))
        perm = tuple(range(b)) + tuple(i + b for i in kept + list(axes))
        steps = (Permute(perm), Reshape(self.lead(x) + tuple(shape[i] for i in kept) + (n,)))
        self.connect(x, f, "x", 0, n, list(range(1, len(kept) + 2)), op, steps=steps)

    def op_add(self, op):
        f = self.family(op, "sum", ports=(("x", len(op.operands)),))
        for i, v in enumerate(op.operands):
            self.connect(v, f, "x", i, i + 1, self._aligned(v, op), op, steps=self._expand(v, op))

    def op_relu(self, op):
        f = self.family(op, "sum_relu", ports=(("x", 1),))
        self.connect(op.operands[0], f, "x", 0, 1, self._aligned(op.operands[0], op), op)

    def op_primitive(self, op, prim):
        """A registered primitive applied elementwise: one family of that primitive; a
        vector port takes one slot per operand, scalar ports one operand each."""
        if len(prim.ports) == 1 and prim.ports[0].vector:
            f = self.family(op, prim.name, ports=((prim.ports[0].name, len(op.operands)),), attrs=op.attrs)
            for i, v in enumerate(op.operands):
                self.connect(v, f, prim.ports[0].name, i, i + 1, self._aligned(v, op), op, steps=self._expand(v, op))
            return
        f = self.family(op, prim.name, ports=tuple((p.name, 0) for p in prim.ports), attrs=op.attrs)
        for port, v in zip(prim.ports, op.operands):
            self.connect(v, f, port.name, 0, 1, self._aligned(v, op), op, steps=self._expand(v, op))

    def _expand(self, v: str, op: Op) -> tuple:
        """Steps repeating v's length-1 axes to op's shape (right-aligned broadcasting)."""
        tv, ro = self.types[v], op.type.rank
        want = op.type.shape[ro - tv.rank :]
        if want == tv.shape:
            return ()
        lead = self.lead(v)
        return (Expand(lead + want, tuple(range(len(lead) + tv.rank))),)

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
