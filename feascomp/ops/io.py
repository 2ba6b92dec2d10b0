"""The model's boundary: its input, its parameters, its output and its loss."""
from __future__ import annotations

from ..ir.feasibility import Family
from ..ir.types import TensorType
from .base import OpDef


def _declared(op, ts):
    return op.type


def _none(op, ts):
    return None


def _input(s, op):
    s.family(op, "const")


def _param(s, op):
    s.family(op, "param", attrs=op.attrs)


def _output(s, op):
    pass


def _loss(s, op):
    """The target family: the loss primitive on the logits, one node per sample."""
    (v,) = op.operands
    c = s.types[v].shape[0]
    name = "target"
    while name in s.fams:
        name += "_"
    tgt = Family(name, "target", TensorType(s.types[v].dtype, (s.B,)), (("logits", c),), op.attrs, op.loc)
    s.fams[name] = tgt
    s.batched[name] = True
    s.connect(v, tgt, "logits", 0, c, [1], op)


DEFS = [
    OpDef("input", 0, _declared, _input),
    OpDef("param", 0, _declared, _param),
    OpDef("output", 1, _none, _output, has_result=False),
    OpDef("loss", 1, _none, _loss, has_result=False),
]
