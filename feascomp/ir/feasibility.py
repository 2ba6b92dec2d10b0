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


from ..errors import FeascompError, Loc
from .maps import (MAP_KINDS, STEP_KINDS, BroadcastMap, ChainMap, Expand, Gather, Permute, Place, Reshape,  # noqa: F401
                   Slice, Window, make_map, sum_axes)
from .printer import print_feasibility
from .types import TensorType

FAMILY_KINDS = ("const", "param", "target")  # any other kind names a function primitive
PLAN_ATTRS = ("colour", "layer")  # set by passes
NOTE_ATTRS = ("spec",)  # a dot family's contraction (einsum or conv parameters), for readers
# every other family attribute is a primitive option





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
        return {k: v for k, v in self.attrs if k not in PLAN_ATTRS + NOTE_ATTRS and k not in ("kind", "init", "rows")}

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
    if not targets:
        raise FeascompError("a feasibility module needs a target family, found none", where)
    kinds = {f.attr("kind") for f in targets}
    if len(kinds) != 1 or len({f.port_length("logits") for f in targets}) != 1:
        raise FeascompError("the target families (one per position of a sequence model) must share one loss "
                            "and one number of classes", where)
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
