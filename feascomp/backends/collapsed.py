"""The collapsed lowering: the big edge families of dot-like products are not stored.

Take a family D whose primitive has a ``linear_rule`` (dot) and whose ports are each fed by
one edge with a broadcast map (a dense layer ``x @ W``: ``x[b, i] -> [b, j, i]``,
``W[i, j] -> [b, j, i]``). With two colours, D's producers all lie in the other colour than
D, so D's in-edges change in two ways only:

- a projection of the producers' colour writes ``a = Ma(va)``, ``b = Mb(vb)`` (each
  producer's new value through its map);
- D's projection writes ``a' = c_aa a + c_ab b + c_ae e1``, ``b' = c_ba a + c_bb b + c_be e1``
  with per-node coefficients (dot: Theorem 7, ``linear_rule``);

and the algorithms add states linearly (DR's ``2 P0(z) - z``, ...). So every state's copies
of port k are ``sum_t C_k[t] X_t`` over a *basis* of the producers' values through their
maps (one slot per value a producer has written) and e1, with per-node coefficients C. The
state keeps the slots' values and the coefficients instead of the ``[nodes, fan_in]``
arrays. What reads the edges is a contraction:

- D's projection needs the per-node inner products of its ports: quadratic forms in C over
  the basis' inner products (einsums of the slot values: for a dense layer ``rowsum(x²)``,
  ``colsum(W_s W_t)``, ``x @ W_s``); it composes C with its coefficients;
- a producer's consensus (the mean of its out-edges) is ``sum_t Ma^T(C[t] X_t)``, einsums of
  C with the slot values (for W: ``W_s * colsum(C_s) + x^T C_x``).

Slots. Under AP no other state is alive when a producer writes, so one slot per port is
overwritten, and D's projection finds its ports at one-hot coefficients: a step costs the
matmuls of a forward and a backward pass. DR and DM combine states across projections: each
producer-colour projection of an update writes its own slot (1 + K x projections per step
+ the shadow's), so the basis grows with the step count -- O(K) memory for the slot values
and O(K²) per-node work for the quadratic forms. That beats the materialized lowering only
for small K (measured: DR on 784-128-10 at K = 10, not at K = 50 or on deeper nets;
docs/performance.md). Linear combinations act on the coefficients (``combine``); slot
values and cached inner products agree wherever two states both hold them (each slot is
written once) and are 0 where a state does not, so they merge elementwise -- along a chain
of states; DM with β ≠ 1 combines sibling branches, and there the cache is recomputed.

The same iterates in exact arithmetic; in floating point the per-node norms come from inner
products, which loses relative accuracy where a port's terms cancel (e.g. a ≈ -b) --
tests check agreement with the materialized lowering in float64. Not for warm starts or
per-family monitoring; families that do not qualify (convolutions, gathers, concatenated
ports) stay materialized.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import string

import jax
import numpy as np

from ..ir.feasibility import BroadcastMap, Edge
from .materialized import Program


def _set_index(xp, arr, index, value, axis: int):
    """``arr`` with entry ``index`` (an int or a traced scalar) of ``axis`` replaced by
    ``value``: an in-place dynamic update under jit (a select over the whole array would be
    a pass over every slot)."""
    if xp is np:
        out = arr.copy()
        out[(slice(None),) * axis + (index,)] = value
        return out
    from jax import lax

    return lax.dynamic_update_index_in_dim(arr, xp.asarray(value, arr.dtype), index, axis)


class _State(dict):
    """A state (edges, slot values, coefficients, cached products) that knows which
    projections of the current step wrote into it (``written``: tokens, at trace time). In a
    chain of states the one whose ``written`` contains every other's holds every slot the
    others hold, so combining reads its slots instead of merging them. A JAX pytree whose
    structure is its keys only: across ``lax.scan``'s carry ``written`` starts empty."""

    def __init__(self, items=(), written: frozenset = frozenset()):
        super().__init__(items)
        self.written = written


def _flatten_state(s: _State):
    keys = tuple(sorted(s))
    return tuple(s[k] for k in keys), keys


def _unflatten_state(keys, values) -> _State:
    return _State(zip(keys, values))


jax.tree_util.register_pytree_node(_State, _flatten_state, _unflatten_state)


