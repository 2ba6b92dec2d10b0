"""Dense ops: matmul (a dot family), add (a sum family), relu (a sum_relu family) and
concat (port slices of the dots that read it along their contraction, or a sum family)."""
from __future__ import annotations

from ..ir.maps import Place, Slice
from .base import OpDef, broadcast_shapes


def _matmul_type(op, ts):
    a, b = ts
    if a.rank < 1 or b.rank != 2:
        return f"matmul needs a vector or matrix on the left and a matrix on the right, got {a} @ {b}"
    if a.shape[-1] != b.shape[0]:
        return f"matmul shapes do not agree: {a} @ {b} (contraction {a.shape[-1]} vs {b.shape[0]})"
    return a.with_shape(a.shape[:-1] + b.shape[1:])


def _matmul(s, op):
    u, w = op.operands
    tu = s.types[u]
    k = tu.shape[-1]
    r = tu.rank  # node axes: batch, u's leading axes (r - 1), then j; edge adds k at r + 1
    lead = "tuvwxyz"[: r - 1]
    f = s.family(op, "dot", ports=(("a", k), ("b", k)), attrs=(("spec", f"einsum b{lead}k,kj->b{lead}j"),))
    for part, off, size in concat_parts(s, u, tu.rank - 1):
        s.connect(part, f, "a", off, off + size, list(range(1, r)) + [r + 1], op)
        cut = (Slice(len(s.lead(w)), off, off + size),) if size != k else ()
        s.connect(w, f, "b", off, off + size, [r + 1, r], op, steps=cut)


def _add_type(op, ts):
    a, b = ts
    shape = broadcast_shapes(a.shape, b.shape)
    if shape is None:
        return f"{op.opname} shapes do not broadcast: {a} and {b}"
    return a.with_shape(shape)


def _add(s, op):
    f = s.family(op, "sum", ports=(("x", len(op.operands)),))
    for i, v in enumerate(op.operands):
        s.connect(v, f, "x", i, i + 1, s.aligned(v, op), op, steps=s.expand(v, op))


def _relu(s, op):
    f = s.family(op, "sum_relu", ports=(("x", 1),))
    s.connect(op.operands[0], f, "x", 0, 1, s.aligned(op.operands[0], op), op)


def _concat_type(op, ts):
    ax = op.attr("axis")
    if not isinstance(ax, int) or not ts or not (0 <= ax < ts[0].rank):
        return f"concat needs an {{axis}} within the operands' rank, got {ax!r}"
    for t in ts[1:]:
        if t.rank != ts[0].rank or any(d != e for i, (d, e) in enumerate(zip(t.shape, ts[0].shape)) if i != ax):
            return f"concat operands differ off axis {ax}: {', '.join(map(str, ts))}"
    n = sum(t.shape[ax] for t in ts)
    return ts[0].with_shape(ts[0].shape[:ax] + (n,) + ts[0].shape[ax + 1 :])


def _eval_concat(xp, op, *xs, lead=0):
    batch = next(x.shape[:lead] for x in xs if x.ndim == lead + op.type.rank)
    full = [x if x.ndim == lead + op.type.rank else xp.broadcast_to(x, batch + tuple(x.shape)) for x in xs]
    return xp.concatenate(full, axis=op.attr("axis") + lead)


def _concat(s, op):
    """Virtual if every use is the left operand of a matmul along its contraction (the
    readout over hidden layers: port slices, no family), or the output and loss of a
    sequence model stacking its steps' logits along axis 0 (a target family per step:
    ops/io.py); otherwise a sum family."""
    uses = [u for u in s.m.ops if op.result in u.operands]
    last = op.type.rank - 1
    ax = op.attr("axis")
    if all(u.opname == "matmul" and u.operands[0] == op.result and u.operands[1] != op.result
           and ax == last for u in uses) or \
            (op.type.rank == 2 and ax == 0 and all(u.opname in ("output", "loss") for u in uses)):
        s.virtual[op.result] = op
        s.defer(op.result, lambda: _materialize_concat(s, op))
    else:
        _materialize_concat(s, op)


def _materialize_concat(s, op):
    """A concat used other than along a dot's contraction: a sum family, each operand
    placed into its slice of the result (the rest of its edge is constant zero)."""
    s.virtual.pop(op.result, None)
    ax = op.attr("axis")
    f = s.family(op, "sum", ports=(("x", len(op.operands)),))
    off, total = 0, op.type.shape[ax]
    for i, x in enumerate(op.operands):
        place = Place(len(s.lead(x)) + ax, off, total)
        s.connect(x, f, "x", i, i + 1, s.aligned(x, op), op, steps=(place,))
        off += s.types[x].shape[ax]


def concat_parts(s, v: str, axis: int, off: int = 0):
    """(value, offset, length) of the pieces of v along ``axis``: v itself unless v is a
    virtual concat along that axis (nested concats expand)."""
    op = s.virtual.get(v)
    if op is None or op.attr("axis") != axis:
        return [(v, off, s.types[v].shape[axis])]
    parts = []
    for x in op.operands:
        parts += concat_parts(s, x, axis, off)
        off += s.types[x].shape[axis]
    return parts


DEFS = [
    OpDef("matmul", 2, _matmul_type, _matmul, evaluate=lambda xp, op, a, b: xp.matmul(a, b)),
    OpDef("add", 2, _add_type, _add, evaluate=lambda xp, op, a, b: a + b),
    OpDef("relu", 1, lambda op, ts: ts[0], _relu, evaluate=lambda xp, op, a: xp.maximum(a, 0)),
    OpDef("concat", None, _concat_type, _concat, evaluate=_eval_concat, wants_lead=True),
]
