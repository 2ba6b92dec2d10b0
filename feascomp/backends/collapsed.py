"""The collapsed lowering (AP): the big edge families of dot-like products are not stored.

Under AP every step is P1(P0(z)) and every edge joins the two colours. Take a family D
whose primitive has a ``linear_rule`` (dot) and whose ports are each fed by one edge with a
broadcast map (a dense layer ``x @ W``: ``x[b, i] -> [b, j, i]``, ``W[i, j] -> [b, j, i]``).
D's producers all lie in the other colour, so D's in-edges are written by two projections
only, alternately:

- the producers' colour writes ``a = Ma(va)``, ``b = Mb(vb)`` (each producer's new value
  through its map);
- D's projection writes ``a' = c_aa a + c_ab b + c_ae e1``, ``b' = c_ba a + c_bb b + c_be e1``
  with per-node coefficients (dot: Theorem 7, ``linear_rule``).

So the edges are stored as (va, vb, coefficients): the producers' values and six per-node
scalars instead of two ``[nodes, fan-in]`` arrays. What reads them is a contraction:

- D's projection needs the per-node inner products |a|², |b|², <a, b> (einsums of va, vb:
  for a dense layer ``rowsum(x²)``, ``colsum(W²)``, ``x @ W``);
- a producer's consensus (the mean of its out-edges) needs ``Ma^T(a')``, a sum of einsums of
  the coefficients with va, vb and e1 (for W: ``W * colsum(c_bb) + x^T c_ba``).

One AP step then costs matmuls of the size of a forward and a backward pass, with memory
O(values + parameters) instead of O(edges): the same iterates in exact arithmetic (the design
guide's collapsed lowering). In floating point the per-node norms |a ± b|² come from inner
products, which loses relative accuracy where a ≈ ∓b (tests check agreement with the
materialized lowering in float64). Not for DR or DM (their iterates are not the output of
the last projection), CP over layers, warm starts or monitoring; families that do not
qualify (convolutions, gathers, concatenated ports) stay materialized.
"""
from __future__ import annotations

import dataclasses
import math
import string

from ..ir.feasibility import BroadcastMap, Edge
from .materialized import Program


@dataclasses.dataclass
class _Collapsed:
    name: str
    edges: list  # one edge per port, in port order
    labels: list  # per port: the producer's axes as einsum letters
    node: str  # node axes' letters
    port: str  # the port axis' letter
    node_shape: tuple
    length: int  # port length

    def key(self, k: int) -> str:
        return f"{self.name}#{self.edges[k].port}"

    @property
    def coef_key(self) -> str:
        return f"{self.name}#coef"


