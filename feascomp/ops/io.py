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
    """The target family: the loss primitive on the logits, one node per sample.

    Logits of a sequence model (``[T, C]``, one row per position) make one target family
    per piece of the rows: a stack of per-step rows (a concat along axis 0, which stays
    virtual: docs/language.md's ``for`` block collects one) gives a family per step, of
    shape ``[batch, rows]``, reading its rows of the labels (attribute ``rows`` = [first,
    count]); any other ``[T, C]`` value gives one family ``[batch, T]``."""
    from .dense import concat_parts

    (v,) = op.operands
    tv = s.types[v]
    c = tv.shape[-1]
    pieces = [(v, 0, 1)] if tv.rank == 1 else concat_parts(s, v, 0)
    for part, first, rows in pieces:
        name = "target" if tv.rank == 1 else f"target_{first}"
        while name in s.fams:
            name += "_"
        lead = () if tv.rank == 1 else (rows,)
        attrs = op.attrs + ((("rows", [first, rows]),) if tv.rank == 2 else ())
        tgt = Family(name, "target", TensorType(tv.dtype, (s.B,) + lead), (("logits", c),), attrs, op.loc)
        s.fams[name] = tgt
        s.batched[name] = True
        s.connect(part, tgt, "logits", 0, c, list(range(1, tv.rank + 1)), op)


DEFS = [
    OpDef("input", 0, _declared, _input),
    OpDef("param", 0, _declared, _param),
    OpDef("output", 1, _none, _output, has_result=False),
    OpDef("loss", 1, _none, _loss, has_result=False),
]
