"""Feasibility IR: node families and edge families over index spaces (batch axis included).

    feasibility @mnist_mlp {batch = 256} {
      %x = const() : f32[256, 784]
      %W1 = param() {init = "he_normal"} : f32[784, 128]
      %0 = dot(a: 784, b: 784) : f32[256, 128]
      %t = target(logits: 10) {kind = "cross_entropy", lam = 5.0} : f32[256]
      edge %x -> %0.a[0:784] bcast "ac->abc" : f32[256, 128, 784]
      edge %W1 -> %0.b[0:784] bcast "cb->abc" : f32[256, 128, 784]
      ...
    }

A :class:`Family` is one primitive (or const / param / target) over an index space: its
``type`` is the shape of its values, one per node. Function families and targets have
ports; a vector port of length n gives each node n inputs.

An :class:`Edge` is every edge from one producer family into a slice of one consumer
port, stored as one array shaped like that slice of the port (node shape + (length,) for
vector ports), with a linear :class:`EdgeMap` from producer values to edge values. The
producer's mean over its outgoing edges is the map's transpose applied to the edge arrays
divided by the transpose applied to ones (its out-degree, computed at compile time).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import FeascompError, Loc
from .types import TensorType

FAMILY_KINDS = ("const", "param", "target")  # any other kind names a function primitive
PLAN_ATTRS = ("colour", "layer")  # set by passes
NOTE_ATTRS = ("spec",)  # a dot family's contraction (einsum or conv parameters), for readers
# every other family attribute is a primitive option


@dataclasses.dataclass(frozen=True)
class BroadcastMap:
    """edge[i_0, ..., i_k] = src[i_{s_0}, ..., i_{s_m}]: a transpose followed by a broadcast.

    ``src_axes[j]`` is the edge axis that source axis j runs along. Text: einsum letters,
    e.g. ``bcast "cb->abc"`` (source axis 0 is edge axis 2, source axis 1 is edge axis 1).
    """

    src_axes: tuple[int, ...]
    kind = "bcast"
    runtime = False

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
    ``window {...} | reshape {...} | bcast "abcd->abced"``."""

    steps: tuple
    final: BroadcastMap
    kind = "chain"

    def text(self, edge_rank: int) -> str:
        from .text import fmt_attrs

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

    def apply(self, xp, src, edge_shape, data=None):
        x = src
        for s in self.steps:
            x = s.apply(xp, x, data)
        return self.final.apply(xp, x, edge_shape)

    def transpose(self, xp, edge, src_shape, data=None):
        shapes = self.shapes(src_shape)
        y = self.final.transpose(xp, edge)
        for s, shp in zip(reversed(self.steps), reversed(shapes[:-1])):
            y = s.transpose(xp, y, shp, data)
        return y


def make_map(steps, final: BroadcastMap):
    """A broadcast map, preceded by structural steps if there are any."""
    return ChainMap(tuple(steps), final) if steps else final


MAP_KINDS = {"bcast": BroadcastMap}



@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    kind: str  # const | param | target | a function primitive's name
    type: TensorType  # one value per node; target: one node per sample
    ports: tuple[tuple[str, int], ...] = ()  # (port name, length); length 0 = scalar port
    attrs: tuple[tuple[str, Any], ...] = ()
    loc: Loc | None = dataclasses.field(default=None, compare=False, repr=False)

    def attr(self, key, default=None):
        return dict(self.attrs).get(key, default)

    def options(self) -> dict:
        """The primitive's options (a target's: its loss options)."""
        return {k: v for k, v in self.attrs if k not in PLAN_ATTRS + NOTE_ATTRS and k not in ("kind", "init")}

    def port_length(self, port: str) -> int:
        return dict(self.ports)[port]

    @property
    def is_function(self) -> bool:
        return self.kind not in FAMILY_KINDS


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    port: str
    start: int
    stop: int
    map: Any  # BroadcastMap or ChainMap
    type: TensorType  # shape of the stored edge array

    @property
    def key(self) -> str:
        return f"{self.src}->{self.dst}.{self.port}[{self.start}:{self.stop}]"


