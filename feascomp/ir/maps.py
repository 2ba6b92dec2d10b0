"""Edge maps: the linear maps from a producer family's values to an edge array (a
broadcast, preceded by structural steps: reshape, permute, slice, place, window, expand,
gather), with their transposes. Shared by the tensor level (conv's type rule uses
:class:`Window`) and the feasibility level (every edge has one), so it imports neither."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .printer import fmt_attrs


@dataclasses.dataclass(frozen=True)
class BroadcastMap:
    """edge[i_0, ..., i_k] = src[i_{s_0}, ..., i_{s_m}]: a transpose followed by a broadcast.

    ``src_axes[j]`` is the edge axis that source axis j runs along. Text: einsum letters,
    e.g. ``bcast "cb->abc"`` (source axis 0 is edge axis 2, source axis 1 is edge axis 1).
    """

    src_axes: tuple[int, ...]
    kind = "bcast"
    runtime = False
    # A plain broadcast is a chain with no structural steps: callers read ``final``,
    # ``steps``, ``shapes``, ``apply_steps`` and ``transpose_steps`` off any edge map alike.
    steps = ()

    @property
    def final(self) -> "BroadcastMap":
        return self

    def shapes(self, src_shape) -> list:
        return [tuple(src_shape)]

    def apply_steps(self, xp, src, data=None):
        return src

    def transpose_steps(self, xp, value, src_shape=None, data=None):
        return value

    def text(self, edge_rank: int) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return f'bcast "{"".join(letters[a] for a in self.src_axes)}->{letters[:edge_rank]}"'

    @staticmethod
    def parse(spec: str) -> "BroadcastMap":
        src, dst = spec.split("->")
        return BroadcastMap(tuple(dst.index(c) for c in src))

    def check(self, src_shape, edge_shape) -> str | None:
        if len(set(self.src_axes)) != len(self.src_axes) or len(self.src_axes) != len(src_shape):
            return f"map {self.text(len(edge_shape))} does not fit a source of shape {list(src_shape)}"
        for j, a in enumerate(self.src_axes):
            if a >= len(edge_shape) or edge_shape[a] != src_shape[j]:
                return f"map {self.text(len(edge_shape))} sends a source of shape {list(src_shape)} to {list(edge_shape)}"
        return None

    def apply(self, xp, src, edge_shape, data=None):
        order = sorted(range(len(self.src_axes)), key=lambda j: self.src_axes[j])
        t = xp.transpose(src, order) if order != list(range(len(order))) else src
        full = [1] * len(edge_shape)
        for j in order:
            full[self.src_axes[j]] = src.shape[j]
        return xp.broadcast_to(xp.reshape(t, full), tuple(edge_shape))

    def transpose(self, xp, edge, src_shape=None, data=None):
        """The adjoint: sum over broadcast axes, then undo the transpose."""
        keep = sorted(self.src_axes)
        drop = tuple(a for a in range(edge.ndim) if a not in keep)
        s = sum_axes(xp, edge, drop) if drop else edge
        # s has axes in sorted(src_axes) order; source axis j sits at position keep.index(src_axes[j])
        perm = [keep.index(a) for a in self.src_axes]
        return xp.transpose(s, perm) if perm != list(range(len(perm))) else s


def sum_axes(xp, x, axes: tuple[int, ...]):
    """Sum over ``axes``. XLA on CPU reduces over leading axes of large arrays very slowly
    (measured: 257 ms for the batch axis of a [256, 128, 784] float32 array, against 7 ms as
    a contraction with a vector of ones), so a leading run of summed axes becomes a matrix
    product; the rest is an ordinary sum."""
    lead = 0
    while lead in axes:
        lead += 1
    if lead and xp is not np:
        n = int(np.prod(x.shape[:lead]))
        rest = x.shape[lead:]
        x = (xp.ones((n,), x.dtype) @ xp.reshape(x, (n, -1))).reshape(rest)
        axes = tuple(a - lead for a in axes if a >= lead)
    return xp.sum(x, axis=axes) if axes else x


# Map steps: linear, structural maps applied to the source before the final broadcast. Each
# has an exact adjoint (tests check it against jax.linear_transpose). Positions a step fills
# with zeros (padding, placement) are constant-zero edges: the producer's projection writes
# 0 there every time it writes its own values, exactly as a constant-zero family in the
# producer's colour would, and they do not count in the producer's out-degree.


def _unslice(xp, y, axis: int, start: int, step: int, size: int):
    """Adjoint of ``x[start::step][:n]`` along ``axis`` (x of length ``size``): place y's
    entries at start, start + step, ... and zeros elsewhere."""
    n = y.shape[axis]
    hi = size - (start + (n - 1) * step + 1)
    if xp is np:
        shape = list(y.shape)
        shape[axis] = size
        out = np.zeros(shape, y.dtype)
        idx = [slice(None)] * y.ndim
        idx[axis] = slice(start, start + (n - 1) * step + 1, step)
        out[tuple(idx)] = y
        return out
    from jax import lax

    cfg = [(0, 0, 0)] * y.ndim
    cfg[axis] = (start, hi, step - 1)
    return lax.pad(y, xp.zeros((), y.dtype), cfg)


def _take_slice(x, axis: int, start: int, stop: int, step: int):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop, step)
    return x[tuple(idx)]


def _ints(v, n, what):
    v = tuple(int(a) for a in (v if isinstance(v, (list, tuple)) else [v] * n))
    if len(v) != n:
        raise ValueError(f"{what} needs {n} integers, got {list(v)}")
    return v


@dataclasses.dataclass(frozen=True)
class Reshape:
    shape: tuple[int, ...]
    kind = "reshape"

    def attrs(self):
        return (("shape", list(self.shape)),)

    @staticmethod
    def from_attrs(a):
        return Reshape(tuple(int(d) for d in a["shape"]))

    def out_shape(self, s):
        if math.prod(s) != math.prod(self.shape):
            return f"reshape {list(s)} to {list(self.shape)} changes the size"
        return self.shape

    def apply(self, xp, x, data=None):
        return xp.reshape(x, self.shape)

    def transpose(self, xp, y, in_shape, data=None):
        return xp.reshape(y, in_shape)


@dataclasses.dataclass(frozen=True)
class Permute:
    perm: tuple[int, ...]
    kind = "permute"

    def attrs(self):
        return (("perm", list(self.perm)),)

    @staticmethod
    def from_attrs(a):
        return Permute(tuple(int(d) for d in a["perm"]))

    def out_shape(self, s):
        if sorted(self.perm) != list(range(len(s))):
            return f"permute {list(self.perm)} does not fit rank {len(s)}"
        return tuple(s[p] for p in self.perm)

    def apply(self, xp, x, data=None):
        return xp.transpose(x, self.perm)

    def transpose(self, xp, y, in_shape, data=None):
        return xp.transpose(y, tuple(int(i) for i in np.argsort(self.perm)))


@dataclasses.dataclass(frozen=True)
class Slice:
    """x[start:stop:step] along one axis."""

    axis: int
    start: int
    stop: int
    step: int = 1
    kind = "slice"

    def attrs(self):
        return (("axis", self.axis), ("start", self.start), ("stop", self.stop), ("step", self.step))

    @staticmethod
    def from_attrs(a):
        return Slice(int(a["axis"]), int(a["start"]), int(a["stop"]), int(a.get("step", 1)))

    def out_shape(self, s):
        if not (0 <= self.axis < len(s)) or not (0 <= self.start < self.stop <= s[self.axis]) or self.step < 1:
            return f"slice {self.start}:{self.stop}:{self.step} of axis {self.axis} does not fit {list(s)}"
        return s[: self.axis] + (len(range(self.start, self.stop, self.step)),) + s[self.axis + 1 :]

    def apply(self, xp, x, data=None):
        return _take_slice(x, self.axis, self.start, self.stop, self.step)

    def transpose(self, xp, y, in_shape, data=None):
        return _unslice(xp, y, self.axis, self.start, self.step, in_shape[self.axis])


@dataclasses.dataclass(frozen=True)
class Place:
    """Embed x at offset ``start`` of a zero tensor of length ``size`` along one axis (the
    adjoint of a slice); the zeros are constant-zero edges."""

    axis: int
    start: int
    size: int
    kind = "place"

    def attrs(self):
        return (("axis", self.axis), ("start", self.start), ("size", self.size))

    @staticmethod
    def from_attrs(a):
        return Place(int(a["axis"]), int(a["start"]), int(a["size"]))

    def out_shape(self, s):
        if not (0 <= self.axis < len(s)) or self.start < 0 or self.start + s[self.axis] > self.size:
            return f"place at {self.start} of length {self.size} on axis {self.axis} does not fit {list(s)}"
        return s[: self.axis] + (self.size,) + s[self.axis + 1 :]

    def apply(self, xp, x, data=None):
        return _unslice(xp, x, self.axis, self.start, 1, self.size)

    def transpose(self, xp, y, in_shape, data=None):
        return _take_slice(y, self.axis, self.start, self.start + in_shape[self.axis], 1)


@dataclasses.dataclass(frozen=True)
class Window:
    """Sliding windows over the last three axes [H, W, C] -> [Ho, Wo, kh * kw, C]: entry
    (i, j, di * kw + dj, c) is the zero-padded source at (i * sh + di - top, j * sw + dj - left, c)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    kind = "window"

    def attrs(self):
        return (("kernel", list(self.kernel)), ("stride", list(self.stride)), ("padding", list(self.padding)))

    @staticmethod
    def from_attrs(a):
        return Window(_ints(a["kernel"], 2, "kernel"), _ints(a.get("stride", 1), 2, "stride"),
                      _ints(a.get("padding", 0), 4, "padding"))

    def dims(self, h, w):
        (kh, kw), (sh, sw), (t, b, l, r) = self.kernel, self.stride, self.padding
        return (h + t + b - kh) // sh + 1, (w + l + r - kw) // sw + 1

    def out_shape(self, s):
        if len(s) < 3:
            return f"window needs [..., H, W, C], got {list(s)}"
        (kh, kw), (sh, sw), pad = self.kernel, self.stride, self.padding
        if min(kh, kw, sh, sw) < 1 or min(pad) < 0:
            return f"window kernel and stride must be positive and padding non-negative, got {self.attrs()}"
        ho, wo = self.dims(s[-3], s[-2])
        if ho < 1 or wo < 1:
            return f"a {kh}x{kw} window does not fit a {s[-3]}x{s[-2]} input with padding {list(pad)}"
        return s[:-3] + (ho, wo, kh * kw, s[-1])

    def apply(self, xp, x, data=None):
        (kh, kw), (sh, sw), (t, b, l, r) = self.kernel, self.stride, self.padding
        ho, wo = self.dims(x.shape[-3], x.shape[-2])
        if t or b or l or r:
            x = xp.pad(x, [(0, 0)] * (x.ndim - 3) + [(t, b), (l, r), (0, 0)])
        parts = [x[..., di : di + (ho - 1) * sh + 1 : sh, dj : dj + (wo - 1) * sw + 1 : sw, :]
                 for di in range(kh) for dj in range(kw)]
        return xp.stack(parts, axis=-2)

    def transpose(self, xp, y, in_shape, data=None):
        (kh, kw), (sh, sw), (t, b, l, r) = self.kernel, self.stride, self.padding
        h, w = in_shape[-3] + t + b, in_shape[-2] + l + r
        total = None
        for di in range(kh):
            for dj in range(kw):
                part = y[..., di * kw + dj, :]
                part = _unslice(xp, _unslice(xp, part, part.ndim - 3, di, sh, h), part.ndim - 2, dj, sw, w)
                total = part if total is None else total + part
        return total[..., t : t + in_shape[-3], l : l + in_shape[-2], :]