class CollapsedProgram(Program):
    """A :class:`Program` in which qualifying dot families keep (va, vb, coefficients)."""

    def __init__(self, plan, **kw):
        super().__init__(plan, **kw)
        if len(self.classes) != 2:
            raise ValueError("the collapsed lowering needs a two-colour schedule (AP)")
        self.collapsed: dict[str, _Collapsed] = {}
        for name, info in self.info.items():
            c = self._collapsible(info)
            if c is not None:
                self.collapsed[name] = c
        # a collapsed family is projected on its own, not stacked with others
        for name in list(self.group_of):
            group = [n for n in self.group_of[name] if n not in self.collapsed]
            if name in self.collapsed or len(group) < 2:
                del self.group_of[name]
            else:
                self.group_of[name] = group
        self.collapsed_edges = {e.key: (c, k) for c in self.collapsed.values() for k, e in enumerate(c.edges)}

    def _collapsible(self, info) -> _Collapsed | None:
        f = info.family
        if not f.is_function or info.prim.linear_rule is None or not info.out:
            return None
        edges = []
        for _, n, es in info.in_ports:
            if not n or len(es) != 1:
                return None
            e = es[0]
            rank = len(e.type.shape)
            if not isinstance(e.map, BroadcastMap) or rank - 1 not in e.map.src_axes or rank > 26:
                return None
            if self.info[e.src].family.type.dtype == "i32":
                return None
            edges.append(e)
        rank = len(edges[0].type.shape)
        letters = string.ascii_lowercase[:rank]
        return _Collapsed(
            name=f.name,
            edges=edges,
            labels=["".join(letters[k] for k in e.map.src_axes) for e in edges],
            node=letters[:-1],
            port=letters[-1],
            node_shape=tuple(f.type.shape),
            length=int(edges[0].type.shape[-1]),
        )

    # the representation ---------------------------------------------------------------------
    def _value(self, c: _Collapsed, k: int, z: dict, data: dict):
        """The value producer k wrote (an elided input: the data)."""
        e = c.edges[k]
        return data[e.src] if e.key in self.elided else z[c.key(k)]

    def _identity(self, xp, c: _Collapsed, dtype):
        ports = len(c.edges)
        eye = xp.eye(ports, ports + 1, dtype=dtype)  # [port, term]: port k = x_k
        return xp.broadcast_to(eye.reshape((ports, ports + 1) + (1,) * len(c.node_shape)), (ports, ports + 1) + c.node_shape)

    def _first(self, xp, c: _Collapsed, dtype):
        return (xp.arange(c.length) == 0).astype(dtype)

    def _einsum_to(self, xp, c: _Collapsed, operands, out: str):
        spec = ",".join(lab for _, lab in operands) + "->" + out
        return xp.einsum(spec, *[v for v, _ in operands])

    def _inner(self, xp, c: _Collapsed, v1, l1: str, v2, l2: str):
        """Per node: <M1(v1), M2(v2)> over the port axis, broadcast to the node shape."""
        out = "".join(x for x in c.node if x in l1 or x in l2)
        r = self._einsum_to(xp, c, [(v1, l1), (v2, l2)], out)
        shape = tuple(s if x in out else 1 for x, s in zip(c.node, c.node_shape))
        return xp.broadcast_to(xp.reshape(r, shape), c.node_shape)

    def materialize(self, xp, c: _Collapsed, k: int, z: dict, data: dict):
        """Port k's edge values (for reading them as a whole: distances, tests)."""
        coef = z[c.coef_key]
        shape = c.node_shape + (c.length,)
        total = coef[k, -1][..., None] * self._first(xp, c, coef.dtype)
        for j, e in enumerate(c.edges):
            total = total + coef[k, j][..., None] * e.map.apply(xp, self._value(c, j, z, data), shape, data)
        return total

    # hooks of Program -------------------------------------------------------------------------
    def init_edges(self, xp, vals: dict, data: dict) -> dict:
        z = {e.key: e.map.apply(xp, vals[e.src], e.type.shape, data)
             for e in self.plan.edges if e.key not in self.elided and e.key not in self.collapsed_edges}
        for c in self.collapsed.values():
            for k, e in enumerate(c.edges):
                if e.key not in self.elided:
                    z[c.key(k)] = vals[e.src]
            z[c.coef_key] = self._identity(xp, c, z[c.key(0)].dtype if c.key(0) in z else data[c.edges[0].src].dtype)
        return z

    def _edge(self, xp, e: Edge, z: dict, data: dict):
        if e.key in self.collapsed_edges:
            c, k = self.collapsed_edges[e.key]
            return self.materialize(xp, c, k, z, data)
        return super()._edge(xp, e, z, data)

    def _transpose_edge(self, xp, e: Edge, z: dict, data: dict):
        if e.key not in self.collapsed_edges:
            return super()._transpose_edge(xp, e, z, data)
        c, k = self.collapsed_edges[e.key]
        coef = z[c.coef_key][k]
        out = c.labels[k]
        total = self._einsum_to(xp, c, [(coef[-1], c.node), (self._first(xp, c, coef.dtype), c.port)], out)
        for j in range(len(c.edges)):
            total = total + self._einsum_to(xp, c, [(coef[j], c.node), (self._value(c, j, z, data), c.labels[j])], out)
        return total

    def _write_out(self, xp, info, value, new: dict, data: dict):
        plain = [e for e in info.out if e.key not in self.collapsed_edges]
        for e in plain:
            if e.key not in self.elided:
                new[e.key] = e.map.apply(xp, value, e.type.shape, data)
        for e in info.out:
            if e.key in self.collapsed_edges:
                c, k = self.collapsed_edges[e.key]
                if e.key not in self.elided:
                    new[c.key(k)] = value
                new[c.coef_key] = self._identity(xp, c, value.dtype)

    def project_families(self, xp, names, z: dict, data: dict) -> dict:
        rest = [n for n in names if n not in self.collapsed]
        new = super().project_families(xp, rest, z, data)
        for name in names:
            if name in self.collapsed:
                self._project_collapsed(xp, self.collapsed[name], z, new, data)
        return new

    def _project_collapsed(self, xp, c: _Collapsed, z: dict, new: dict, data: dict):
        """D's projection from the inner products of its inputs. Its in-edges hold the
        producers' values here (AP: the other colour was projected last, or the forward
        pass initialised them), so the coefficients restart from the identity."""
        info = self.info[c.name]
        vals = [self._value(c, k, z, data) for k in range(len(c.edges))]
        n = len(vals)
        gram = [self._inner(xp, c, vals[k], c.labels[k], vals[k], c.labels[k]) for k in range(n)]
        gram += [self._inner(xp, c, vals[i], c.labels[i], vals[j], c.labels[j]) for i in range(n) for j in range(i + 1, n)]
        deg = self.degree(info, data)
        ybar = self._mean_out(xp, info, z, data, deg)
        if info.has_unused:
            ins = [e.map.apply(xp, v, c.node_shape + (c.length,), data) for e, v in zip(c.edges, vals)]
            ybar = xp.where(xp.asarray(deg) > 0, ybar, info.prim.forward(*ins))
        coef, y = info.prim.linear_rule(xp, info.prim.opts, tuple(gram), ybar, self._weight(xp, deg, ybar.dtype))
        new[c.coef_key] = xp.stack([xp.stack([xp.broadcast_to(t, c.node_shape) for t in row]) for row in coef])
        self._write_out(xp, info, y, new, data)

    # sizes and residuals ----------------------------------------------------------------------
    def state_bytes(self, itemsize: int | None = None) -> int:
        import numpy as np

        size = itemsize or np.dtype(self.dtype).itemsize
        count = sum(math.prod(e.type.shape) for e in self.plan.edges
                    if e.key not in self.elided and e.key not in self.collapsed_edges)
        for c in self.collapsed.values():
            ports = len(c.edges)
            count += ports * (ports + 1) * math.prod(c.node_shape)
            count += sum(math.prod(self.info[e.src].family.type.shape) for e in c.edges if e.key not in self.elided)
        return count * size

    def distance(self, xp, a: dict, b: dict, data: dict):
        """|a - b| over the edges the states represent. A collapsed port's difference is
        sum_t d_t X_t over the vectors X_t it combines (the producers' values through their
        maps, in either state, and e1; a value both states share counts once), so its
        squared norm is d^T G d with G the per-node inner products: matmuls, like the
        projection, instead of a pass over the edges. (It is clamped at 0 per node: in
        floating point the quadratic form carries rounding of order eps * |d|² |G|.)"""
        rep = {c.coef_key for c in self.collapsed.values()} | {c.key(k) for c in self.collapsed.values() for k in range(len(c.edges))}
        sq = 0.0
        for k in a:
            if k in b and k not in rep:
                sq = sq + xp.sum((a[k] - b[k]) ** 2)
        for c in self.collapsed.values():
            for k, e in enumerate(c.edges):
                if e.key not in self.elided:  # as in the materialized lowering: over stored edges
                    sq = sq + xp.sum(self._port_distance2(xp, c, k, a, b, data))
        return xp.sqrt(sq)

    def _port_distance2(self, xp, c: _Collapsed, k: int, a: dict, b: dict, data: dict):
        """Per node: |port k's edges in a - port k's edges in b|²."""
        coef_a, coef_b = a[c.coef_key][k], b[c.coef_key][k]
        first = self._first(xp, c, coef_a.dtype)
        vectors: list = [(first, c.port)]  # (value, its einsum labels)
        weights: list = [coef_a[-1] - coef_b[-1]]
        for state, coef, sign in ((a, coef_a, 1), (b, coef_b, -1)):
            for j in range(len(c.edges)):
                v = self._value(c, j, state, data)
                at = next((t for t, (u, lab) in enumerate(vectors) if u is v and lab == c.labels[j]), None)
                if at is None:
                    vectors.append((v, c.labels[j]))
                    weights.append(sign * coef[j])
                else:
                    weights[at] = weights[at] + sign * coef[j]
        total = 0.0
        for s in range(len(vectors)):
            for t in range(s, len(vectors)):
                g = self._inner(xp, c, *vectors[s], *vectors[t])
                total = total + (1 if s == t else 2) * weights[s] * weights[t] * g
        return xp.maximum(total, 0)
