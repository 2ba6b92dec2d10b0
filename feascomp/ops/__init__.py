"""The tensor ops: one table entry (:class:`OpDef`) per op, holding its type rule, its
evaluation and its scalarize rule, defined together in this package's modules (io, dense,
views, conv); a registered function primitive is also an op (elementwise.py).

The tensor IR (ir/tensor.py) types and evaluates through ``opdef``; the scalarize pass
lowers through it; front ends type what they emit through it. Adding an op is adding an
entry here.
"""
from __future__ import annotations

from . import conv, dense, io, views
from .base import OpDef, broadcast_shapes, ints
from .elementwise import elementwise

OPS: dict[str, OpDef] = {d.name: d for module in (io, dense, views, conv) for d in module.DEFS}


def primitive_op(opname: str):
    """The registered function primitive a tensor op of this name applies elementwise, or
    None (built-in ops take precedence)."""
    from ..primitives import get, names

    if opname in OPS or opname not in names("function"):
        return None
    return get(opname)


def opdef(opname: str) -> OpDef | None:
    """The definition of a tensor op: a built-in, or a registered primitive applied
    elementwise; None for an unknown name."""
    if opname in OPS:
        return OPS[opname]
    prim = primitive_op(opname)
    return None if prim is None else elementwise(prim)


__all__ = ["OPS", "OpDef", "broadcast_shapes", "ints", "opdef", "primitive_op"]
