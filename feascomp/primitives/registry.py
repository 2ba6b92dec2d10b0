"""The registry itself (one entry per primitive), apart from the package so that the
primitives' own modules can register themselves without importing the package that
imports them."""
from __future__ import annotations

from .base import LossPrimitive, Primitive

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