@dataclasses.dataclass
class _Collapsed:
    name: str
    edges: list  # one edge per port, in port order
    labels: list  # per port: the producer's axes as einsum letters
    node: str  # node axes' letters
    port: str  # the port axis' letter
    node_shape: tuple
    length: int  # port length
    slots: list  # per port: slots of its basis (1 for an input: its value never changes)
    offsets: list  # per port: where its slots start in the coefficient axis (e1 is last)

    @property
    def terms(self) -> int:
        return sum(self.slots) + 1

    def value_key(self, k: int) -> str:
        return f"{self.name}#{self.edges[k].port}"

    def coef_key(self, k: int) -> str:
        return f"{self.name}#coef:{self.edges[k].port}"

    def gram_key(self, i: int, j: int) -> str:
        """The inner products of basis i's slots with basis j's (i <= j; basis len(ports) is e1)."""
        return f"{self.name}#gram:{i}:{j}"

    def out_labels(self, li: str, lj: str) -> str:
        return "".join(x for x in self.node if x in li or x in lj)


def count_projections(algorithm) -> tuple[dict, dict, bool, bool]:
    """A dry run of one step and the shadow with a counting projection: how often each
    projects onto each class, whether the algorithm combines states, and whether every
    combination is of a chain of states (each operand's projections contain the others':
    DR, DM with β = 1) rather than of sibling branches (DM with β ≠ 1)."""
    calls: list = []
    combined = []
    chain = [True]

    def project(c, z):
        calls.append(c)
        return {"v": z["v"], "w": z["w"] | {object()}}

    def combine(fn, *states):
        combined.append(True)
        union = frozenset().union(*(s["w"] for s in states))
        chain[0] = chain[0] and any(s["w"] == union for s in states)
        return {"v": fn(*(s["v"] for s in states)), "w": union}

    z = {"v": 1.0, "w": frozenset()}
    algorithm.step(np, project, z, distance=lambda a, b: 0.0, combine=combine)
    per_step = collections.Counter(calls)
    calls.clear()
    algorithm.shadow(project, z, combine=combine)
    return dict(per_step), dict(collections.Counter(calls)), bool(combined), chain[0]


