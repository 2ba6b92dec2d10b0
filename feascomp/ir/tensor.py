"""Tensor IR: typed SSA operations on per-sample tensors (no batch axis).

    tensor @mnist_mlp {
      %x = input() : f32[784]
      %W1 = param() {init = "he_normal"} : f32[784, 128]
      %0 = matmul(%x, %W1) : f32[128]
      %h = relu(%0) : f32[128]
      output(%h)
      loss(%h) {kind = "cross_entropy", lam = 5.0}
    }

Each op kind is an :class:`OpDef` with its arity and a type rule; :func:`verify` checks
SSA form and re-derives every result type. The front ends (DSL, jaxpr) build this level.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ..errors import FeascompError, Loc
from .maps import Window
from .printer import print_tensor
from .types import TensorType

Attrs = tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Op:
    opname: str
    result: str | None  # SSA name without '%', None for output/loss
    operands: tuple[str, ...]
    attrs: Attrs = ()
    type: TensorType | None = None
    loc: Loc | None = dataclasses.field(default=None, compare=False, repr=False)

    def attr(self, key: str, default=None):
        return dict(self.attrs).get(key, default)


@dataclasses.dataclass(frozen=True)
class TensorModule:
    name: str
    ops: tuple[Op, ...]

    def types(self) -> dict[str, TensorType]:
        return {op.result: op.type for op in self.ops if op.result is not None}

    def by_kind(self, opname: str) -> list[Op]:
        return [op for op in self.ops if op.opname == opname]

    @property
    def output(self) -> str:
        return self.by_kind("output")[0].operands[0]

    @property
    def loss(self) -> Op:
        return self.by_kind("loss")[0]

    def __str__(self) -> str:
        return print_tensor(self)


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(reversed(out))


def _matmul(op, ts):
    a, b = ts
    if a.rank < 1 or b.rank != 2:
        return f"matmul needs a vector or matrix on the left and a matrix on the right, got {a} @ {b}"
    if a.shape[-1] != b.shape[0]:
        return f"matmul shapes do not agree: {a} @ {b} (contraction {a.shape[-1]} vs {b.shape[0]})"
    return a.with_shape(a.shape[:-1] + b.shape[1:])


def _elementwise2(op, ts):
    a, b = ts
    shape = _broadcast(a.shape, b.shape)
    if shape is None:
        return f"{op.opname} shapes do not broadcast: {a} and {b}"
    return a.with_shape(shape)


def _same(op, ts):
    return ts[0]


def _declared(op, ts):
    return op.type


@dataclasses.dataclass(frozen=True)
class OpDef:
    arity: int | None  # None: any
    rule: Callable  # (op, operand types) -> TensorType | error text
    has_result: bool = True
    evaluate: Callable | None = None  # (xp, op, *batched operands) -> batched result
    wants_lead: bool = False  # evaluate takes lead= the number of leading (batch) axes


def _ints(op, key, n=None):
    v = op.attr(key)
    if not isinstance(v, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool) for a in v):
        return None
    return tuple(v) if n is None or len(v) == n else None


def _reshape(op, ts):
    (a,) = ts
    shape = _ints(op, "shape")
    if shape is None or any(d <= 0 for d in shape):
        return "reshape needs {shape = [positive integers]}"
    if math.prod(shape) != a.size:
        return f"cannot reshape {a} ({a.size} elements) to {list(shape)} ({math.prod(shape)} elements)"
    return a.with_shape(shape)


def _transpose(op, ts):
    (a,) = ts
    perm = _ints(op, "perm")
    if perm is None or sorted(perm) != list(range(a.rank)):
        return f"transpose needs {{perm = [...]}}, a permutation of the {a.rank} axes of {a}"
    return a.with_shape(tuple(a.shape[p] for p in perm))


def _slice(op, ts):
    (a,) = ts
    ax, start, stop, step = (op.attr(k) for k in ("axis", "start", "stop", "step"))
    if not all(isinstance(v, int) for v in (ax, start, stop, step)):
        return "slice needs integer {axis, start, stop, step}"
    if not (0 <= ax < a.rank) or not (0 <= start < stop <= a.shape[ax]) or step < 1:
        return f"slice {start}:{stop}:{step} of axis {ax} is outside {a}"
    return a.with_shape(a.shape[:ax] + (len(range(start, stop, step)),) + a.shape[ax + 1 :])


def _concat(op, ts):
    ax = op.attr("axis")
    if not isinstance(ax, int) or not ts or not (0 <= ax < ts[0].rank):
        return f"concat needs an {{axis}} within the operands' rank, got {ax!r}"
    for t in ts[1:]:
        if t.rank != ts[0].rank or any(d != e for i, (d, e) in enumerate(zip(t.shape, ts[0].shape)) if i != ax):
            return f"concat operands differ off axis {ax}: {', '.join(map(str, ts))}"
    n = sum(t.shape[ax] for t in ts)
    return ts[0].with_shape(ts[0].shape[:ax] + (n,) + ts[0].shape[ax + 1 :])


def _window(op, ts, kernel):

    (x,) = ts[:1]
    stride = _ints(op, "stride", 2)
    padding = _ints(op, "padding", 4) if op.attr("padding") is not None else (0, 0, 0, 0)
    if stride is None or padding is None:
        return f"{op.opname} needs {{stride = [sh, sw], padding = [top, bottom, left, right]}}"
    if x.rank != 3:
        return f"{op.opname} needs a [height, width, channels] input, got {x}"
    w = Window(kernel, stride, padding)
    out = w.out_shape(x.shape)
    return out if isinstance(out, str) else w


def _conv2d(op, ts):
    x, k = ts
    if x.rank != 3:
        return f"conv2d needs a [height, width, channels] input, got {x}"
    if k.rank != 4 or k.shape[2] != x.shape[-1]:
        return f"conv2d needs a kernel [kh, kw, {x.shape[-1]}, out channels] (HWIO), got {k}"
    w = _window(op, ts, k.shape[:2])
    if isinstance(w, str):
        return w
    ho, wo = w.dims(x.shape[0], x.shape[1])
    return x.with_shape((ho, wo, k.shape[3]))


def _max_pool(op, ts):
    kernel = _ints(op, "window", 2)
    if kernel is None:
        return "max_pool needs {window = [kh, kw]}"
    if op.attr("padding") not in (None, [0, 0, 0, 0], (0, 0, 0, 0)):
        return "max_pool supports no padding (a padded max would need -inf constants)"
    w = _window(op, ts, kernel)
    if isinstance(w, str):
        return w
    ho, wo = w.dims(ts[0].shape[0], ts[0].shape[1])
    return ts[0].with_shape((ho, wo, ts[0].shape[2]))


def _broadcast_in_dim(op, ts):
    (a,) = ts
    shape, dims = _ints(op, "shape"), _ints(op, "dims")
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


def _reduce_max(op, ts):
    (a,) = ts
    axes = _ints(op, "axes")
    if axes is None or not axes or len(set(axes)) != len(axes) or not all(0 <= x < a.rank for x in axes):
        return f"reduce_max needs {{axes = [...]}}, distinct axes of {a}"
    return a.with_shape(tuple(d for i, d in enumerate(a.shape) if i not in axes))


def _eval_conv2d(xp, op, x, k):

    w = Window(tuple(k.shape[:2]), tuple(op.attr("stride")), tuple(op.attr("padding")))
    p = w.apply(xp, x)  # [..., Ho, Wo, kh*kw, C]
    return xp.einsum("...pc,pco->...o", p, xp.reshape(k, (k.shape[0] * k.shape[1],) + tuple(k.shape[2:])))


def _eval_max_pool(xp, op, x):

    return xp.max(Window(tuple(op.attr("window")), tuple(op.attr("stride")), (0, 0, 0, 0)).apply(xp, x), axis=-2)


def _embed(op, ts):
    ids, table = ts
    if ids.dtype != "i32":
        return f"embed needs integer token ids (an i32 input) first, got {ids}"
    if table.dtype == "i32" or table.rank < 1:
        return f"embed needs a float table [rows, ...] second, got {table}"
    return table.with_shape(ids.shape + table.shape[1:])


def _eval_embed(xp, op, ids, table):
    """Rows of the table (unbatched) at the ids (batched): ids.shape + row shape."""
    return xp.take(table, ids, axis=0)


def _eval_concat(xp, op, *xs, lead=0):
    batch = next(x.shape[:lead] for x in xs if x.ndim == lead + op.type.rank)
    full = [x if x.ndim == lead + op.type.rank else xp.broadcast_to(x, batch + tuple(x.shape)) for x in xs]
    return xp.concatenate(full, axis=op.attr("axis") + lead)


OPS: dict[str, OpDef] = {
    "input": OpDef(0, _declared),
    "param": OpDef(0, _declared),
    "matmul": OpDef(2, _matmul, evaluate=lambda xp, op, a, b: xp.matmul(a, b)),
    "add": OpDef(2, _elementwise2, evaluate=lambda xp, op, a, b: a + b),
    "relu": OpDef(1, _same, evaluate=lambda xp, op, a: xp.maximum(a, 0)),
    "reshape": OpDef(1, _reshape, evaluate=lambda xp, op, a, lead=0: xp.reshape(a, a.shape[:lead] + tuple(op.attr("shape"))),
                     wants_lead=True),
    "transpose": OpDef(1, _transpose, evaluate=lambda xp, op, a: xp.transpose(
        a, tuple(range(a.ndim - op.type.rank)) + tuple(p + a.ndim - op.type.rank for p in op.attr("perm")))),
    "slice": OpDef(1, _slice, evaluate=lambda xp, op, a: a[(slice(None),) * (a.ndim - op.type.rank + op.attr("axis"))
                                                          + (slice(op.attr("start"), op.attr("stop"), op.attr("step")),)]),
    "concat": OpDef(None, _concat, evaluate=_eval_concat, wants_lead=True),
    "broadcast": OpDef(1, _broadcast_in_dim, evaluate=_eval_broadcast, wants_lead=True),
    "conv2d": OpDef(2, _conv2d, evaluate=_eval_conv2d),
    "max_pool": OpDef(1, _max_pool, evaluate=_eval_max_pool),
    "reduce_max": OpDef(1, _reduce_max, evaluate=lambda xp, op, a: xp.max(
        a, axis=tuple(x + a.ndim - op.type.rank - len(op.attr("axes")) for x in op.attr("axes")))),
    "embed": OpDef(2, _embed, evaluate=_eval_embed),
    "output": OpDef(1, lambda op, ts: None, has_result=False),
    "loss": OpDef(1, lambda op, ts: None, has_result=False),
}


def evaluate(xp, module: "TensorModule", params: dict, inputs: dict):
    """The model's output on a batch (inputs carry a leading batch axis; params do not).

    Right-aligned broadcasting makes per-sample rules work unchanged on batched operands.
    """
    env = dict(params)
    env.update(inputs)
    types = module.types()
    for op in module.ops:
        d = opdef(op.opname)
        if d.evaluate is not None:
            args = [env[v] for v in op.operands]
            if d.wants_lead:
                lead = max(a.ndim - types[v].rank for a, v in zip(args, op.operands))
                env[op.result] = d.evaluate(xp, op, *args, lead=lead)
            else:
                env[op.result] = d.evaluate(xp, op, *args)
    return env[module.output]

INITIALIZERS = ("zeros", "normal", "he_normal")


def primitive_op(opname: str):
    """A tensor op named after a registered function primitive applies it elementwise
    (operands broadcast together; a vector-port primitive takes one slot per operand,
    e.g. ``max(%a, %b)``). Its attributes are the primitive's options."""
    from ..primitives import get, names

    if opname in OPS or opname not in names("function"):
        return None
    return get(opname)


