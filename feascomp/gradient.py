"""Gradient baselines from the same model: SGD and Adam (optax) through ``jax.grad`` of the
forward program the compiler already has (the tensor IR evaluated by jax.numpy) and the
loss the model declares (its primitive's ``forward``, averaged over the batch: plain cross
entropy for ``cross_entropy`` -- its lambda is a prox parameter, not a loss weight --, half
the squared distance to the target set for ``margin``, half the squared error for ``mse``).

``feascomp.compile(model, algorithm="adam", learning_rate=1e-3)`` returns the same
:class:`~feascomp.lowered.Solver` as the projection methods, with this backend: one update
is one optimizer step on the batch, the optimizer's state carries across updates, and
``info["residual"]`` holds the batch's loss. So ``feascomp train``, its report and its
checks serve both kinds of method.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class GradientMethod:
    """An optax optimizer on the model's loss. ``schedule``: a constant learning rate, or a
    cosine decay to 0 over ``decay_steps`` updates."""

    name: str  # "sgd" or "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0  # SGD only
    schedule: str = "constant"
    decay_steps: int = 1000
    uses_layers = False
    gradient = True

    def optimizer(self):
        import optax

        lr = self.learning_rate
        if self.schedule == "cosine":
            lr = optax.cosine_decay_schedule(self.learning_rate, max(self.decay_steps, 1))
        if self.name == "sgd":
            return optax.sgd(lr, momentum=self.momentum or None)
        return optax.adam(lr)


def check_method(name: str, options: dict) -> str | None:
    """What is wrong with a gradient method's options, or None."""
    lr, momentum, schedule = (options.get(k) for k in ("learning_rate", "momentum", "schedule"))
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        return f"the learning rate must be a positive number, got {lr}"
    if momentum is not None and not 0 <= momentum < 1:
        return f"momentum must lie in [0, 1), got {momentum}"
    if momentum and name != "sgd":
        return "momentum is an option of sgd (adam keeps its own moment estimates)"
    if schedule is not None and schedule not in SCHEDULES:
        return f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}"
    return None


class GradientBackend:
    """The backend API (``compile``, ``update``) for a :class:`GradientMethod`: the carried
    state is the optimizer's."""

    name = "optax"

    def __init__(self, lowered):
        from .primitives import get

        self.lowered = lowered
        loss_op = lowered.tensor.by_kind("loss")[0]
        options = {k: v for k, v in loss_op.attrs if k != "kind"}
        options.update(lowered.loss_options)
        self.loss = get(loss_op.attr("kind"), **options)
        self.opt = lowered.algorithm.optimizer()
        self._step = None

    def _make_step(self):
        import jax
        import jax.numpy as jnp
        import optax

        from .ir.tensor import evaluate

        s, loss, opt = self.lowered, self.loss, self.opt

        def objective(params, x, onehot):
            logits = evaluate(jnp, s.tensor, params, {s.input_name: x})
            return jnp.mean(loss.forward(logits, onehot))

        def step(params, opt_state, x, onehot):
            value, grads = jax.value_and_grad(objective)(params, x, onehot)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        return jax.jit(step, donate_argnums=(1,))

    def carry_template(self, params):
        """The optimizer's state for these parameters, as shapes."""
        import jax
        import jax.numpy as jnp

        with self.lowered.precision():
            params = {k: jnp.asarray(v, self.lowered.np_dtype) for k, v in params.items()}
            return jax.eval_shape(self.opt.init, params)

    def compile(self, params) -> float:
        if self._step is not None:
            return 0.0
        s = self.lowered
        x, y = s.example_batch()
        t0 = time.perf_counter()
        with s.precision():
            self._step = self._make_step().lower(params, self.opt.init(params), x, y).compile()
        return time.perf_counter() - t0

    def update(self, params, x, onehot, opt_state=None):
        import jax.numpy as jnp

        self.compile(params)
        with self.lowered.precision():
            params = {k: jnp.asarray(v, self.lowered.np_dtype) for k, v in params.items()}
            if opt_state is None:
                opt_state = self.opt.init(params)
            params, opt_state, value = self._step(params, opt_state, x, onehot)
        return params, {"step": value[None]}, opt_state
