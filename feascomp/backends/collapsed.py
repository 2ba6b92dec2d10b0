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

The number of slots comes from the algorithm's declared :class:`~feascomp.algorithms.Projections`
(:class:`SlotPlan`); the program's ``projector`` tells each projection which slot it
writes. Each collapsed family is a :class:`CollapsedSlots` storage; :class:`GramForms`
holds its inner-product algebra.

The same iterates in exact arithmetic; in floating point the per-node norms come from inner
products, which loses relative accuracy where a port's terms cancel (e.g. a ≈ -b) --
tests check agreement with the materialized lowering in float64. Not for warm starts or
per-family monitoring. A port whose map has window and reshape steps before the broadcast (a
conv's patches) keeps the producer's *view* in its slots -- the patches, [batch, Ho, Wo,
kh kw C] -- and the steps' transpose (col2im) follows the contraction in the consensus: the
conv's edges, a copy of every patch per output channel, are never formed. Families that do
not qualify (gathers, concatenated
ports) stay materialized.
"""
from __future__ import annotations

import dataclasses
import math
import string

import numpy as np

from ..ir.feasibility import BroadcastMap, Edge
from ..ir.maps import ChainMap, Reshape, Window
from .storage import Storage


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


class SlotPlan:
    """Which slot each projection writes, from the algorithm's declared projections
    (algorithms.Projections) and the steps per update. Under an algorithm that does not
    combine states (AP, CP) every write overwrites slot 0; otherwise each producer-colour
    projection of an update has its own: the forward pass's (0), then one per projection
    of each step, then the shadow's."""

    def __init__(self, projections, steps: int):
        self.combines = projections.combines
        self.per_step = dict(projections.step)
        # cached inner products merge like slot values only along a chain of states; where
        # sibling branches each wrote a slot, the pair's product is in neither: recompute
        self.recompute_gram = projections.combines and not projections.chain
        self.writes = {c: 1 + steps * projections.step.get(c, 0) + projections.shadow.get(c, 0) for c in (0, 1)}

    def slot(self, c: int, step, call: int):
        """The slot the ``call``-th projection onto class c of step ``step`` writes (step K:
        the shadow after the last step)."""
        if not self.combines:
            return 0
        return 1 + step * self.per_step.get(c, 0) + call


@dataclasses.dataclass(frozen=True)
class GramForms:
    """The inner-product algebra of a collapsed family's ports: einsum labels of each
    port's basis, and quadratic forms of per-node coefficients over the bases' inner
    products."""

    labels: tuple  # per port: the producer's axes as einsum letters
    node: str  # node axes' letters
    port: str  # the port axis' letter
    node_shape: tuple

    def out_labels(self, li: str, lj: str) -> str:
        return "".join(x for x in self.node if x in li or x in lj)

    def block(self, xp, bi, bj):
        """Inner products of two bases' slots: [slots_i, slots_j] + their node axes."""
        (vi, li, _), (vj, lj, _) = bi, bj
        return xp.einsum(f"Y{li},Z{lj}->YZ{self.out_labels(li, lj)}", vi, vj)

    def node_block(self, xp, g, li: str, lj: str):
        """A per-node inner product over the labels both bases carry, broadcast to nodes."""
        out = self.out_labels(li, lj)
        shape = tuple(n if x in out else 1 for x, n in zip(self.node, self.node_shape))
        return xp.broadcast_to(xp.reshape(g, shape), self.node_shape)

    def quadratic(self, xp, bases, pairs, block):
        """Per node, for each (C1, C2) in ``pairs``: <sum_t C1[t] X_t, sum_u C2[u] X_u>, from
        the bases' inner products ``block(i, j)`` (i <= j), shared by every pair."""
        totals = [0.0] * len(pairs)
        node = self.node
        for i, (vi, li, oi) in enumerate(bases):
            for j, (vj, lj, oj) in enumerate(bases):
                if j < i:
                    continue
                out = self.out_labels(li, lj)
                g = block(i, j)
                si, sj = vi.shape[0], vj.shape[0]

                def form(ca, cb):
                    """sum_y sum_z Ca[y] G[y, z] Cb[z] per node, as einsums over the slot
                    axes. Written as a product summed over a leading slot axis, XLA CPU
                    0.10's fusions of those reductions took ~14 ms each per DR step on
                    784-128-10 at K = 10, and the einsums 69 -> 38 ms for the whole step
                    (docs/performance.md)."""
                    inner = xp.einsum(f"YZ{out},Z{node}->Y{node}", g, cb)
                    return xp.einsum(f"Y{node},Y{node}->{node}", ca, inner)

                for p, (c1, c2) in enumerate(pairs):
                    t = form(c1[oi : oi + si], c2[oj : oj + sj])
                    if j != i:
                        t = t + form(c2[oi : oi + si], c1[oj : oj + sj])
                    totals[p] = totals[p] + t
        return [xp.broadcast_to(t, self.node_shape) for t in totals]

    def apply(self, xp, coef, v, lab: str):
        """sum_y coef[y] v[y] per node and port entry (a basis' part of a port's values)."""
        return xp.einsum(f"Y{self.node},Y{lab}->{self.node}{self.port}", coef, v)


class CollapsedSlots(Storage):
    """A dot-like family whose in-edges are kept as slot values and coefficients (module
    docstring). State keys: ``name#port`` (a non-input producer's slots), ``name#coef:port``
    ([terms] + node shape) and ``name#gram:i:j`` (cached inner products of bases i <= j;
    basis len(ports) is e1). ``elide``: the input's port takes no part in distances (AP, as
    storage.ElidedInputs)."""

    kind = "collapsed slots"
    stacks = False  # projected on its own, not stacked with its fuse-projections group

    def __init__(self, analysis, info, edges: list[Edge], slots: list[int], plan: SlotPlan, elide: bool):
        super().__init__(analysis, info)
        self.name = info.name
        self.edges = edges  # one per port, in port order
        self.plan = plan
        self.tracks_writes = plan.combines
        self.elide = elide
        rank = len(edges[0].type.shape)
        letters = string.ascii_lowercase[:rank]
        self.forms = GramForms(tuple("".join(letters[k] for k in e.map.final.src_axes) for e in edges), letters[:-1],
                               letters[-1], tuple(info.family.type.shape))
        self.node_shape = self.forms.node_shape
        self.length = int(edges[0].type.shape[-1])  # port length
        self.slots = slots  # per port: slots of its basis (1 for an input: its value never changes)
        self.offsets = [sum(slots[:k]) for k in range(len(slots))]  # where they start in the coefficient axis
        self.const = [analysis.is_const(e.src) for e in edges]
        self.port_of = {e.key: k for k, e in enumerate(edges)}
        n = len(edges)
        self.value_keys = [self.value_key(k) for k in range(n) if not self.const[k]]
        self.coef_keys = [self.coef_key(k) for k in range(n)]
        self.gram_keys = [self.gram_key(i, j) for i in range(n + 1) for j in range(i, n + 1) if not i == j == n]

    @property
    def terms(self) -> int:
        return sum(self.slots) + 1

    def view_shape(self, k: int) -> tuple:
        """The shape of port k's slot values (its producer's value through the map's steps)."""
        e = self.edges[k]
        shape = tuple(self.analysis.info[e.src].family.type.shape)
        return e.map.shapes(shape)[-1]

    def value_key(self, k: int) -> str:
        return f"{self.name}#{self.edges[k].port}"

    def coef_key(self, k: int) -> str:
        return f"{self.name}#coef:{self.edges[k].port}"

    def gram_key(self, i: int, j: int) -> str:
        return f"{self.name}#gram:{i}:{j}"

    def keys(self) -> list[str]:
        return self.value_keys + self.coef_keys + self.gram_keys

    def batch_axis(self, key: str) -> int | None:
        """Slot values [slots] + the producer's shape, coefficients [terms] + nodes, cached
        products [slots, slots] + the node axes either basis carries: the batch is node
        axis 0 (letter ``node[0]``) of a batched family."""
        if self.name not in self.analysis.batched:
            return None
        batch = self.forms.node[0]
        if key in self.coef_keys:
            return 1
        for k in range(len(self.edges)):
            if key == self.value_key(k):
                return 1 if self.edges[k].src in self.analysis.batched else None
        i, j = (int(t) for t in key.rsplit(":", 2)[1:])
        labels = self.forms.labels + (self.forms.port,)
        out = self.forms.out_labels(labels[i], labels[j])
        return 2 + out.index(batch) if batch in out else None

    def unit_axis(self, key: str) -> int | None:
        return None

    # the representation ---------------------------------------------------------------------
    def bases(self, xp, z: dict, data: dict, dtype):
        """Per port's basis, then e1: (values with a leading slot axis, einsum labels, offset)."""
        out = []
        for k, e in enumerate(self.edges):
            v = e.map.apply_steps(xp, data[e.src], data)[None] if self.const[k] else z[self.value_key(k)]
            out.append((v, self.forms.labels[k], self.offsets[k]))
        out.append((self._first(xp, dtype)[None], self.forms.port, self.terms - 1))
        return out

    def _is_const(self, offset: int) -> bool:
        """Whether the basis starting at ``offset`` is an input's (its value is the data)."""
        return any(o == offset and c for c, o in zip(self.const, self.offsets))

    def _first(self, xp, dtype):
        return (xp.arange(self.length) == 0).astype(dtype)

    def _onehot(self, xp, term, dtype):
        """Coefficients selecting one term: [terms] + node shape."""
        hot = (xp.arange(self.terms) == term).astype(dtype)
        shape = (self.terms,) + self.node_shape
        return xp.broadcast_to(xp.reshape(hot, (self.terms,) + (1,) * len(self.node_shape)), shape)

    def _cached(self, xp, z: dict):
        """``block`` reading a state's cached inner products (e1 with itself is 1)."""
        one = len(self.edges)

        def block(i, j):
            if i == j == one:
                return xp.ones((1, 1), z[self.coef_key(0)].dtype)
            return z[self.gram_key(i, j)]

        return block

    def _all_blocks(self, xp, z: dict, data: dict):
        bases = self.bases(xp, z, data, z[self.coef_key(0)].dtype)
        for i in range(len(bases)):
            for j in range(i, len(bases)):
                if not i == j == len(self.edges):
                    z[self.gram_key(i, j)] = self.forms.block(xp, bases[i], bases[j])

    def materialize(self, xp, k: int, z: dict, data: dict):
        """Port k's edge values (to read them as a whole: tests, fallbacks)."""
        coef = z[self.coef_key(k)]
        total = 0.0
        for v, lab, off in self.bases(xp, z, data, coef.dtype):
            total = total + self.forms.apply(xp, coef[off : off + v.shape[0]], v, lab)
        return xp.broadcast_to(total, self.node_shape + (self.length,))

    # the storage interface -----------------------------------------------------------------------
    def init(self, xp, vals: dict, data: dict, z: dict, spare: dict | None = None) -> None:
        for k, e in enumerate(self.edges):
            v = e.map.apply_steps(xp, vals[e.src], data)
            if not self.const[k]:
                z[self.value_key(k)] = xp.concatenate([v[None], xp.zeros((self.slots[k] - 1,) + v.shape, v.dtype)])
            z[self.coef_key(k)] = self._onehot(xp, self.offsets[k], v.dtype)
        self._all_blocks(xp, z, data)

    def read(self, xp, e: Edge, z: dict, data: dict):
        return self.materialize(xp, self.port_of[e.key], z, data)

    def transpose(self, xp, e: Edge, z: dict, data: dict):
        k = self.port_of[e.key]
        coef = z[self.coef_key(k)]
        total = 0.0
        target = self.forms.labels[k]
        node, node_shape = self.forms.node, self.node_shape
        for v, lab, off in self.bases(xp, z, data, coef.dtype):
            cs = coef[off : off + v.shape[0]]
            if lab == target:
                # a basis on the producer's own axes (W's slots for W): the coefficients
                # summed over the other node axes (a contraction with ones: XLA on CPU
                # reduces leading axes slowly), then each slot scaled, unrolled
                keep = "".join(x for x in node if x in target)
                other = "".join(x for x in node if x not in target)
                if other:
                    ones = [xp.ones((n,), cs.dtype) for x, n in zip(node, node_shape) if x not in target]
                    cs = xp.einsum(f"Y{node}," + ",".join(other) + f"->Y{keep}", cs, *ones)
                for y in range(v.shape[0]):
                    total = total + xp.einsum(f"{keep},{lab}->{target}", cs[y], v[y])
            else:
                total = total + xp.einsum(f"Y{node},Y{lab}->{target}", cs, v)
        # from the port's view back to the producer (col2im; nothing for a plain broadcast)
        return e.map.transpose_steps(xp, total, self.analysis.info[e.src].family.type.shape, data)

    def write(self, xp, e: Edge, value, new: dict, data: dict, slot=0) -> None:
        k = self.port_of[e.key]
        value = e.map.apply_steps(xp, value, data)
        if self.const[k]:
            slot = 0
        elif self.slots[k] == 1:
            new[self.value_key(k)] = value[None]
        else:
            new[self.value_key(k)] = _set_index(xp, new[self.value_key(k)], slot, value, 0)
        new[self.coef_key(k)] = self._onehot(xp, self.offsets[k] + slot, value.dtype)

    def put(self, xp, e: Edge, part, new: dict) -> None:
        raise AssertionError("a collapsed family's projection writes its coefficients (CollapsedSlots.project)")

    def after_write(self, xp, new: dict, data: dict, projected: set, slot) -> None:
        """After ports whose producers were projected wrote slot ``slot``: their rows and
        columns of the cached inner products (against every basis' current slots, so two
        ports written together see each other's new values)."""
        ports = [k for k, e in enumerate(self.edges) if e.src in projected and not self.const[k]]
        if not ports:
            return
        bases = self.bases(xp, new, data, new[self.coef_key(0)].dtype)
        out_labels = self.forms.out_labels
        for k in ports:
            vk, lk, _ = bases[k]
            value = xp.take(vk, slot, axis=0) if not isinstance(slot, int) else vk[slot]
            for j, (vj, lj, _) in enumerate(bases):
                key = self.gram_key(min(k, j), max(k, j))
                g = new[key]
                if k <= j:  # row ``slot`` of block (k, j)
                    row = xp.einsum(f"{lk},Z{lj}->Z{out_labels(lk, lj)}", value, vj)
                    g = row[None] if g.shape[0] == 1 else _set_index(xp, g, slot, row, 0)
                # column ``slot`` of block (j, k); with one slot per port it is the row that
                # j (written in this projection too, before k) or k itself already set
                if k >= j and not (g.shape[0] == 1 and (k == j or j in ports)):
                    col = xp.einsum(f"Y{lj},{lk}->Y{out_labels(lj, lk)}", vj, value)
                    g = col[:, None] if g.shape[1] == 1 else _set_index(xp, g, slot, col, 1)
                new[key] = g

    def project(self, prog, xp, z: dict, new: dict, data: dict, slot) -> None:
        """The family's projection from the inner products of its ports; the new
        coefficients are the projection's (in terms of the ports) composed with the ports'
        own."""
        info = self.info
        coefs = [z[self.coef_key(k)] for k in range(len(self.edges))]
        dtype = coefs[0].dtype
        bases = self.bases(xp, z, data, dtype)
        n = len(coefs)
        pairs = [(k, k) for k in range(n)] + [(i, j) for i in range(n) for j in range(i + 1, n)]
        if self.plan.combines:
            gram = self.forms.quadratic(xp, bases, [(coefs[i], coefs[j]) for i, j in pairs], self._cached(xp, z))
        else:
            # AP: the producers were projected last (or the forward pass initialised the
            # edges), so each port is its producer's one value: the inner products are the
            # cached blocks themselves
            labels = self.forms.labels
            gram = [self.forms.node_block(xp, z[self.gram_key(i, j)][0, 0], labels[i], labels[j]) for i, j in pairs]
        deg = prog.analysis.degree(info, data)
        ybar = prog.mean_out(xp, info, z, data, deg)
        if info.has_unused:
            ins = [self.materialize(xp, k, z, data) for k in range(n)]
            ybar = xp.where(xp.asarray(deg) > 0, ybar, info.prim.forward(*ins))
        coef, y = info.prim.linear_rule(xp, info.prim.opts, tuple(gram), ybar, prog.weight(xp, deg, ybar.dtype))
        if not self.plan.combines:  # ports at their one-hot coefficients: the projection's own
            for k in range(n):
                new[self.coef_key(k)] = xp.stack([xp.broadcast_to(t, self.node_shape) for t in coef[k]])
        else:
            e1 = self._onehot(xp, self.terms - 1, dtype)
            for k in range(n):
                new[self.coef_key(k)] = sum(coef[k][j][None] * coefs[j] for j in range(n)) + coef[k][-1][None] * e1
        prog.write_out(xp, info, y, new, data, slot)

    # the algorithms' arithmetic ---------------------------------------------------------------
    def _merge(self, xp, states: list, out: dict, data: dict) -> None:
        """Slot values and cached products into ``out``: from the state that holds every
        slot the others hold (a chain: DR, DM with β = 1); otherwise merged (each slot is
        written once, and is 0 in a state that does not hold it), and the products
        recomputed where sibling branches each wrote a slot (SlotPlan.recompute_gram)."""
        written = [getattr(s, "written", frozenset()) for s in states]
        union = frozenset().union(*written)
        latest = next((s for s, w in zip(states, written) if w == union), None)
        for key in self.value_keys + self.gram_keys:
            if latest is not None:
                out[key] = latest[key]
                continue
            merged = states[0][key]
            for other in states[1:]:
                merged = xp.where(merged == 0, other[key], merged)
            out[key] = merged
        if self.plan.recompute_gram:
            self._all_blocks(xp, out, data)

    def combine(self, xp, fn, states: list, out: dict, data: dict) -> None:
        """``fn`` on the coefficients; slot values and cached products merged (``_merge``)."""
        for key in self.coef_keys:
            out[key] = fn(*(s[key] for s in states))
        self._merge(xp, states, out, data)

    def distance_sq(self, xp, a: dict, b: dict, data: dict):
        """|a - b|² over the ports as represented: a port's difference is
        sum_t C_a[t] X_t - sum_u C_b[u] Y_u, and its squared norm the quadratic form of the
        joint coefficients over the joint basis (a basis both states hold counts once: under
        DR/DM the merged slots, under AP the values a projection left in place). Clamped at 0
        per node: it carries rounding of order eps |C|² |G|."""
        if self.plan.combines:  # slots agree where both states hold them: one merged basis
            merged = {k: a[k] for k in self.coef_keys}
            self._merge(xp, [a, b], merged, data)
            values = {k: merged[k] for k in self.value_keys + self.gram_keys}
            a, b = {**a, **values}, {**b, **values}
        ports = [k for k in range(len(self.edges)) if not (self.elide and self.const[k])]
        if not ports:
            return 0.0
        dtype = a[self.coef_key(0)].dtype
        bases_a, bases_b = self.bases(xp, a, data, dtype), self.bases(xp, b, data, dtype)
        bases = list(bases_a)
        where = []  # per basis of b: its index in ``bases``
        for vb, lb, ob in bases_b:
            # the same basis: the same array, or an input's data (its slot never changes), or e1
            at = next((i for i, (va, la, oa) in enumerate(bases_a)
                       if la == lb and oa == ob and (va is vb or ob == self.terms - 1 or self._is_const(ob))), None)
            if at is None:
                bases.append((vb, lb, None))
                at = len(bases) - 1
            where.append(at)
        # joint coefficients: a's terms, then the terms of b's bases that a does not hold
        offsets, total = [], 0
        for v, _, _ in bases:
            offsets.append(total)
            total += v.shape[0]
        joint = [(v, lab, off) for (v, lab, _), off in zip(bases, offsets)]
        pairs = []
        for k in ports:
            ca, cb = a[self.coef_key(k)], b[self.coef_key(k)]
            parts = [ca[o : o + v.shape[0]] for v, _, o in bases_a] + [0.0] * (len(bases) - len(bases_a))
            for (vb, _, ob), at in zip(bases_b, where):
                parts[at] = parts[at] - cb[ob : ob + vb.shape[0]]
            d = xp.concatenate(parts, axis=0)
            pairs.append((d, d))
        if len(bases) == len(bases_a):  # b's bases are a's: a's cached products
            block = self._cached(xp, a)
        else:
            block = lambda i, j: self.forms.block(xp, joint[i], joint[j])  # noqa: E731
        sq = 0.0
        for q in self.forms.quadratic(xp, joint, pairs, block):
            sq = sq + xp.sum(xp.maximum(q, 0))
        return sq

    def _counts(self) -> dict[str, int]:
        """Entries per state key: coefficients, cached products, slot values."""
        forms = self.forms
        out = {k: self.terms * math.prod(self.node_shape) for k in self.coef_keys}
        sizes = [(s, forms.labels[k]) for k, s in enumerate(self.slots)] + [(1, forms.port)]
        shape = dict(zip(forms.node, self.node_shape))
        for i, (si, li) in enumerate(sizes):
            for j, (sj, lj) in enumerate(sizes):
                if i <= j and not i == j == len(self.edges):
                    out[self.gram_key(i, j)] = si * sj * math.prod(shape[x] for x in forms.out_labels(li, lj))
        for k, (e, s) in enumerate(zip(self.edges, self.slots)):
            if not self.const[k]:
                out[self.value_key(k)] = s * math.prod(self.view_shape(k))
        return out

    def nbytes(self, itemsize: int) -> int:
        """Coefficients, cached products and slot values instead of the in-edges."""
        return sum(self._counts().values()) * itemsize

    def device_nbytes(self, itemsize: int, data: int) -> int:
        return sum(n // data if data > 1 and self.batch_axis(k) is not None else n
                   for k, n in self._counts().items()) * itemsize


def _view_keeps_batch(analysis, e: Edge) -> bool:
    """A chain of windows and reshapes (a conv's patches) whose view keeps a batched
    producer's batch as its leading axis, as the slot values' sharding assumes."""
    if not isinstance(e.map, ChainMap) or not all(isinstance(s, (Window, Reshape)) for s in e.map.steps):
        return False
    shapes = e.map.shapes(analysis.info[e.src].family.type.shape)
    return e.src not in analysis.batched or all(s[0] == shapes[0][0] for s in shapes)


def collapsible(analysis, info, plan: SlotPlan, elide: bool) -> CollapsedSlots | None:
    """``info``'s family as a :class:`CollapsedSlots` if it qualifies: a function whose
    primitive has a ``linear_rule``, with an outgoing edge, each port one vector edge whose
    broadcast map keeps the port axis, from a float producer."""
    f = info.family
    if not f.is_function or info.prim.linear_rule is None or not info.out:
        return None
    edges = []
    for _, n, es in info.in_ports:
        if not n or len(es) != 1:
            return None
        e = es[0]
        rank = len(e.type.shape)
        if not (isinstance(e.map, BroadcastMap) or _view_keeps_batch(analysis, e)):
            return None
        if rank - 1 not in e.map.final.src_axes or rank > 24:
            return None
        if analysis.info[e.src].family.type.dtype == "i32":
            return None
        edges.append(e)
    colour = {n: i for i, names in enumerate(analysis.classes) for n in names}
    slots = [1 if analysis.is_const(e.src) or not plan.combines else plan.writes[colour[e.src]] for e in edges]
    return CollapsedSlots(analysis, info, edges, slots, plan, elide)
