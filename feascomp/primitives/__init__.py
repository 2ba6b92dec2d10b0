"""The primitive registry: one entry per primitive, each holding all of its rules.

    >>> from feascomp import primitives
    >>> relu = primitives.get("sum_relu")
    >>> x, y = relu.project(inputs=[[[1.0, -3.0]]], output=[2.0])

Third-party primitives call :func:`register` (see docs/extending.md); nothing else in the
compiler needs to change.
"""
from __future__ import annotations

from .base import LossPrimitive, Port, Primitive, namespace

_REGISTRY: dict[str, Primitive | LossPrimitive] = {}


def register(prim: Primitive | LossPrimitive, *, replace: bool = False):
    """Add a primitive to the registry; returns it (usable as a plain call)."""
    if prim.name in _REGISTRY and not replace:
        raise ValueError(f"primitive {prim.name!r} is already registered")
    _REGISTRY[prim.name] = prim
    return prim


def unregister(name: str) -> None:
    """Remove a primitive (for tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def get(name: str, **options) -> Primitive | LossPrimitive:
    """The primitive ``name`` with ``options`` bound (e.g. ``get("cross_entropy", lam=5.0)``)."""
    try:
        prim = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown primitive {name!r}; registered: {', '.join(names())}") from None
    return prim.with_options(**options) if options else prim


def names(kind: str | None = None) -> list[str]:
    return sorted(n for n, p in _REGISTRY.items() if kind is None or p.kind == kind)


from . import affine, dot, losses, maxmin, piecewise, pointwise  # noqa: E402,F401  (registration side effects)

__all__ = ["LossPrimitive", "Port", "Primitive", "get", "names", "namespace", "register", "unregister"]
