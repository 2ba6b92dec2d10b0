"""ReLU of a sum, y = max(0, 1'x) (Theorem 6), with the weighted metric of Theorem 3.

Graph = C1 ∪ C2, C1 = {y = 0, 1'x <= 0}, C2 = {y = 1'x >= 0}, both closed and convex, so
the projection is whichever of P_C1, P_C2 is nearer -- compared by their *true* distances
(the reference implementation compares something else and picks the farther candidate for
about a fifth of random inputs).

P_C1: y = 0; x = x0 if 1'x0 <= 0, else x0 - (1'x0 / n) 1.
P_C2: the weighted projection onto the hyperplane y = 1'x (see affine.project_sum); if its
      sum is negative the constraint 1'x >= 0 is active and the point is P_C1's boundary
      point (x0 - (1'x0/n) 1, 0).
"""
from __future__ import annotations

from . import register
from .affine import project_sum
from .base import Port, Primitive


def forward_sum_relu(xp, opts, x):
    return xp.maximum(xp.sum(x, axis=-1), 0)


def project_sum_relu(xp, opts, inputs, y0, w):
    (x0,) = inputs
    n = x0.shape[-1]
    s = xp.sum(x0, axis=-1)
    boundary = x0 - (s / n)[..., None]  # nearest point of {1'x = 0}
    x1 = xp.where((s <= 0)[..., None], x0, boundary)
    (xh,), yh = project_sum(xp, opts, (x0,), y0, w)
    on_c2 = yh >= 0
    x2 = xp.where(on_c2[..., None], xh, boundary)
    y2 = xp.where(on_c2, yh, 0)
    d1 = xp.sum((x1 - x0) ** 2, axis=-1) + w * y0**2
    d2 = xp.sum((x2 - x0) ** 2, axis=-1) + w * (y2 - y0) ** 2
    pick1 = d1 <= d2
    return (xp.where(pick1[..., None], x1, x2),), xp.where(pick1, 0 * y0, y2)


sum_relu = register(
    Primitive(
        name="sum_relu",
        ports=(Port("x", vector=True),),
        forward_rule=forward_sum_relu,
        project_rule=project_sum_relu,
        shape_rule=lambda lengths, opts: None,
        doc="y = max(0, sum_i x_i)",
    )
)
