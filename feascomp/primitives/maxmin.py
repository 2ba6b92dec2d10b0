"""max (Theorem 8) and min of a vector port, weighted: O(n) per node by selection.

Let xs be x0 in descending order. If the top m entries are the active set, they all move
to y_m = (xs_1 + ... + xs_m + w y0) / (m + w) and the rest stay; the candidate is on the
graph iff xs_{m+1} <= y_m. The projection is the *smallest* such m. Why: the cost of a
point with max y is g(y) = sum_i max(xs_i - y, 0)^2 + w (y - y0)^2 (entries above y
lowered to it; for y above xs_1 the largest raised), which is convex and C^1 in y, with
g'(xs_{m+1}) <= 0 exactly when xs_{m+1} <= y_m; g' grows with y and xs_{m+1} falls with
m, so the test holds for every m from the optimum's on, and the optimum is the first.
(Graph(max) itself is *not* convex -- the paper's proof says it is: at x0 = (0, 0),
y0 = 1 both (1/2, 0, 1/2) and (0, 1/2, 1/2) are nearest -- but they share y, and differ
only in which tied entry is active.)

So the TOP + 1 largest entries (``lax.top_k``, a selection, not a sort) decide every node
whose active set has at most TOP entries -- in practice all of them: a max-pool's
projection moves its few largest inputs -- and a node whose active set is larger falls
back to a sort of its values (``lax.cond``: only when some node needs it). The reference
implementation builds an n x n candidate matrix per node.

min(x) = -max(-x).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Port, Primitive
from .registry import register

TOP = 8  # candidates found by selection (top-k); a node whose active set is larger sorts


def _smallest_valid(xp, xs, after, y0, wv):
    """The smallest m (as index k = m - 1) among the candidates in ``xs`` (descending)
    with xs_{m+1} <= y_m (``after``: the value following the last candidate), its y_m, its
    cut value xs_m, and whether any candidate is valid."""
    c = xs.shape[-1]
    m = xp.arange(1, c + 1, dtype=xs.dtype)
    ym = (xp.cumsum(xs, axis=-1) + wv * y0[..., None]) / (m + wv)
    nxt = xp.concatenate([xs[..., 1:], after[..., None]], axis=-1)
    ok = nxt <= ym
    k = xp.argmax(ok, axis=-1)  # the first valid candidate
    y = xp.take_along_axis(ym, k[..., None], axis=-1)[..., 0]
    t = xp.take_along_axis(xs, k[..., None], axis=-1)
    return k, y, t, xp.any(ok, axis=-1)


def _by_sort(xp, x0, y0, wv):
    xs = -xp.sort(-x0, axis=-1)  # descending values; no permutation is needed
    k, y, t, _ = _smallest_valid(xp, xs, xp.full(xs.shape[:-1], -math.inf, x0.dtype), y0, wv)
    return k, y, t


def project_max(xp, opts, inputs, y0, w):
    (x0,) = inputs
    n = x0.shape[-1]
    wv = w[..., None] if getattr(w, "ndim", 0) else w
    if n > TOP + 1:
        # the TOP + 1 largest by selection: the candidates m <= TOP are decided by them
        if xp is np:
            top = -np.sort(-np.partition(x0, n - TOP - 1, axis=-1)[..., n - TOP - 1 :], axis=-1)
        else:
            import jax

            top = jax.lax.top_k(x0, TOP + 1)[0]
        k, y, t, found = _smallest_valid(xp, top[..., :TOP], top[..., TOP], y0, wv)
        if xp is np:
            if not found.all():
                k, y, t = _by_sort(xp, x0, y0, wv)
        else:
            k, y, t = jax.lax.cond(xp.all(found), lambda: (k, y, t), lambda: _by_sort(xp, x0, y0, wv))
    else:
        k, y, t = _by_sort(xp, x0, y0, wv)
    # The active set is the k + 1 largest entries. Entries above the cut value t are in;
    # of the entries equal to t, the first (k + 1 - #above) by index are in (ties at the
    # cut make the projection non-unique; any such choice is nearest).
    above = x0 > t
    tied = x0 == t
    need = (k + 1 - xp.sum(above, axis=-1))[..., None]
    member = above | (tied & (xp.cumsum(tied, axis=-1) <= need))
    x = xp.where(member, y[..., None], x0)
    return (x,), y


def project_min(xp, opts, inputs, y0, w):
    (x,), y = project_max(xp, opts, (-inputs[0],), -y0, w)
    return (-x,), -y


max_ = register(
    Primitive(
        name="max",
        ports=(Port("x", vector=True),),
        forward_rule=lambda xp, opts, x: xp.max(x, axis=-1),
        project_rule=project_max,
        shape_rule=lambda lengths, opts: None,
        doc="y = max_i x_i  (Theorem 8)",
    )
)

min_ = register(
    Primitive(
        name="min",
        ports=(Port("x", vector=True),),
        forward_rule=lambda xp, opts, x: xp.min(x, axis=-1),
        project_rule=project_min,
        shape_rule=lambda lengths, opts: None,
        doc="y = min_i x_i",
    )
)
