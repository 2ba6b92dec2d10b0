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

So the TOP + 1 largest entries (:func:`_largest`: TOP + 1 passes of a max, not a sort)
decide every node
whose active set has at most TOP entries -- in practice all of them: a max-pool's
projection moves its few largest inputs -- and a node whose active set is larger falls
back to a sort of its values (``lax.cond``: only when some node needs it). The reference
implementation builds an n x n candidate matrix per node.

Under JAX on CPU the projection is a native kernel by default (feascomp/kernels:
``max_project``, the same selection and arithmetic in one pass over each row; option
``kernel="xla"`` keeps this module's code, which is its reference).

min(x) = -max(-x).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Port, Primitive, check_kernel_option, kernel_applies
from .registry import register

TOP = 8  # candidates found by selection; a node whose active set is larger sorts


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


def _largest(xp, x0, count):
    """The ``count`` largest entries of each row, descending, repeated values counted: by
    ``count`` passes that each take the largest remaining value and how often it occurs
    (O(n) each: reductions, which XLA on CPU runs at memory speed; its sort and top_k cost
    ~250 ns per entry on a max-pool's rows)."""
    vals, ends, rest, total = [], [], x0, 0
    for _ in range(count):
        v = xp.max(rest, axis=-1)
        hit = rest == v[..., None]
        total = total + xp.sum(hit, axis=-1)
        vals.append(v)
        ends.append(total)
        rest = xp.where(hit, -math.inf, rest)
    vals, ends = xp.stack(vals, axis=-1), xp.stack(ends, axis=-1)
    # position p holds the value whose run of copies covers it: the number of runs ending at or before p
    p = xp.arange(count)
    block = xp.sum(ends[..., None, :] <= p[:, None], axis=-1)
    return xp.take_along_axis(vals, xp.minimum(block, count - 1), axis=-1)


ITERATIONS = 64  # of the active-set iteration before the sort decides


def _by_iteration(xp, x0, y0, wv):
    """The active set by iteration (as Michelot's for the simplex): start with every entry
    active, y = (sum of the active + w y0) / (#active + w), drop the entries <= y, repeat.
    y never decreases, and the set stops changing at the active set whose y lies in its
    interval -- the projection's (module docstring). O(n) per round, a few rounds in
    practice; after ITERATIONS rounds without a fixed point for every node, the sort."""
    import jax

    y0 = xp.asarray(y0, x0.dtype)
    w = xp.asarray(wv, x0.dtype)[..., 0] if getattr(wv, "ndim", 0) else xp.asarray(wv, x0.dtype)

    def level(cut):
        act = x0 > cut[..., None]
        m = xp.sum(act, axis=-1)
        return (xp.sum(xp.where(act, x0, 0), axis=-1) + w * y0) / (m + w), m

    def body(state):
        i, cut, _, _ = state
        y, m = level(cut)
        return i + 1, y, cut, m

    def cond(state):
        i, cut, prev, _ = state
        return (i < ITERATIONS) & xp.any(cut != prev)

    start = xp.full(x0.shape[:-1], -math.inf, x0.dtype)
    _, cut, prev, m = jax.lax.while_loop(cond, body, body((0, start, start, xp.zeros(x0.shape[:-1], "int32"))))
    y, m = level(prev)
    t = xp.min(xp.where(x0 > prev[..., None], x0, math.inf), axis=-1, keepdims=True)
    # no entry above y: y0 lies above the max, which alone is raised (m = 1)
    top = xp.max(x0, axis=-1)
    y = xp.where(m == 0, (top + w * y0) / (1 + w), y)
    t = xp.where((m == 0)[..., None], top[..., None], t)
    k = xp.maximum(m, 1) - 1
    return jax.lax.cond(xp.all(cut == prev), lambda: (k, y, t), lambda: _by_sort(xp, x0, y0, wv))


def _by_sort(xp, x0, y0, wv):
    xs = -xp.sort(-x0, axis=-1)  # descending values; no permutation is needed
    k, y, t, _ = _smallest_valid(xp, xs, xp.full(xs.shape[:-1], -math.inf, x0.dtype), y0, wv)
    return k, y, t


def _project_kernel(xp, x0, y0, w):
    from .. import kernels

    shape = xp.broadcast_shapes(x0.shape[:-1], xp.shape(y0), xp.shape(w))
    n = x0.shape[-1]
    count = math.prod(shape)
    rows = xp.reshape(xp.broadcast_to(x0, shape + (n,)), (count, n))
    y0 = xp.reshape(xp.broadcast_to(y0, shape), (count,))
    w = xp.reshape(xp.broadcast_to(w, shape), (count,)).astype(x0.dtype)
    x, y = kernels.max_project(rows, y0, w)
    return (xp.reshape(x, shape + (n,)),), xp.reshape(y, shape)


def project_max(xp, opts, inputs, y0, w):
    (x0,) = inputs
    if kernel_applies(xp, opts, x0):
        return _project_kernel(xp, x0, y0, w)
    n = x0.shape[-1]
    wv = w[..., None] if getattr(w, "ndim", 0) else w
    if n > TOP + 1:
        # the TOP + 1 largest by selection: the candidates m <= TOP are decided by them
        top = _largest(xp, x0, TOP + 1)
        k, y, t, found = _smallest_valid(xp, top[..., :TOP], top[..., TOP], y0, wv)
        if xp is np:
            if not found.all():
                k, y, t = _by_sort(xp, x0, y0, wv)
        else:
            import jax

            k, y, t = jax.lax.cond(xp.all(found), lambda: (k, y, t), lambda: _by_iteration(xp, x0, y0, wv))
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
        shape_rule=lambda lengths, opts: check_kernel_option(opts),
        doc="y = max_i x_i  (Theorem 8)",
        defaults={"kernel": "auto"},
    )
)

min_ = register(
    Primitive(
        name="min",
        ports=(Port("x", vector=True),),
        forward_rule=lambda xp, opts, x: xp.min(x, axis=-1),
        project_rule=project_min,
        shape_rule=lambda lengths, opts: check_kernel_option(opts),
        doc="y = min_i x_i",
        defaults={"kernel": "auto"},
    )
)
