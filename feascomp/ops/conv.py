"""Image ops over [height, width, channels] samples: conv2d (a dot family per output pixel
and channel over its patch), max_pool and reduce_max (max families over windows/axes)."""
from __future__ import annotations

from ..ir.maps import Permute, Reshape, Window
from .base import OpDef, ints


def _window(op, ts, kernel):
    (x,) = ts[:1]
    stride = ints(op, "stride", 2)
    padding = ints(op, "padding", 4) if op.attr("padding") is not None else (0, 0, 0, 0)
    if stride is None or padding is None:
        return f"{op.opname} needs {{stride = [sh, sw], padding = [top, bottom, left, right]}}"
    if x.rank != 3:
        return f"{op.opname} needs a [height, width, channels] input, got {x}"
    w = Window(kernel, stride, padding)
    out = w.out_shape(x.shape)
    return out if isinstance(out, str) else w


def _conv2d_type(op, ts):
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


def _eval_conv2d(xp, op, x, k):
    w = Window(tuple(k.shape[:2]), tuple(op.attr("stride")), tuple(op.attr("padding")))
    p = w.apply(xp, x)  # [..., Ho, Wo, kh*kw, C]
    return xp.einsum("...pc,pco->...o", p, xp.reshape(k, (k.shape[0] * k.shape[1],) + tuple(k.shape[2:])))


def _conv2d(s, op):
    """A dot family per output pixel and channel over its k x k x C patch; the patch map
    keeps the convolution's parameters, zero padding is constant-zero edges."""
    x, w = op.operands
    kh, kw, c, co = s.types[w].shape
    stride, padding = tuple(op.attr("stride")), tuple(op.attr("padding", [0, 0, 0, 0]))
    p = kh * kw * c
    spec = (f"conv2d NHWC HWIO kernel {kh}x{kw} stride {stride[0]}x{stride[1]} "
            f"padding {','.join(map(str, padding))}")
    f = s.family(op, "dot", ports=(("a", p), ("b", p)), attrs=(("spec", spec),))
    ho, wo = op.type.shape[:2]
    bx = s.lead(x)
    patches = (Window((kh, kw), stride, padding), Reshape(bx + (ho, wo, p)))
    s.connect(x, f, "a", 0, p, [1, 2, 4], op, steps=patches)
    s.connect(w, f, "b", 0, p, [4, 3], op, steps=(Reshape(s.lead(w) + (p, co)),))


def _max_pool_type(op, ts):
    kernel = ints(op, "window", 2)
    if kernel is None:
        return "max_pool needs {window = [kh, kw]}"
    if op.attr("padding") not in (None, [0, 0, 0, 0], (0, 0, 0, 0)):
        return "max_pool supports no padding (a padded max would need -inf constants)"
    w = _window(op, ts, kernel)
    if isinstance(w, str):
        return w
    ho, wo = w.dims(ts[0].shape[0], ts[0].shape[1])
    return ts[0].with_shape((ho, wo, ts[0].shape[2]))


def _eval_max_pool(xp, op, x):
    return xp.max(Window(tuple(op.attr("window")), tuple(op.attr("stride")), (0, 0, 0, 0)).apply(xp, x), axis=-2)


def _max_pool(s, op):
    x = op.operands[0]
    kh, kw = op.attr("window")
    f = s.family(op, "max", ports=(("x", kh * kw),))
    s.connect(x, f, "x", 0, kh * kw, [1, 2, 4, 3], op, steps=(Window((kh, kw), tuple(op.attr("stride"))),))


def _reduce_max_type(op, ts):
    (a,) = ts
    axes = ints(op, "axes")
    if axes is None or not axes or len(set(axes)) != len(axes) or not all(0 <= x < a.rank for x in axes):
        return f"reduce_max needs {{axes = [...]}}, distinct axes of {a}"
    return a.with_shape(tuple(d for i, d in enumerate(a.shape) if i not in axes))


def _reduce_max(s, op):
    x = op.operands[0]
    axes = tuple(op.attr("axes"))
    shape = s.types[x].shape
    kept = [i for i in range(len(shape)) if i not in axes]
    n = 1
    for a in axes:
        n *= shape[a]
    f = s.family(op, "max", ports=(("x", n),))
    b = len(s.lead(x))
    perm = tuple(range(b)) + tuple(i + b for i in kept + list(axes))
    steps = (Permute(perm), Reshape(s.lead(x) + tuple(shape[i] for i in kept) + (n,)))
    s.connect(x, f, "x", 0, n, list(range(1, len(kept) + 2)), op, steps=steps)


DEFS = [
    OpDef("conv2d", 2, _conv2d_type, _conv2d, evaluate=_eval_conv2d),
    OpDef("max_pool", 1, _max_pool_type, _max_pool, evaluate=_eval_max_pool),
    OpDef("reduce_max", 1, _reduce_max_type, _reduce_max, evaluate=lambda xp, op, a: xp.max(
        a, axis=tuple(x + a.ndim - op.type.rank - len(op.attr("axes")) for x in op.attr("axes")))),
]
