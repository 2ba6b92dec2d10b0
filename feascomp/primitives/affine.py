"""identity (Theorem 4) and affine (y = c x + d), weighted.

identity: min (x - x0)^2 + w (x - y0)^2 gives x = y = (x0 + w y0)/(1 + w).
affine:   min (x - x0)^2 + w (c x + d - y0)^2 gives x = (x0 + w c (y0 - d)) / (1 + w c^2).
affine carries multiplications and additions by constants (``x * 0.5``, ``x - 1`` in JAX
code). sum and average live in piecewise.py with the other functions of a sum."""
from __future__ import annotations

from .registry import register
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


def project_affine(xp, opts, inputs, y0, w):
    (x0,) = inputs
    c, d = opts["scale"], opts["shift"]
    x = (x0 + w * c * (y0 - d)) / (1 + w * c * c)
    return (x,), c * x + d


affine = register(
    Primitive(
        name="affine",
        ports=(Port("x", vector=False),),
        forward_rule=lambda xp, opts, x: opts["scale"] * x + opts["shift"],
        project_rule=project_affine,
        shape_rule=lambda lengths, opts: None,
        defaults={"scale": 1.0, "shift": 0.0},
        doc="y = scale * x + shift",
    )
)
