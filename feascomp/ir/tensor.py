"""Tensor IR: typed SSA operations on per-sample tensors (no batch axis).

    tensor @mnist_mlp {
      %x = input() : f32[784]
      %W1 = param() {init = "he_normal"} : f32[784, 128]
      %0 = matmul(%x, %W1) : f32[128]
      %h = relu(%0) : f32[128]
      output(%h)
      loss(%h) {kind = "cross_entropy", lam = 5.0}
    }

Each op kind is one entry of the op table (feascomp/ops: its arity, type rule, evaluation
and scalarize rule); :func:`verify` checks SSA form and re-derives every result type. The
front ends (DSL, jaxpr) build this level.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import FeascompError, Loc
from ..ops import opdef
from .printer import print_tensor
from .types import TensorType

Attrs = tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Op:
    opname: str
    result: str | None  # SSA name without '%', None for output/loss
    operands: tuple[str, ...]
    attrs: Attrs = ()
    type: TensorType | None = None
    loc: Loc | None = dataclasses.field(default=None, compare=False, repr=False)

    def attr(self, key: str, default=None):
        return dict(self.attrs).get(key, default)


@dataclasses.dataclass(frozen=True)
class TensorModule:
    name: str
    ops: tuple[Op, ...]

    def types(self) -> dict[str, TensorType]:
        return {op.result: op.type for op in self.ops if op.result is not None}

    def by_kind(self, opname: str) -> list[Op]:
        return [op for op in self.ops if op.opname == opname]

    @property
    def output(self) -> str:
        return self.by_kind("output")[0].operands[0]

    @property
    def loss(self) -> Op:
        return self.by_kind("loss")[0]

    def __str__(self) -> str:
        return print_tensor(self)


def evaluate(xp, module: "TensorModule", params: dict, inputs: dict):
    """The model's output on a batch (inputs carry a leading batch axis; params do not).

    Right-aligned broadcasting makes per-sample rules work unchanged on batched operands.
    """
    env = dict(params)
    env.update(inputs)
    types = module.types()
    for op in module.ops:
        d = opdef(op.opname)
        if d.evaluate is not None:
            args = [env[v] for v in op.operands]
            if d.wants_lead:
                lead = max(a.ndim - types[v].rank for a, v in zip(args, op.operands))
                env[op.result] = d.evaluate(xp, op, *args, lead=lead)
            else:
                env[op.result] = d.evaluate(xp, op, *args)
    return env[module.output]

INITIALIZERS = ("zeros", "normal", "he_normal")


def opdef_of(module: TensorModule, value: str) -> str | None:
    """The op name defining ``value``."""
    return next((op.opname for op in module.ops if op.result == value), None)


def verify(module: TensorModule) -> None:
    """Raise FeascompError if the module is not well formed and well typed."""
    from ..primitives import get, names

    defined: dict[str, TensorType] = {}
    for op in module.ops:
        where = op.loc
        d = opdef(op.opname)
        if d is None:
            raise FeascompError(f"unknown tensor op {op.opname!r}", where)
        if d.arity is not None and len(op.operands) != d.arity:
            raise FeascompError(f"{op.opname} takes {d.arity} operand(s), got {len(op.operands)}", where)
        for v in op.operands:
            if v not in defined:
                raise FeascompError(f"use of undefined value %{v}", where)
        if d.has_result != (op.result is not None):
            raise FeascompError(f"{op.opname} {'needs' if d.has_result else 'has no'} result", where)
        if op.opname == "param" and op.attr("init", "zeros") not in INITIALIZERS:
            raise FeascompError(
                f"unknown initialiser {op.attr('init')!r}; use one of {', '.join(INITIALIZERS)}", where
            )
        if op.opname == "loss":
            kind = op.attr("kind")
            if kind not in names("loss"):
                raise FeascompError(f"unknown loss {kind!r}; use one of {', '.join(names('loss'))}", where)
            try:
                get(kind, **{k: v for k, v in op.attrs if k != "kind"})
            except ValueError as e:
                raise FeascompError(str(e), where) from None
        if d.has_result:
            if op.result in defined:
                raise FeascompError(f"value %{op.result} is defined twice", where)
            t = d.rule(op, [defined[v] for v in op.operands])
            if isinstance(t, str):
                raise FeascompError(t, where)
            if op.type is not None and t != op.type:
                raise FeascompError(f"%{op.result} is declared {op.type} but {op.opname} gives {t}", where)
            defined[op.result] = t
        for i, v in enumerate(op.operands):
            if defined[v].dtype == "i32" and (op.opname, i) != ("embed", 0):
                raise FeascompError(
                    f"%{v} holds integer token ids ({defined[v]}); they can only index a table: embed(%{v}, table)", where)
        if op.opname == "embed" and opdef_of(module, op.operands[0]) != "input":
            raise FeascompError(f"embed's token ids must be a model input, not %{op.operands[0]}", where)
    outs = module.by_kind("output")
    losses = module.by_kind("loss")
    whole = next((op.loc for op in module.ops if op.loc is not None), None)  # the model's file
    whole = Loc(whole.file, 1, 1) if whole is not None else Loc(module.name)
    if len(outs) != 1:
        raise FeascompError(f"a model needs exactly one output, found {len(outs)}", outs[1].loc if outs else whole)
    if len(losses) != 1:
        raise FeascompError(f"a model needs exactly one loss, found {len(losses)}", losses[1].loc if losses else whole)
    if defined[outs[0].operands[0]].rank not in (1, 2):
        raise FeascompError(
            f"the output must be a vector of logits, or a [positions, classes] matrix of them (one per "
            f"position: a sequence model), got {defined[outs[0].operands[0]]}", outs[0].loc
        )
    if losses[0].operands[0] != outs[0].operands[0]:
        raise FeascompError("the loss must be applied to the output", losses[0].loc)
