"""What a backend is given: the compiled model's pieces, fixed at compile time. A backend
never sees the Solver (whose state it could read or change): it gets this, builds its
programs from it, and between updates holds nothing the solver state does not carry."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Lowered:
    tensor: Any  # the tensor IR (the forward program; the oracle builds its own graph from it)
    plan: Any  # the coloured feasibility IR
    program: Any  # the plan lowered to functions over an array namespace (materialized or collapsed)
    algorithm: Any  # the algorithm object (classes filled in for CP) or a gradient method
    options: Any  # the CompileOptions as given
    resolved: Any  # what they came to for this plan (options.Resolved)
    input_name: str
    input_shape: tuple
    input_dtype: np.dtype
    num_classes: int
    batch_size: int
    tokens: bool  # the input holds token ids (an embedding model)
    positions: tuple = ()  # a sequence model's positions (its logits are [*positions, classes])

    steps = property(lambda self: self.resolved.steps)
    monitor = property(lambda self: self.options.monitor)
    warm_start = property(lambda self: self.options.warm_start)
    weighted = property(lambda self: self.options.weighted)
    fold_inputs = property(lambda self: self.resolved.fold_inputs)
    dtype = property(lambda self: self.options.dtype)
    np_dtype = property(lambda self: np.dtype(self.options.dtype))
    # the edge state's storage (--edge-dtype): the arithmetic's dtype, or float16/bfloat16
    edge_np_dtype = property(lambda self: np_dtype(self.resolved.edge_dtype))
    loss_options = property(lambda self: dict(self.options.loss_options))

    def precision(self):
        """The JAX precision context of the runs (64-bit mode only for float64), set
        explicitly from the dtype: nothing depends on a global flag set elsewhere."""
        import jax

        return jax.enable_x64(self.options.dtype == "float64")

    def example_batch(self):
        """Zeros shaped like one batch (inputs, one-hot labels), for ahead-of-time compiles."""
        return (np.zeros((self.batch_size,) + tuple(self.input_shape), self.input_dtype),
                np.zeros((self.batch_size,) + tuple(self.positions) + (self.num_classes,), self.np_dtype))


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a dtype name (bfloat16: ml_dtypes', which JAX uses)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
