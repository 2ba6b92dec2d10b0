"""The primitive contract: one object per primitive holds every rule the compiler needs.

A *function primitive* f (identity, sum, sum_relu, dot, ...) is a hidden node of the
computation graph. Its rules:

- ``ports``: names of its input ports. A port is *vector* (it carries a trailing axis of
  length n, e.g. ``sum.x`` or ``dot.a``) or *scalar*.
- ``shape_rule(lengths, options)``: checks port lengths, returns an error text or None.
- ``forward(xp, options, *inputs) -> output``.
- ``project(xp, options, inputs, output, weight) -> (inputs, output)``: the nearest point of
  Graph(f) (its closure) to (inputs, output) in the metric
  ``||x - x0||^2 + weight * (y - y0)^2`` -- the weighted projection of Theorem 3, where
  weight is the node's out-degree (1 reproduces the paper's code).
- optional ``fixed_rule(xp, options, inputs, fixed, output, weight) -> (inputs, output)``:
  the same projection with the ports flagged in ``fixed`` held at their given values (a
  constant operand folded into the node's constraint: dot with the input fixed is a
  hyperplane, backends/storage.py's FoldedInputs).

A *loss primitive* (cross_entropy, ...) is a target node: ``forward`` gives the per-sample
loss and ``prox(xp, options, logits, onehot)`` the operator applied to the logits.

Every rule is written once against an array namespace ``xp`` (NumPy or jax.numpy), so the
NumPy oracle and the JAX backend run the same arithmetic. Leading axes are node axes.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np


KERNEL_CHOICES = ("auto", "xla")


def check_kernel_option(opts) -> str | None:
    """The ``kernel`` option's error text, or None (dot, mul, max and min take it)."""
    if opts.get("kernel", "auto") not in KERNEL_CHOICES:
        return f"kernel must be one of {', '.join(map(repr, KERNEL_CHOICES))}, got {opts['kernel']!r}"
    return None


def kernel_applies(xp, opts, a0) -> bool:
    """Whether a native kernel (feascomp/kernels) computes this projection, on inputs like
    ``a0``: under JAX on CPU, option ``kernel="auto"`` (the default; ``"xla"`` turns it
    off), float32 or float64, and the kernel built on this machine."""
    error = check_kernel_option(opts)
    if error:
        raise ValueError(error)
    if xp is np or opts.get("kernel", "auto") != "auto":
        return False
    if str(a0.dtype) not in ("float32", "float64") or a0.size == 0 or a0.ndim < 1:
        return False
    import jax

    if jax.default_backend() != "cpu":
        return False
    from .. import kernels

    return kernels.load("dot_project")


def namespace(*arrays: Any):
    """jax.numpy if any argument is a JAX array (or tracer), else NumPy."""
    import jax

    for a in arrays:
        if isinstance(a, jax.Array):
            import jax.numpy as jnp

            return jnp
    return np


def while_loop(xp, cond: Callable, body: Callable, state):
    """lax.while_loop for jax.numpy, a Python loop for NumPy."""
    if xp is np:
        while bool(cond(state)):
            state = body(state)
        return state
    from jax import lax

    return lax.while_loop(cond, body, state)


