"""Scalar-port primitives: quantize (Theorem 9), sign, mul, square. Weighted metric
(x - x0)^2 + w (y - y0)^2 throughout.

quantize / sign: the graph is a union of horizontal pieces I_i x {z_i} with half-open
intervals; we project onto their closures: candidate i is (clip(x0, I_i), z_i), the
nearest candidate wins, and the output is *the level that candidate carries* -- not
quantize(x) recomputed, which at an interval end gives the neighbouring level (the
reference implementation's bug).

mul: z = a b is dot with n = 1 (dot.py). square: y = x^2; the nearest point is a real root
of 2w x^3 + (1 - 2w y0) x - x0 = 0 (stationarity); we take every real root of the cubic
(Cardano or the trigonometric form), polish by Newton, and keep the nearest.
"""
from __future__ import annotations

import math

from .registry import register
from .base import Port, Primitive, check_kernel_option
from .dot import fixed_dot, project_dot


def _levels(opts):
    k, a = int(opts["levels"]), float(opts["scale"])
    return [-a + i * 2 * a / (k - 1) for i in range(k)]


def _nearest_piece(xp, x0, y0, w, pieces):
    """pieces: (lo, hi, level); the nearest (clip(x0, lo, hi), level)."""
    best = None
    for lo, hi, z in pieces:
        x = xp.clip(x0, lo, hi) if (lo > -math.inf or hi < math.inf) else x0
        y = z + 0 * y0
        d = (x - x0) ** 2 + w * (y - y0) ** 2
        if best is None:
            best = (d, x, y)
        else:
            nearer = d < best[0]
            best = tuple(xp.where(nearer, new, old) for new, old in zip((d, x, y), best))
    return best[1], best[2]


def _quantize_pieces(opts):
    z = _levels(opts)
    mids = [(a + b) / 2 for a, b in zip(z, z[1:])]
    bounds = [-math.inf] + mids + [math.inf]
    return [(bounds[i], bounds[i + 1], z[i]) for i in range(len(z))]


def forward_quantize(xp, opts, x):
    z = _levels(opts)
    mids = xp.asarray([(a + b) / 2 for a, b in zip(z, z[1:])], x.dtype)
    i = xp.sum(x[..., None] > mids, axis=-1)  # I_i = (m_{i-1}, m_i]
    return (-float(opts["scale"]) + i * (2 * float(opts["scale"]) / (int(opts["levels"]) - 1))).astype(x.dtype)


def project_quantize(xp, opts, inputs, y0, w):
    x, y = _nearest_piece(xp, inputs[0], y0, w, _quantize_pieces(opts))
    return (x,), y


def _check_quantize(lengths, opts):
    if int(opts["levels"]) < 2 or float(opts["scale"]) <= 0:
        return f"quantize needs levels >= 2 and scale > 0, got levels={opts['levels']}, scale={opts['scale']}"
    return None


def project_sign(xp, opts, inputs, y0, w):
    x, y = _nearest_piece(xp, inputs[0], y0, w, [(-math.inf, 0.0, -1.0), (0.0, math.inf, 1.0)])
    return (x,), y


def project_mul(xp, opts, inputs, z0, w):
    (a, b), z = project_dot(xp, opts, (inputs[0][..., None], inputs[1][..., None]), z0, w)
    return (a[..., 0], b[..., 0]), z


def _cubic_real_roots(xp, p, q):
    """Real roots of t^3 + p t + q = 0 as three arrays (duplicates where fewer exist)."""
    disc = (q / 2) ** 2 + (p / 3) ** 3
    one = disc > 0
    sq = xp.sqrt(xp.where(one, disc, 0))
    A = -xp.sign(q) * xp.cbrt(xp.abs(q) / 2 + sq)
    A = xp.where(A == 0, xp.cbrt(-q), A)
    safeA = xp.where(A == 0, 1, A)
    cardano = xp.where(A == 0, 0 * A, A - p / (3 * safeA))
    negp = xp.maximum(-p, 0)
    r = 2 * xp.sqrt(negp / 3)
    safe_r = xp.where(r == 0, 1, r)
    arg = xp.clip(-4 * q / (safe_r**3), -1, 1)  # cos(3θ) = -4q / r^3 for t = r cos θ
    theta = xp.arccos(arg) / 3
    roots = [xp.where(one, cardano, r * xp.cos(theta - 2 * math.pi * k / 3)) for k in range(3)]
    return roots


def project_square(xp, opts, inputs, y0, w):
    (x0,) = inputs
    p = (1 - 2 * w * y0) / (2 * w)
    q = -x0 / (2 * w)
    best = None
    for t in _cubic_real_roots(xp, p, q):
        for _ in range(2):  # polish: Newton on t^3 + p t + q
            d = 3 * t * t + p
            t = xp.where(d != 0, t - (t**3 + p * t + q) / xp.where(d != 0, d, 1), t)
        dist = (t - x0) ** 2 + w * (t * t - y0) ** 2
        if best is None:
            best = (dist, t)
        else:
            nearer = dist < best[0]
            best = (xp.where(nearer, dist, best[0]), xp.where(nearer, t, best[1]))
    x = best[1]
    return (x,), x * x


def fixed_mul(xp, opts, inputs, fixed, z0, w):
    return fixed_dot(xp, opts, inputs, fixed, z0, w, axis=None)


def _scalar(name, ports, forward, project, doc, defaults=None, check=None, fixed=None):
    return register(
        Primitive(
            name=name,
            ports=tuple(Port(p, vector=False) for p in ports),
            forward_rule=forward,
            project_rule=project,
            shape_rule=check or (lambda lengths, opts: None),
            defaults=defaults or {},
            doc=doc,
            fixed_rule=fixed,
        )
    )


quantize = _scalar("quantize", "x", forward_quantize, project_quantize,
                   "nearest of `levels` equidistant points in [-scale, scale]  (Theorem 9)",
                   defaults={"levels": 4, "scale": 1.0}, check=_check_quantize)
sign = _scalar("sign", "x", lambda xp, o, x: xp.where(x >= 0, 1, -1).astype(x.dtype), project_sign,
               "y = +1 if x >= 0 else -1 (sign(0) = +1)")
mul = _scalar("mul", ("a", "b"), lambda xp, o, a, b: a * b, project_mul, "z = a b", defaults={"kernel": "auto"},
              check=lambda lengths, opts: check_kernel_option(opts), fixed=fixed_mul)
square = _scalar("square", "x", lambda xp, o, x: x * x, project_square, "y = x^2")