@dataclasses.dataclass(frozen=True)
class Expand:
    """Broadcast into ``shape``: input axis i runs along output axis ``dims[i]`` (its length
    equal, or 1 and repeated); the other output axes repeat it (``lax.broadcast_in_dim``)."""

    shape: tuple[int, ...]
    dims: tuple[int, ...]
    kind = "expand"

    def attrs(self):
        return (("shape", list(self.shape)), ("dims", list(self.dims)))

    @staticmethod
    def from_attrs(a):
        return Expand(tuple(int(d) for d in a["shape"]), tuple(int(d) for d in a["dims"]))

    def out_shape(self, s):
        ok = len(s) == len(self.dims) and list(self.dims) == sorted(set(self.dims)) and all(
            0 <= d < len(self.shape) and s[i] in (1, self.shape[d]) for i, d in enumerate(self.dims))
        return self.shape if ok else f"expand {list(s)} along {list(self.dims)} to {list(self.shape)} does not fit"

    def _full(self, s):
        full = [1] * len(self.shape)
        for i, d in enumerate(self.dims):
            full[d] = s[i]
        return tuple(full)

    def apply(self, xp, x, data=None):
        return xp.broadcast_to(xp.reshape(x, self._full(x.shape)), self.shape)

    def transpose(self, xp, y, in_shape, data=None):
        full = self._full(in_shape)
        axes = tuple(a for a in range(len(self.shape)) if full[a] == 1 and self.shape[a] != 1)
        return xp.reshape(xp.sum(y, axis=axes, keepdims=True) if axes else y, in_shape)


