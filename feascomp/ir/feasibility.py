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
from typing import Any

import numpy as np

from ..errors import FeascompError, Loc
from .types import TensorType

FAMILY_KINDS = ("const", "param", "target")  # any other kind names a function primitive
PLAN_ATTRS = ("colour", "layer")  # set by passes; every other family attribute is a primitive option


@dataclasses.dataclass(frozen=True)
class BroadcastMap:
    """edge[i_0, ..., i_k] = src[i_{s_0}, ..., i_{s_m}]: a transpose followed by a broadcast.

    ``src_axes[j]`` is the edge axis that source axis j runs along. Text: einsum letters,
    e.g. ``bcast "cb->abc"`` (source axis 0 is edge axis 2, source axis 1 is edge axis 1).
    """

    src_axes: tuple[int, ...]
    kind = "bcast"

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

    def apply(self, xp, src, edge_shape):
        order = sorted(range(len(self.src_axes)), key=lambda j: self.src_axes[j])
        t = xp.transpose(src, order) if order != list(range(len(order))) else src
        full = [1] * len(edge_shape)
        for j in order:
            full[self.src_axes[j]] = src.shape[j]
        return xp.broadcast_to(xp.reshape(t, full), tuple(edge_shape))

    def transpose(self, xp, edge):
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
        return {k: v for k, v in self.attrs if k not in PLAN_ATTRS and k not in ("kind", "init")}

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
    map: BroadcastMap
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
    for g in m.groups:
        for name in g.members:
            f = seen.get(name)
            if f is None or f.kind != g.kind or f.attr("colour") != g.colour:
                raise FeascompError(f"group @{g.name}: %{name} is not a {g.kind} family of colour {g.colour}", where)
