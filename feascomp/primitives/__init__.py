"""The primitive registry: one entry per primitive, each holding all of its rules.

    >>> from feascomp import primitives
    >>> relu = primitives.get("sum_relu")
    >>> x, y = relu.project(inputs=[[[1.0, -3.0]]], output=[2.0])

Third-party primitives call :func:`register` (see docs/extending.md); nothing else in the
compiler needs to change.
"""
from __future__ import annotations

from .base import LossPrimitive, Port, Primitive, namespace

from .registry import get, names, register, unregister

from . import affine, dot, losses, maxmin, piecewise, pointwise  # noqa: F401  (registration side effects)

__all__ = ["LossPrimitive", "Port", "Primitive", "get", "names", "namespace", "register", "unregister"]