def _apply_rule(prim):
    def rule(op, ts):
        vector = len(prim.ports) == 1 and prim.ports[0].vector
        if not vector and len(ts) != len(prim.ports):
            return f"{op.opname} takes {len(prim.ports)} operand(s), got {len(ts)}"
        if not ts:
            return f"{op.opname} needs at least one operand"
        shape = ts[0].shape
        for t in ts[1:]:
            shape = _broadcast(shape, t.shape)
            if shape is None:
                return f"{op.opname} operand shapes do not broadcast: {', '.join(map(str, ts))}"
        try:
            bound = prim.with_options(**dict(op.attrs))
        except ValueError as e:
            return str(e)
        err = bound.check({p.name: (len(ts) if p.vector else None) for p in prim.ports})
        return err or ts[0].with_shape(shape)

    return rule


def _apply_eval(prim):
    def evaluate(xp, op, *args):
        bound = prim.with_options(**dict(op.attrs))
        if len(prim.ports) == 1 and prim.ports[0].vector:
            shape = xp.broadcast_shapes(*(a.shape for a in args))
            return bound.forward(xp.stack([xp.broadcast_to(a, shape) for a in args], axis=-1))
        return bound.forward(*args)

    return evaluate


def opdef(opname: str) -> "OpDef | None":
    """The definition of a tensor op: a built-in, or a registered primitive applied elementwise."""
    if opname in OPS:
        return OPS[opname]
    prim = primitive_op(opname)
    if prim is None:
        return None
    return OpDef(None, _apply_rule(prim), evaluate=_apply_eval(prim))


