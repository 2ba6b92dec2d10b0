"""identity (Theorem 4), weighted: min (x - x0)^2 + w (x - y0)^2 gives x = y = (x0 + w y0)/(1 + w).
(sum and average live in piecewise.py with the other functions of a sum.)"""
from __future__ import annotations

from . import register
from .base import Port, Primitive


def project_identity(xp, opts, inputs, y0, w):
    (x0,) = inputs
    y = (x0 + w * y0) / (1 + w)
    return (y,), y


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