@dataclasses.dataclass(frozen=True)
class Gather:
    """Rows of the source at runtime indices (an embedding lookup): [V, ...] -> shape + [...],
    entry (i, ...) = source[ids[i], ...] with ``ids = data[index]`` (an i32 const family of
    ``shape``, batch axis included). Its adjoint adds each entry back into its row (a
    scatter-add), so a row's out-degree is counted per batch and a row no index names has
    none (it keeps its value)."""

    index: str
    shape: tuple[int, ...]
    kind = "gather"
    runtime = True

    def attrs(self):
        return (("index", self.index), ("shape", list(self.shape)))

    @staticmethod
    def from_attrs(a):
        return Gather(str(a["index"]), tuple(int(d) for d in a["shape"]))

    def out_shape(self, s):
        if len(s) < 1:
            return f"gather needs a table of rank >= 1, got {list(s)}"
        return tuple(self.shape) + tuple(s[1:])

    def apply(self, xp, x, data=None):
        ids = data[self.index]
        return x[ids] if xp is np else xp.take(x, ids, axis=0)

    def transpose(self, xp, y, in_shape, data=None):
        ids = data[self.index].reshape(-1)
        rows = xp.reshape(y, (ids.shape[0], -1))
        if xp is np:
            out = np.zeros((in_shape[0], rows.shape[1]), y.dtype)
            np.add.at(out, ids, rows)
        else:
            import jax

            out = jax.ops.segment_sum(rows, ids, num_segments=in_shape[0])
        return xp.reshape(out, in_shape)


