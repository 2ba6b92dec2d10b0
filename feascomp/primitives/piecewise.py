"""Functions of a sum, y = g(1'x) with g piecewise linear: sum, average, sum_relu,
leaky_relu, clip (hard-tanh).

Reduction. For a piece {y = c s + d, s = 1'x ∈ [lo, hi]} the nearest point (weighted
metric |x - x0|^2 + w (y - y0)^2) moves x only along 1: x = x0 + ((s - s0)/n) 1, which costs
(s - s0)^2 / n. So the projection solves the scalar convex problem

    min_s (s - s0)^2 / n + w (c s + d - y0)^2   over s ∈ [lo, hi]
    s* = clip((s0/n + w c (y0 - d)) / (1/n + w c^2), lo, hi).

Graph(g) is the union of its pieces (each closed and convex), so the projection is the
candidate with the smallest true weighted distance. This one rule gives Theorems 5 and 6
(and the paper's hyperplane-then-clip construction) exactly, and extends to leaky and
clipped activations.
"""
from __future__ import annotations

import math

from .registry import register
from .base import Port, Primitive

INF = math.inf


def project_pieces(xp, x0, y0, w, pieces):
    """Nearest point of the union of pieces (c, d, lo, hi) to (x0, y0)."""
    n = x0.shape[-1]
    s0 = xp.sum(x0, axis=-1)
    best = None
    for c, d, lo, hi in pieces:
        s = (s0 / n + w * c * (y0 - d)) / (1 / n + w * c * c)
        if lo > -INF or hi < INF:
            s = xp.clip(s, lo, hi)
        y = c * s + d + 0 * y0
        dist = (s - s0) ** 2 / n + w * (y - y0) ** 2
        if best is None:
            best = (dist, s, y)
        else:
            nearer = dist < best[0]
            best = (xp.where(nearer, dist, best[0]), xp.where(nearer, s, best[1]), xp.where(nearer, y, best[2]))
    _, s, y = best
    return x0 + ((s - s0) / n)[..., None], y


def _primitive(name, pieces_of, forward, doc, defaults=None, check=None, fuses_sum=True):
    def project(xp, opts, inputs, y0, w):
        (x0,) = inputs
        x, y = project_pieces(xp, x0, y0, w, pieces_of(opts, x0.shape[-1]))
        return (x,), y

    def fwd(xp, opts, x):
        return forward(xp, opts, xp.sum(x, axis=-1), x.shape[-1])

    return register(
        Primitive(
            name=name,
            ports=(Port("x", vector=True),),
            forward_rule=fwd,
            project_rule=project,
            shape_rule=check or (lambda lengths, opts: None),
            defaults=defaults or {},
            doc=doc,
            fuses_sum=fuses_sum,
        )
    )


def _check_clip(lengths, opts):
    return None if opts["lo"] < opts["hi"] else f"clip needs lo < hi, got lo={opts['lo']}, hi={opts['hi']}"


sum_ = _primitive("sum", lambda o, n: [(1.0, 0.0, -INF, INF)], lambda xp, o, s, n: s, "y = sum_i x_i  (Theorem 5)")
# average depends on n, so a feeding sum must not be fused into it
average = _primitive("average", lambda o, n: [(1.0 / n, 0.0, -INF, INF)], lambda xp, o, s, n: s / n, "y = mean_i x_i",
                     fuses_sum=False)
sum_relu = _primitive(
    "sum_relu",
    lambda o, n: [(0.0, 0.0, -INF, 0.0), (1.0, 0.0, 0.0, INF)],
    lambda xp, o, s, n: xp.maximum(s, 0),
    "y = max(0, sum_i x_i)  (Theorem 6)",
)
leaky_relu = _primitive(
    "leaky_relu",
    lambda o, n: [(float(o["slope"]), 0.0, -INF, 0.0), (1.0, 0.0, 0.0, INF)],
    lambda xp, o, s, n: xp.where(s >= 0, s, o["slope"] * s),
    "y = s if s >= 0 else slope * s, s = sum_i x_i",
    defaults={"slope": 0.01},
)
clip = _primitive(
    "clip",
    lambda o, n: [(0.0, float(o["lo"]), -INF, float(o["lo"])), (1.0, 0.0, float(o["lo"]), float(o["hi"])), (0.0, float(o["hi"]), float(o["hi"]), INF)],
    lambda xp, o, s, n: xp.clip(s, o["lo"], o["hi"]),
    "y = clip(sum_i x_i, lo, hi); hard-tanh with the defaults",
    defaults={"lo": -1.0, "hi": 1.0},
    check=_check_clip,
)
