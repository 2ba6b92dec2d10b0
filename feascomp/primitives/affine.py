"""Affine graphs: identity (Theorem 4) and sum (Theorem 5), weighted (Theorem 3).

Graph(sum) = {(x, y): y = 1'x} is a hyperplane. Minimising ||x - x0||^2 + w (y - y0)^2
on it gives x = x0 + mu 1, y = 1'x0 + n mu with mu = w (y0 - 1'x0) / (1 + w n).
Identity is sum with n = 1 on a scalar port.
"""
from __future__ import annotations

from . import register
from .base import Port, Primitive


def project_sum(xp, opts, inputs, y0, w):
    (x0,) = inputs
    n = x0.shape[-1]
    s = xp.sum(x0, axis=-1)
    mu = w * (y0 - s) / (1 + w * n)
    return (x0 + mu[..., None],), s + n * mu


def forward_sum(xp, opts, x):
    return xp.sum(x, axis=-1)


def project_identity(xp, opts, inputs, y0, w):
    (x0,) = inputs
    y = (x0 + w * y0) / (1 + w)
    return (y,), y


def _any_length(lengths, opts):
    return None if lengths.get("x", 1) and lengths.get("x", 1) >= 1 else "sum needs n >= 1 inputs"


identity = register(
    Primitive(
        name="identity",
        ports=(Port("x", vector=False),),
        forward_rule=lambda xp, opts, x: x,
        project_rule=project_identity,
        shape_rule=lambda lengths, opts: None,
        doc="y = x",
    )
)

sum_ = register(
    Primitive(
        name="sum",
        ports=(Port("x", vector=True),),
        forward_rule=forward_sum,
        project_rule=project_sum,
        shape_rule=_any_length,
        doc="y = sum_i x_i",
    )
)
