"""What a tensor op is: one :class:`OpDef` holding all of its rules, so that an op is
defined in one place (its module in this package) and looked up by name (``opdef``)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class OpDef:
    """A tensor op: how it types, evaluates and scalarizes.

    - ``rule(op, operand types) -> TensorType | error text`` (the verifier and the front
      ends call it);
    - ``evaluate(xp, op, *batched operands[, lead=]) -> batched result`` (the forward
      program, for ``Solver.apply`` and the gradient baselines); None for ops without a
      value (output, loss) and for inputs and parameters (bound by the caller);
    - ``scalarize(s, op)``: what the scalarize pass makes of it (node families, edges or a
      view), through the pass's context ``s`` (passes/scalarize.py: ``family``,
      ``connect``, ``view``, ``lead``, ...).
    """

    name: str
    arity: int | None  # None: any
    rule: Callable
    scalarize: Callable
    evaluate: Callable | None = None
    has_result: bool = True
    wants_lead: bool = False  # evaluate takes lead= the number of leading (batch) axes


def ints(op, key, n=None):
    """An attribute that must be a list of integers (of length n), or None."""
    v = op.attr(key)
    if not isinstance(v, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool) for a in v):
        return None
    return tuple(v) if n is None or len(v) == n else None


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """NumPy's right-aligned broadcast of two shapes, or None."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(reversed(out))