class CollapsedProgram(Program):
    """A :class:`Program` in which qualifying dot families keep slot values and coefficients."""

    def __init__(self, plan, *, algorithm, steps: int, **kw):
        super().__init__(plan, **kw)
        if len(self.classes) != 2:
            raise ValueError("the collapsed lowering needs a two-colour schedule")
        self.per_step, per_shadow, self.combines, chain = count_projections(algorithm)
        # cached inner products merge like slot values only along a chain of states; where
        # sibling branches each wrote a slot, the pair's product is in neither: recompute
        self.recompute_gram = self.combines and not chain
        # slots a producer colour c writes in one update: the forward pass's, then one per
        # projection of c (each its own under DR/DM; overwritten in place under AP/CP)
        self.writes = {c: 1 + steps * self.per_step.get(c, 0) + per_shadow.get(c, 0) for c in range(2)}
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
        self.value_keys = {c.value_key(k) for c in self.collapsed.values() for k in range(len(c.edges))}
        self.coef_keys = {c.coef_key(k) for c in self.collapsed.values() for k in range(len(c.edges))}
        self.gram_keys = {c.gram_key(i, j) for c in self.collapsed.values()
                          for i in range(len(c.edges) + 1) for j in range(i, len(c.edges) + 1) if not i == j == len(c.edges)}

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
            if not isinstance(e.map, BroadcastMap) or rank - 1 not in e.map.src_axes or rank > 24:
                return None
            if self.info[e.src].family.type.dtype == "i32":
                return None
            edges.append(e)
        rank = len(edges[0].type.shape)
        letters = string.ascii_lowercase[:rank]
        colour = {n: i for i, names in enumerate(self.classes) for n in names}
        slots = []
        for e in edges:
            const = self.info[e.src].family.kind == "const"
            slots.append(1 if const or not self.combines else self.writes[colour[e.src]])
        return _Collapsed(
            name=f.name,
            edges=edges,
            labels=["".join(letters[k] for k in e.map.src_axes) for e in edges],
            node=letters[:-1],
            port=letters[-1],
            node_shape=tuple(f.type.shape),
            length=int(edges[0].type.shape[-1]),
            slots=slots,
            offsets=[sum(slots[:k]) for k in range(len(slots))],
        )

    def write_slot(self, c: int, step, call: int):
        """The slot the ``call``-th projection onto class c of step ``step`` writes (step K:
        the shadow after the last step)."""
        if not self.combines:
            return 0
        return 1 + step * self.per_step.get(c, 0) + call

    # the representation ---------------------------------------------------------------------
    def _bases(self, xp, c: _Collapsed, z: dict, data: dict, dtype):
        """Per port's basis, then e1: (values with a leading slot axis, einsum labels, offset)."""
        out = []
        for k, e in enumerate(c.edges):
            v = data[e.src][None] if self.info[e.src].family.kind == "const" else z[c.value_key(k)]
            out.append((v, c.labels[k], c.offsets[k]))
        out.append((self._first(xp, c, dtype)[None], c.port, c.terms - 1))
        return out

    def _is_const(self, c: _Collapsed, offset: int) -> bool:
        """Whether the basis starting at ``offset`` is an input's (its value is the data)."""
        return any(o == offset and self.info[e.src].family.kind == "const" for e, o in zip(c.edges, c.offsets))

    def _first(self, xp, c: _Collapsed, dtype):
        return (xp.arange(c.length) == 0).astype(dtype)

    def _onehot(self, xp, c: _Collapsed, term, dtype):
        """Coefficients selecting one term: [terms] + node shape."""
        hot = (xp.arange(c.terms) == term).astype(dtype)
        return xp.broadcast_to(xp.reshape(hot, (c.terms,) + (1,) * len(c.node_shape)), (c.terms,) + c.node_shape)

    def _block(self, xp, c: _Collapsed, bi, bj):
        """Inner products of two bases' slots: [slots_i, slots_j] + their node axes."""
        (vi, li, _), (vj, lj, _) = bi, bj
        return xp.einsum(f"Y{li},Z{lj}->YZ{c.out_labels(li, lj)}", vi, vj)

    def _quadratic(self, xp, c: _Collapsed, bases, pairs, block):
        """Per node, for each (C1, C2) in ``pairs``: <sum_t C1[t] X_t, sum_u C2[u] X_u>, from
        the bases' inner products ``block(i, j)`` (i <= j), shared by every pair."""
        totals = [0.0] * len(pairs)
        node = c.node
        for i, (vi, li, oi) in enumerate(bases):
            for j, (vj, lj, oj) in enumerate(bases):
                if j < i:
                    continue
                out = c.out_labels(li, lj)
                g = block(i, j)
                si, sj = vi.shape[0], vj.shape[0]
                def form(ca, cb):
                    """sum_y sum_z Ca[y] G[y, z] Cb[z] per node. A block over every node
                    axis is applied elementwise (as an einsum it is one tiny matrix product
                    per node, which XLA on CPU runs ~10x slower), a shared one (W's, per
                    unit) as an einsum."""
                    if out == node:
                        inner = xp.sum(g * cb[None], axis=1)
                    else:
                        inner = xp.einsum(f"YZ{out},Z{node}->Y{node}", g, cb)
                    return xp.sum(ca * inner, axis=0)

                for p, (c1, c2) in enumerate(pairs):
                    t = form(c1[oi : oi + si], c2[oj : oj + sj])
                    if j != i:
                        t = t + form(c2[oi : oi + si], c1[oj : oj + sj])
                    totals[p] = totals[p] + t
        return [xp.broadcast_to(t, c.node_shape) for t in totals]

    def _node_block(self, xp, c: _Collapsed, g, li: str, lj: str):
        """A per-node inner product over the labels both bases carry, broadcast to nodes."""
        out = c.out_labels(li, lj)
        shape = tuple(n if x in out else 1 for x, n in zip(c.node, c.node_shape))
        return xp.broadcast_to(xp.reshape(g, shape), c.node_shape)

    def _cached(self, xp, c: _Collapsed, z: dict):
        """``block`` reading a state's cached inner products (e1 with itself is 1)."""
        one = len(c.edges)

        def block(i, j):
            if i == j == one:
                return xp.ones((1, 1), z[c.coef_key(0)].dtype)
            return z[c.gram_key(i, j)]

        return block

    def _update_gram(self, xp, c: _Collapsed, z: dict, data: dict, ports, slot, dtype):
        """After ports ``ports`` wrote slot ``slot``: their rows and columns of the cached
        inner products (against every basis' current slots, so two ports written together
        see each other's new values)."""
        bases = self._bases(xp, c, z, data, dtype)
        for k in ports:
            vk, lk, _ = bases[k]
            new = xp.take(vk, slot, axis=0) if not isinstance(slot, int) else vk[slot]
            for j, (vj, lj, _) in enumerate(bases):
                i0, j0 = min(k, j), max(k, j)
                key = c.gram_key(i0, j0)
                g = z[key]
                if k <= j:  # row ``slot`` of block (k, j)
                    row = xp.einsum(f"{lk},Z{lj}->Z{c.out_labels(lk, lj)}", new, vj)
                    g = row[None] if g.shape[0] == 1 else _set_index(xp, g, slot, row, 0)
                # column ``slot`` of block (j, k); with one slot per port it is the row that
                # j (written in this projection too, before k) or k itself already set
                if k >= j and not (g.shape[0] == 1 and (k == j or j in ports)):
                    col = xp.einsum(f"Y{lj},{lk}->Y{c.out_labels(lj, lk)}", vj, new)
                    g = col[:, None] if g.shape[1] == 1 else _set_index(xp, g, slot, col, 1)
                z[key] = g

    def materialize(self, xp, c: _Collapsed, k: int, z: dict, data: dict):
        """Port k's edge values (to read them as a whole: tests, fallbacks)."""
        coef = z[c.coef_key(k)]
        total = 0.0
        for v, lab, off in self._bases(xp, c, z, data, coef.dtype):
            total = total + xp.einsum(f"Y{c.node},Y{lab}->{c.node}{c.port}", coef[off : off + v.shape[0]], v)
        return xp.broadcast_to(total, c.node_shape + (c.length,))

    # hooks of Program -------------------------------------------------------------------------
    def init_edges(self, xp, vals: dict, data: dict, spare: dict | None = None) -> dict:
        """``spare`` is unused: this lowering fuses nothing (Program.init_edges)."""
        z = {e.key: e.map.apply(xp, vals[e.src], e.type.shape, data)
             for e in self.plan.edges if e.key not in self.elided and e.key not in self.collapsed_edges}
        for c in self.collapsed.values():
            for k, e in enumerate(c.edges):
                v = vals[e.src]
                if self.info[e.src].family.kind != "const":
                    z[c.value_key(k)] = xp.concatenate([v[None], xp.zeros((c.slots[k] - 1,) + v.shape, v.dtype)])
                z[c.coef_key(k)] = self._onehot(xp, c, c.offsets[k], v.dtype)
            self._all_blocks(xp, c, z, data)
        return _State(z) if self.combines else z

    def _all_blocks(self, xp, c: _Collapsed, z: dict, data: dict):
        bases = self._bases(xp, c, z, data, z[c.coef_key(0)].dtype)
        for i in range(len(bases)):
            for j in range(i, len(bases)):
                if not i == j == len(c.edges):
                    z[c.gram_key(i, j)] = self._block(xp, c, bases[i], bases[j])

    def _edge(self, xp, e: Edge, z: dict, data: dict):
        if e.key in self.collapsed_edges:
            c, k = self.collapsed_edges[e.key]
            return self.materialize(xp, c, k, z, data)
        return super()._edge(xp, e, z, data)

    def _transpose_edge(self, xp, e: Edge, z: dict, data: dict):
        if e.key not in self.collapsed_edges:
            return super()._transpose_edge(xp, e, z, data)
        c, k = self.collapsed_edges[e.key]
        coef = z[c.coef_key(k)]
        total = 0.0
        target = c.labels[k]
        for v, lab, off in self._bases(xp, c, z, data, coef.dtype):
            cs = coef[off : off + v.shape[0]]
            if lab == target:
                # a basis on the producer's own axes (W's slots for W): the coefficients
                # summed over the other node axes (a contraction with ones: XLA on CPU
                # reduces leading axes slowly), then each slot scaled, unrolled
                keep = "".join(x for x in c.node if x in target)
                other = "".join(x for x in c.node if x not in target)
                if other:
                    ones = [xp.ones((n,), cs.dtype) for x, n in zip(c.node, c.node_shape) if x not in target]
                    cs = xp.einsum(f"Y{c.node}," + ",".join(other) + f"->Y{keep}", cs, *ones)
                for y in range(v.shape[0]):
                    total = total + xp.einsum(f"{keep},{lab}->{target}", cs[y], v[y])
            else:
                total = total + xp.einsum(f"Y{c.node},Y{lab}->{target}", cs, v)
        return total

    def _write_out(self, xp, info, value, new: dict, data: dict, write=0):
        for e in info.out:
            if e.key in self.collapsed_edges:
                c, k = self.collapsed_edges[e.key]
                if self.info[e.src].family.kind == "const":
                    slot = 0
                else:
                    slot = write
                    if c.slots[k] == 1:
                        new[c.value_key(k)] = value[None]
                    else:
                        new[c.value_key(k)] = _set_index(xp, new[c.value_key(k)], slot, value, 0)
                new[c.coef_key(k)] = self._onehot(xp, c, c.offsets[k] + slot, value.dtype)
            elif e.key not in self.elided:
                new[e.key] = e.map.apply(xp, value, e.type.shape, data)

    def project(self, xp, c: int, z: dict, data: dict, write=0) -> dict:
        new = super().project(xp, c, z, data, write)
        if not self.combines:
            return new
        return _State(new, getattr(z, "written", frozenset()) | {object()})

    def project_families(self, xp, names, z: dict, data: dict, write=0) -> dict:
        rest = [n for n in names if n not in self.collapsed]
        new = super().project_families(xp, rest, z, data, write)
        here = set(names)
        for c in self.collapsed.values():
            ports = [k for k, e in enumerate(c.edges) if e.src in here and self.info[e.src].family.kind != "const"]
            if ports:
                self._update_gram(xp, c, new, data, ports, write, new[c.coef_key(0)].dtype)
        for name in names:
            if name in self.collapsed:
                self._project_collapsed(xp, self.collapsed[name], z, new, data, write)
        return new

    def _project_collapsed(self, xp, c: _Collapsed, z: dict, new: dict, data: dict, write):
        """D's projection from the inner products of its ports; the new coefficients are the
        projection's (in terms of the ports) composed with the ports' own."""
        info = self.info[c.name]
        coefs = [z[c.coef_key(k)] for k in range(len(c.edges))]
        dtype = coefs[0].dtype
        bases = self._bases(xp, c, z, data, dtype)
        n = len(coefs)
        pairs = [(k, k) for k in range(n)] + [(i, j) for i in range(n) for j in range(i + 1, n)]
        if self.combines:
            gram = self._quadratic(xp, c, bases, [(coefs[i], coefs[j]) for i, j in pairs], self._cached(xp, c, z))
        else:
            # AP: the producers were projected last (or the forward pass initialised the
            # edges), so each port is its producer's one value: the inner products are the
            # cached blocks themselves
            gram = [self._node_block(xp, c, z[c.gram_key(i, j)][0, 0], c.labels[i], c.labels[j]) for i, j in pairs]
        deg = self.degree(info, data)
        ybar = self._mean_out(xp, info, z, data, deg)
        if info.has_unused:
            ins = [self.materialize(xp, c, k, z, data) for k in range(n)]
            ybar = xp.where(xp.asarray(deg) > 0, ybar, info.prim.forward(*ins))
        coef, y = info.prim.linear_rule(xp, info.prim.opts, tuple(gram), ybar, self._weight(xp, deg, ybar.dtype))
        if not self.combines:  # ports at their one-hot coefficients: the projection's own
            for k in range(n):
                new[c.coef_key(k)] = xp.stack([xp.broadcast_to(t, c.node_shape) for t in coef[k]])
        else:
            e1 = self._onehot(xp, c, c.terms - 1, dtype)
            for k in range(n):
                new[c.coef_key(k)] = sum(coef[k][j][None] * coefs[j] for j in range(n)) + coef[k][-1][None] * e1
        self._write_out(xp, info, y, new, data, write)

    # the algorithms' arithmetic ---------------------------------------------------------------
    def combine(self, xp, data, fn, *states):
        """``fn`` (linear) applied to the states: to edges and coefficients leaf by leaf. Slot
        values and cached products are taken from the state that holds every slot the others
        hold (a chain: DR, DM with β = 1); otherwise they merge (each slot is written once,
        and is 0 in a state that does not hold it)."""
        written = [getattr(s, "written", frozenset()) for s in states]
        union = frozenset().union(*written)
        # along a chain one state holds every slot the others hold: its slots are the merge
        latest = next((s for s, w in zip(states, written) if w == union), None)
        out = _State(written=union)
        for key in states[0]:
            leaves = [s[key] for s in states]
            if key in self.value_keys or key in self.gram_keys:
                if latest is not None:
                    out[key] = latest[key]
                    continue
                merged = leaves[0]
                for other in leaves[1:]:
                    merged = xp.where(merged == 0, other, merged)
                out[key] = merged
            else:
                out[key] = fn(*leaves)
        if self.recompute_gram:
            for c in self.collapsed.values():
                self._all_blocks(xp, c, out, data)
        return out

    def distance(self, xp, a: dict, b: dict, data: dict):
        """|a - b| over the edges the states represent: a collapsed port's difference is
        sum_t C_a[t] X_t - sum_u C_b[u] Y_u, and its squared norm the quadratic form of the
        joint coefficients over the joint basis (a basis both states hold counts once: under
        DR/DM the merged slots, under AP the values a projection left in place). Clamped at 0
        per node: it carries rounding of order eps |C|² |G|."""
        sq = 0.0
        for k in a:
            if k in b and k not in self.value_keys and k not in self.coef_keys and k not in self.gram_keys:
                sq = sq + xp.sum((a[k] - b[k]) ** 2)
        if self.combines:  # slots agree where both states hold them: one merged basis
            merged = self.combine(xp, data, lambda x, y: x, a, b)
            values = {k: merged[k] for k in self.value_keys | self.gram_keys if k in merged}
            a, b = {**a, **values}, {**b, **values}
        for c in self.collapsed.values():
            ports = [k for k, e in enumerate(c.edges) if e.key not in self.elided]
            if not ports:
                continue
            dtype = a[c.coef_key(0)].dtype
            bases_a, bases_b = self._bases(xp, c, a, data, dtype), self._bases(xp, c, b, data, dtype)
            bases = list(bases_a)
            where = []  # per basis of b: its index in ``bases``
            for vb, lb, ob in bases_b:
                # the same basis: the same array, or an input's data (its slot never changes), or e1
                at = next((i for i, (va, la, oa) in enumerate(bases_a)
                           if la == lb and oa == ob and (va is vb or ob == c.terms - 1 or self._is_const(c, ob))), None)
                if at is None:
                    bases.append((vb, lb, None))
                    at = len(bases) - 1
                where.append(at)
            # joint coefficients: a's terms, then the terms of b's bases that a does not hold
            offsets, total = [], 0
            for v, _, _ in bases:
                offsets.append(total)
                total += v.shape[0]
            joint_bases = [(v, lab, off) for (v, lab, _), off in zip(bases, offsets)]
            pairs = []
            for k in ports:
                ca, cb = a[c.coef_key(k)], b[c.coef_key(k)]
                parts = [ca[o : o + v.shape[0]] for v, _, o in bases_a] + [0.0] * (len(bases) - len(bases_a))
                for (vb, _, ob), at in zip(bases_b, where):
                    parts[at] = parts[at] - cb[ob : ob + vb.shape[0]]
                d = xp.concatenate(parts, axis=0)
                pairs.append((d, d))
            if len(bases) == len(bases_a):  # b's bases are a's: a's cached products
                block = self._cached(xp, c, a)
            else:
                block = lambda i, j: self._block(xp, c, joint_bases[i], joint_bases[j])  # noqa: E731
            for q in self._quadratic(xp, c, joint_bases, pairs, block):
                sq = sq + xp.sum(xp.maximum(q, 0))
        return xp.sqrt(sq)

    # sizes ----------------------------------------------------------------------------------------
    def family_state_bytes(self, itemsize: int | None = None) -> dict[str, int]:
        """As stored: a collapsed family's coefficients, cached products and slot values
        instead of its in-edges."""
        size = itemsize or np.dtype(self.dtype).itemsize
        out = super().family_state_bytes(itemsize)
        for c in self.collapsed.values():
            out[c.name] = self._collapsed_count(c) * size
        return out

    def _collapsed_count(self, c: _Collapsed) -> int:
        count = len(c.edges) * c.terms * math.prod(c.node_shape)
        sizes = [(s, c.labels[k]) for k, s in enumerate(c.slots)] + [(1, c.port)]
        shape = dict(zip(c.node, c.node_shape))
        count += sum(si * sj * math.prod(shape[x] for x in c.out_labels(li, lj))
                     for i, (si, li) in enumerate(sizes) for j, (sj, lj) in enumerate(sizes) if i <= j and not i == j == len(c.edges))
        count += sum(s * math.prod(self.info[e.src].family.type.shape)
                     for e, s in zip(c.edges, c.slots) if self.info[e.src].family.kind != "const")
        return count