def opdef_of(module: TensorModule, value: str) -> str | None:
    """The op name defining ``value``."""
    return next((op.opname for op in module.ops if op.result == value), None)


def verify(module: TensorModule) -> None:
    """Raise FeascompError if the module is not well formed and well typed."""
    from ..primitives import get, names

    defined: dict[str, TensorType] = {}
    for op in module.ops:
        where = op.loc
        d = opdef(op.opname)
        if d is None:
            raise FeascompError(f"unknown tensor op {op.opname!r}", where)
        if d.arity is not None and len(op.operands) != d.arity:
            raise FeascompError(f"{op.opname} takes {d.arity} operand(s), got {len(op.operands)}", where)
        for v in op.operands:
            if v not in defined:
                raise FeascompError(f"use of undefined value %{v}", where)
        if d.has_result != (op.result is not None):
            raise FeascompError(f"{op.opname} {'needs' if d.has_result else 'has no'} result", where)
        if op.opname == "param" and op.attr("init", "zeros") not in INITIALIZERS:
            raise FeascompError(
                f"unknown initialiser {op.attr('init')!r}; use one of {', '.join(INITIALIZERS)}", where
            )
        if op.opname == "loss":
            kind = op.attr("kind")
            if kind not in names("loss"):
                raise FeascompError(f"unknown loss {kind!r}; use one of {', '.join(names('loss'))}", where)
            try:
                get(kind, **{k: v for k, v in op.attrs if k != "kind"})
            except ValueError as e:
                raise FeascompError(str(e), where) from None
        if d.has_result:
            if op.result in defined:
                raise FeascompError(f"value %{op.result} is defined twice", where)
            t = d.rule(op, [defined[v] for v in op.operands])
            if isinstance(t, str):
                raise FeascompError(t, where)
            if op.type is not None and t != op.type:
                raise FeascompError(f"%{op.result} is declared {op.type} but {op.opname} gives {t}", where)
            defined[op.result] = t
        for i, v in enumerate(op.operands):
            if defined[v].dtype == "i32" and (op.opname, i) != ("embed", 0):
                raise FeascompError(
                    f"%{v} holds integer token ids ({defined[v]}); they can only index a table: embed(%{v}, table)", where)
        if op.opname == "embed" and opdef_of(module, op.operands[0]) != "input":
            raise FeascompError(f"embed's token ids must be a model input, not %{op.operands[0]}", where)
    outs = module.by_kind("output")
    losses = module.by_kind("loss")
    whole = next((op.loc for op in module.ops if op.loc is not None), None)  # the model's file
    whole = Loc(whole.file, 1, 1) if whole is not None else Loc(module.name)
    if len(outs) != 1:
        raise FeascompError(f"a model needs exactly one output, found {len(outs)}", outs[1].loc if outs else whole)
    if len(losses) != 1:
        raise FeascompError(f"a model needs exactly one loss, found {len(losses)}", losses[1].loc if losses else whole)
    if defined[outs[0].operands[0]].rank != 1:
        raise FeascompError(
            f"the output must be a vector of logits, got {defined[outs[0].operands[0]]}", outs[0].loc
        )
    if losses[0].operands[0] != outs[0].operands[0]:
        raise FeascompError("the loss must be applied to the output", losses[0].loc)
