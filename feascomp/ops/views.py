"""Views: reshape, transpose, slice, broadcast and embed make no family; each adds a step
to the map of the edges that read it (an embedding's step gathers the table's rows at the
batch's token ids)."""
from __future__ import annotations

import math

from ..errors import FeascompError
from ..ir.maps import Expand, Gather, Permute, Reshape, Slice
from .base import OpDef, ints


def _reshape_type(op, ts):
    (a,) = ts
    shape = ints(op, "shape")
    if shape is None or any(d <= 0 for d in shape):
        return "reshape needs {shape = [positive integers]}"
    if math.prod(shape) != a.size:
        return f"cannot reshape {a} ({a.size} elements) to {list(shape)} ({math.prod(shape)} elements)"
    return a.with_shape(shape)


def _reshape(s, op):
    base, steps, batched = s.view(op.operands[0])
    s.views[op.result] = (base, steps + (Reshape(s.lead(op.operands[0]) + op.type.shape),), batched)


def _transpose_type(op, ts):
    (a,) = ts
    perm = ints(op, "perm")
    if perm is None or sorted(perm) != list(range(a.rank)):
        return f"transpose needs {{perm = [...]}}, a permutation of the {a.rank} axes of {a}"
    return a.with_shape(tuple(a.shape[p] for p in perm))


def _transpose(s, op):
    base, steps, batched = s.view(op.operands[0])
    b = int(batched)
    perm = tuple(range(b)) + tuple(p + b for p in op.attr("perm"))
    s.views[op.result] = (base, steps + (Permute(perm),), batched)


def _slice_type(op, ts):
    (a,) = ts
    ax, start, stop, step = (op.attr(k) for k in ("axis", "start", "stop", "step"))
    if not all(isinstance(v, int) for v in (ax, start, stop, step)):
        return "slice needs integer {axis, start, stop, step}"
    if not (0 <= ax < a.rank) or not (0 <= start < stop <= a.shape[ax]) or step < 1:
        return f"slice {start}:{stop}:{step} of axis {ax} is outside {a}"
    return a.with_shape(a.shape[:ax] + (len(range(start, stop, step)),) + a.shape[ax + 1 :])


def _slice(s, op):
    base, steps, batched = s.view(op.operands[0])
    cut = Slice(op.attr("axis") + int(batched), op.attr("start"), op.attr("stop"), op.attr("step"))
    s.views[op.result] = (base, steps + (cut,), batched)


def _broadcast_type(op, ts):
    (a,) = ts
    shape, dims = ints(op, "shape"), ints(op, "dims")
    if shape is None or dims is None or len(dims) != a.rank or list(dims) != sorted(set(dims)) or not all(
            0 <= d < len(shape) and a.shape[i] in (1, shape[d]) for i, d in enumerate(dims)):
        return f"broadcast of {a} needs {{shape, dims}} with dims increasing and each axis of length 1 or shape[dim]"
    return a.with_shape(shape)


def _eval_broadcast(xp, op, a, lead=0):
    shape, dims = tuple(op.attr("shape")), op.attr("dims")
    full = [1] * len(shape)
    for i, d in enumerate(dims):
        full[d] = a.shape[lead + i]
    return xp.broadcast_to(xp.reshape(a, a.shape[:lead] + tuple(full)), a.shape[:lead] + shape)


def _broadcast(s, op):
    base, steps, batched = s.view(op.operands[0])
    b = int(batched)
    dims = tuple(range(b)) + tuple(d + b for d in op.attr("dims"))
    s.views[op.result] = (base, steps + (Expand(s.lead(op.operands[0]) + op.type.shape, dims),), batched)


def _embed_type(op, ts):
    ids, table = ts
    if ids.dtype != "i32":
        return f"embed needs integer token ids (an i32 input) first, got {ids}"
    if table.dtype == "i32" or table.rank < 1:
        return f"embed needs a float table [rows, ...] second, got {table}"
    return table.with_shape(ids.shape + table.shape[1:])


def _eval_embed(xp, op, ids, table):
    """Rows of the table (unbatched) at the ids (batched): ids.shape + row shape."""
    return xp.take(table, ids, axis=0)


def _embed(s, op):
    """A view: the table's rows at the batch's token ids (a gather step reading the ids
    at run time). The table must not vary per sample (a parameter, or a view of one)."""
    ids, table = op.operands
    base, steps, batched = s.view(table)
    if batched:
        raise FeascompError(f"embed needs a table shared by all samples (a parameter); %{table} varies per sample", op.loc)
    s.views[op.result] = (base, steps + (Gather(ids, (s.B,) + s.types[ids].shape),), True)


DEFS = [
    OpDef("reshape", 1, _reshape_type, _reshape, wants_lead=True,
          evaluate=lambda xp, op, a, lead=0: xp.reshape(a, a.shape[:lead] + tuple(op.attr("shape")))),
    OpDef("transpose", 1, _transpose_type, _transpose, evaluate=lambda xp, op, a: xp.transpose(
        a, tuple(range(a.ndim - op.type.rank)) + tuple(p + a.ndim - op.type.rank for p in op.attr("perm")))),
    OpDef("slice", 1, _slice_type, _slice, evaluate=lambda xp, op, a: a[
        (slice(None),) * (a.ndim - op.type.rank + op.attr("axis")) + (slice(op.attr("start"), op.attr("stop"), op.attr("step")),)]),
    OpDef("broadcast", 1, _broadcast_type, _broadcast, evaluate=_eval_broadcast, wants_lead=True),
    OpDef("embed", 2, _embed_type, _embed, evaluate=_eval_embed),
]
