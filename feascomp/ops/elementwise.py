"""A registered function primitive applied elementwise as a tensor op (``leaky_relu(%a)``,
``max(%a, %b)``): operands broadcast together; a vector-port primitive takes one slot per
operand. Its attributes are the primitive's options. One OpDef per primitive, made on
lookup from the primitive registry."""
from __future__ import annotations

from .base import OpDef, broadcast_shapes


def _rule(prim):
    def rule(op, ts):
        vector = len(prim.ports) == 1 and prim.ports[0].vector
        if not vector and len(ts) != len(prim.ports):
            return f"{op.opname} takes {len(prim.ports)} operand(s), got {len(ts)}"
        if not ts:
            return f"{op.opname} needs at least one operand"
        shape = ts[0].shape
        for t in ts[1:]:
            shape = broadcast_shapes(shape, t.shape)
            if shape is None:
                return f"{op.opname} operand shapes do not broadcast: {', '.join(map(str, ts))}"
        try:
            bound = prim.with_options(**dict(op.attrs))
        except ValueError as e:
            return str(e)
        err = bound.check({p.name: (len(ts) if p.vector else None) for p in prim.ports})
        return err or ts[0].with_shape(shape)

    return rule


def _evaluate(prim):
    def evaluate(xp, op, *args):
        bound = prim.with_options(**dict(op.attrs))
        if len(prim.ports) == 1 and prim.ports[0].vector:
            shape = xp.broadcast_shapes(*(a.shape for a in args))
            return bound.forward(xp.stack([xp.broadcast_to(a, shape) for a in args], axis=-1))
        return bound.forward(*args)

    return evaluate


def _scalarize(prim):
    def scalarize(s, op):
        """One family of the primitive; a vector port takes one slot per operand, scalar
        ports one operand each."""
        if len(prim.ports) == 1 and prim.ports[0].vector:
            f = s.family(op, prim.name, ports=((prim.ports[0].name, len(op.operands)),), attrs=op.attrs)
            for i, v in enumerate(op.operands):
                s.connect(v, f, prim.ports[0].name, i, i + 1, s.aligned(v, op), op, steps=s.expand(v, op))
            return
        f = s.family(op, prim.name, ports=tuple((p.name, 0) for p in prim.ports), attrs=op.attrs)
        for port, v in zip(prim.ports, op.operands):
            s.connect(v, f, port.name, 0, 1, s.aligned(v, op), op, steps=s.expand(v, op))

    return scalarize


def elementwise(prim) -> OpDef:
    return OpDef(prim.name, None, _rule(prim), _scalarize(prim), evaluate=_evaluate(prim))