STEP_KINDS = {c.kind: c for c in (Reshape, Permute, Slice, Place, Window, Expand, Gather)}


@dataclasses.dataclass(frozen=True)
class ChainMap:
    """Structural steps applied to the source, then a broadcast into the edge's shape:
    ``window {...} | reshape {...} | bcast "abcd->abced"``. Its view interface (``final``,
    ``steps``, ``shapes``, ``apply_steps``, ``transpose_steps``) is :class:`BroadcastMap`'s
    too, which has no steps."""

    steps: tuple
    final: BroadcastMap
    kind = "chain"

    def text(self, edge_rank: int) -> str:
        return " | ".join(f"{s.kind}{fmt_attrs(s.attrs())}" for s in self.steps) + " | " + self.final.text(edge_rank)

    def shapes(self, src_shape) -> list:
        """The shape entering each step, then the shape entering the final broadcast (or an
        error text)."""
        out = [tuple(src_shape)]
        for s in self.steps:
            nxt = s.out_shape(out[-1])
            if isinstance(nxt, str):
                return nxt
            out.append(tuple(nxt))
        return out

    def check(self, src_shape, edge_shape) -> str | None:
        shapes = self.shapes(src_shape)
        if isinstance(shapes, str):
            return shapes
        return self.final.check(shapes[-1], edge_shape)

    @property
    def runtime(self) -> bool:
        """Some step reads runtime data (indices): the out-degree is counted per batch."""
        return any(getattr(s, "runtime", False) for s in self.steps)

    def apply_steps(self, xp, src, data=None):
        """The source through the structural steps: what the final broadcast copies."""
        x = src
        for s in self.steps:
            x = s.apply(xp, x, data)
        return x

    def transpose_steps(self, xp, value, src_shape, data=None):
        """The adjoint of the steps alone: from what the broadcast copies to the source."""
        shapes = self.shapes(src_shape)
        for s, shp in zip(reversed(self.steps), reversed(shapes[:-1])):
            value = s.transpose(xp, value, shp, data)
        return value

    def apply(self, xp, src, edge_shape, data=None):
        return self.final.apply(xp, self.apply_steps(xp, src, data), edge_shape)

    def transpose(self, xp, edge, src_shape, data=None):
        return self.transpose_steps(xp, self.final.transpose(xp, edge), src_shape, data)


def make_map(steps, final: BroadcastMap):
    """A broadcast map, preceded by structural steps if there are any."""
    return ChainMap(tuple(steps), final) if steps else final


MAP_KINDS = {"bcast": BroadcastMap}