@dataclasses.dataclass(frozen=True)
class Group:
    """A fused projection: families of one primitive and one colour, projected as one."""

    name: str
    colour: int
    kind: str
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FeasModule:
    name: str
    families: tuple[Family, ...]
    edges: tuple[Edge, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    groups: tuple[Group, ...] = ()

    def attr(self, key, default=None):
        return dict(self.attrs).get(key, default)

    def family(self, name: str) -> Family:
        for f in self.families:
            if f.name == name:
                return f
        raise KeyError(name)

    def in_edges(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == name]

    def out_edges(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.src == name]

    def colour(self, name: str) -> int | None:
        return self.family(name).attr("colour")

    def __str__(self) -> str:
        from .text import print_feasibility

        return print_feasibility(self)

    def replace(self, **kw) -> "FeasModule":
        return dataclasses.replace(self, **kw)


def edge_shape(consumer: Family, port_len: int, stop: int, start: int) -> tuple[int, ...]:
    shape = consumer.type.shape
    return shape + (stop - start,) if port_len else shape


def verify(m: FeasModule) -> None:
    """Structural and type checks of a feasibility module."""
    from ..primitives import get, names

    where = Loc(m.name)
    seen = {}
    for f in m.families:
        if f.name in seen:
            raise FeascompError(f"family %{f.name} is defined twice", f.loc or where)
        seen[f.name] = f
        if f.is_function and f.kind not in names("function"):
            raise FeascompError(f"family %{f.name} uses unknown primitive {f.kind!r}", f.loc or where)
        if f.is_function:
            prim = get(f.kind)
            want = [p.name for p in prim.ports]
            if [p for p, _ in f.ports] != want:
                raise FeascompError(f"family %{f.name}: {f.kind} has ports {want}, got {[p for p, _ in f.ports]}", where)
            for p, (pn, n) in zip(prim.ports, f.ports):
                if p.vector != (n > 0):
                    raise FeascompError(f"family %{f.name}: port {pn} must be {'a vector' if p.vector else 'scalar'}", where)
            err = prim.check(dict(f.ports))
            if err:
                raise FeascompError(f"family %{f.name}: {err}", where)
    for e in m.edges:
        if e.src not in seen or e.dst not in seen:
            raise FeascompError(f"edge {e.key} names an undefined family", where)
        src, dst = seen[e.src], seen[e.dst]
        if src.kind == "target":
            raise FeascompError(f"edge {e.key} leaves a target family", where)
        if dst.kind in ("const", "param"):
            raise FeascompError(f"edge {e.key} enters a {dst.kind} family", where)
        if e.port not in dict(dst.ports):
            raise FeascompError(f"edge {e.key}: %{e.dst} has no port {e.port!r}", where)
        n = dst.port_length(e.port)
        if not (0 <= e.start < e.stop <= max(n, 1)):
            raise FeascompError(f"edge {e.key}: slice outside port of length {n}", where)
        want = edge_shape(dst, n, e.stop, e.start)
        if e.type.shape != want:
            raise FeascompError(f"edge {e.key} has shape {list(e.type.shape)}, the port slice needs {list(want)}", where)
        err = e.map.check(src.type.shape, e.type.shape)
        if err:
            raise FeascompError(f"edge {e.key}: {err}", where)
        for step in getattr(e.map, "steps", ()):
            if step.kind == "gather":
                idx = seen.get(step.index)
                if idx is None or idx.kind != "const" or idx.type.dtype != "i32" or idx.type.shape != step.shape:
                    raise FeascompError(f"edge {e.key}: gather needs an i32 const family %{step.index} of shape "
                                        f"{list(step.shape)}", where)
        if src.type.dtype == "i32":
            raise FeascompError(f"edge {e.key} leaves %{e.src}, which holds integer indices (only gather reads them)", where)
    # every port position is covered exactly once
    for f in m.families:
        for pn, n in f.ports:
            cover = sorted((e.start, e.stop) for e in m.in_edges(f.name) if e.port == pn)
            pos = 0
            for a, b in cover:
                if a != pos:
                    raise FeascompError(f"family %{f.name}: port {pn} positions {pos}..{a} are {'doubly' if a < pos else 'not'} fed", where)
                pos = b
            if pos != max(n, 1):
                raise FeascompError(f"family %{f.name}: port {pn} is fed up to {pos} of {max(n, 1)}", where)
    targets = [f for f in m.families if f.kind == "target"]
    if len(targets) != 1:
        raise FeascompError(f"a feasibility module needs one target family, found {len(targets)}", where)
    kind = targets[0].attr("kind")
    if kind not in names("loss"):
        raise FeascompError(f"target uses unknown loss {kind!r}", where)
    grouped = set()
    for g in m.groups:
        for name in g.members:
            if name in grouped:
                raise FeascompError(f"group @{g.name}: %{name} is already in another group", where)
            grouped.add(name)
            f = seen.get(name)
            if f is None or f.kind != g.kind or f.attr("colour") != g.colour:
                raise FeascompError(f"group @{g.name}: %{name} is not a {g.kind} family of colour {g.colour}", where)
