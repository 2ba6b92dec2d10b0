"""max (Theorem 8) and min of a vector port, weighted, sort-based: O(n log n) per node.

Sort x0 descending (xs). If the top m entries are the active set, they all move to
y_m = (xs_1 + ... + xs_m + w y0) / (m + w) and the rest stay; the candidate is on the graph
iff xs_{m+1} <= y_m. Its squared distance is sum_{i<=m} (xs_i - y_m)^2 + w (y_m - y0)^2,
computed from running sums. The projection is the valid candidate of least distance
(m = 1 with xs_2 <= y_1, or some larger m, is always valid). Graph(max) is *not* convex
(the paper's proof says it is): at x0 = (0, 0), y0 = 1 both (1/2, 0, 1/2) and
(0, 1/2, 1/2) are nearest. The reference implementation builds an n x n candidate matrix
per node; this uses one sort of the values and cumulative sums.

min(x) = -max(-x).
"""
from __future__ import annotations

import math

from .registry import register
from .base import Port, Primitive


def project_max(xp, opts, inputs, y0, w):
    (x0,) = inputs
    n = x0.shape[-1]
    xs = -xp.sort(-x0, axis=-1)  # descending values; no permutation is needed
    cs = xp.cumsum(xs, axis=-1)
    cq = xp.cumsum(xs * xs, axis=-1)
    m = xp.arange(1, n + 1, dtype=x0.dtype)
    wv = w[..., None] if getattr(w, "ndim", 0) else w
    ym = (cs + wv * y0[..., None]) / (m + wv)
    nxt = xp.concatenate([xs[..., 1:], xp.full(xs.shape[:-1] + (1,), -math.inf, x0.dtype)], axis=-1)
    dist = cq - 2 * ym * cs + m * ym * ym + wv * (ym - y0[..., None]) ** 2
    dist = xp.where(nxt <= ym, dist, math.inf)
    k = xp.argmin(dist, axis=-1)
    y = xp.take_along_axis(ym, k[..., None], axis=-1)[..., 0]
    # The active set is the k + 1 largest entries. Entries above the cut value t are in;
    # of the entries equal to t, the first (k + 1 - #above) by index are in (ties at the
    # cut make the projection non-unique; any such choice is nearest).
    t = xp.take_along_axis(xs, k[..., None], axis=-1)
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