def eps(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def _option_type_error(default, value) -> str | None:
    """What an option's value must be, judged by its default's type (a float option takes
    any finite number, an integer one a whole number, a string one a string), or None."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, numbers.Integral):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return None if ok else "a whole number"
    if isinstance(default, numbers.Real):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    vector: bool  # carries a trailing axis of length n


@dataclasses.dataclass(frozen=True)
class Primitive:
    """A function primitive with bound options. Build with :func:`feascomp.primitives.get`."""

    name: str
    ports: tuple[Port, ...]
    forward_rule: Callable
    project_rule: Callable
    shape_rule: Callable[[Mapping[str, int | None], Mapping[str, Any]], str | None]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    doc: str = ""
    kind: str = "function"
    fuses_sum: bool = False  # f(x) = g(1'x): fuse-sum-relu may merge a feeding sum into it
    zero_padding: bool = False  # vector ports padded with zeros project as if unpadded (pads stay 0)
    # optional: the projection as per-node coefficients of the inputs, for the collapsed
    # lowering (vector ports only): linear_rule(xp, options, gram, output, weight) ->
    # (coef, output), gram = the inputs' per-node inner products in port order
    # (|x1|², |x2|², ..., <x1, x2>, ...), coef[port][term]: new port = sum_k coef[k] x_k +
    # coef[-1] e1. See docs/extending.md.
    linear_rule: Callable | None = None
    # optional: the projection with some ports held fixed (module docstring), or None
    fixed_rule: Callable | None = None

    def with_options(self, **options) -> "Primitive":
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"primitive {self.name!r} has no option(s) {sorted(unknown)}; "
                f"it takes {sorted(self.defaults) or 'none'}"
            )
        for key, value in options.items():
            problem = _option_type_error(self.defaults[key], value)
            if problem:
                raise ValueError(f"{self.name}: option {key} must be {problem}, got {value!r}")
        merged = {**self.defaults, **self.options, **options}
        rule = getattr(self, "options_rule", None)
        problem = rule(merged) if rule is not None else None
        if problem:
            raise ValueError(problem)
        return dataclasses.replace(self, options=MappingProxyType(merged))

    @property
    def opts(self) -> Mapping[str, Any]:
        return {**self.defaults, **self.options}

    def check(self, lengths: Mapping[str, int | None]) -> str | None:
        return self.shape_rule(lengths, self.opts)

    def forward(self, *inputs):
        xp = namespace(*inputs)
        return self.forward_rule(xp, self.opts, *inputs)

    def project(self, inputs, output, weight=1.0):
        """Nearest point of Graph(f) to (inputs, output); returns (inputs, output)."""
        inputs = tuple(inputs)
        xp = namespace(*inputs, output, weight)
        dtype = xp.result_type(*inputs, output)
        inputs = tuple(xp.asarray(a, dtype) for a in inputs)
        output = xp.asarray(output, dtype)
        weight = xp.asarray(weight, dtype)
        return self.project_rule(xp, self.opts, inputs, output, weight)

    def project_fixed(self, inputs, fixed, output, weight=1.0):
        """Nearest point of Graph(f) to (inputs, output) among the points whose ports
        flagged in ``fixed`` (one bool per port) keep their given values (``fixed_rule``);
        returns (inputs, output), the fixed ports as given."""
        if self.fixed_rule is None:
            raise NotImplementedError(f"primitive {self.name!r} has no fixed_rule")
        inputs = tuple(inputs)
        xp = namespace(*inputs, output, weight)
        dtype = xp.result_type(*inputs, output)
        inputs = tuple(xp.asarray(a, dtype) for a in inputs)
        return self.fixed_rule(xp, self.opts, inputs, tuple(bool(f) for f in fixed), xp.asarray(output, dtype),
                               xp.asarray(weight, dtype))

    def project_linear(self, gram, output, weight=1.0):
        """The projection as coefficients of the inputs (``linear_rule``), from their
        per-node inner products; returns (coef, output)."""
        if self.linear_rule is None:
            raise NotImplementedError(f"primitive {self.name!r} has no linear_rule")
        gram = tuple(gram)
        xp = namespace(*gram, output, weight)
        dtype = xp.result_type(*gram, output)
        gram = tuple(xp.asarray(g, dtype) for g in gram)
        return self.linear_rule(xp, self.opts, gram, xp.asarray(output, dtype), xp.asarray(weight, dtype))


@dataclasses.dataclass(frozen=True)
class LossPrimitive:
    """A target (loss) primitive. ``prox`` acts on the logits given one-hot targets."""

    name: str
    forward_rule: Callable
    prox_rule: Callable
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    doc: str = ""
    kind: str = "loss"
    # optional: options_rule(options) -> an error text or None (a loss has no ports, so no
    # shape rule: this is where its options' values are checked)
    options_rule: Callable | None = None

    with_options = Primitive.with_options
    opts = Primitive.opts

    def forward(self, logits, target):
        xp = namespace(logits, target)
        return self.forward_rule(xp, self.opts, logits, target)

    def prox(self, logits, target):
        xp = namespace(logits, target)
        logits = xp.asarray(logits)
        return self.prox_rule(xp, self.opts, logits, xp.asarray(target, logits.dtype))
