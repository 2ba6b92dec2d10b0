"""Target (loss) primitives: the operators applied at the network's output.

Each loss has ``forward(logits, target)`` (per-sample loss) and ``prox(logits, target)``.
``target`` is one-hot for classification losses and real values for ``mse``.

cross_entropy (Theorem 11). prox_{λ CE(·, y)}(x0) = argmin_x λ (lse(x) - <y, x>) + ½|x - x0|²,
characterised by x = x0 + λ (y - softmax(x)). The objective is strictly convex with Hessian
H = I + λ (diag(s) - s s'), s = softmax(x); H is diagonal minus rank one, so the Newton
direction costs O(d) by Sherman-Morrison. ``method="newton"`` (default) runs damped Newton
(Armijo backtracking) to the dtype's precision. ``method="fixed_point"`` runs the paper's
``iterations`` steps of x <- x0 + λ (y - softmax(x)); that map is a contraction only for
λ < 2, so at the paper's λ = 5 it does not converge -- offered to reproduce the paper.
"""
from __future__ import annotations

from .registry import register
from .base import LossPrimitive, eps, while_loop


def _lse(xp, x):
    m = xp.max(x, axis=-1, keepdims=True)
    return (m + xp.log(xp.sum(xp.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def _softmax(xp, x):
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def forward_cross_entropy(xp, opts, logits, y):
    return _lse(xp, logits) - xp.sum(y * logits, axis=-1)


def prox_cross_entropy(xp, opts, x0, y):
    lam = opts["lam"]
    if opts["method"] == "fixed_point":
        x = x0
        for _ in range(int(opts["iterations"])):
            x = x0 + lam * (y - _softmax(xp, x))
        return x
    if opts["method"] != "newton":
        raise ValueError(f"cross_entropy method must be 'newton' or 'fixed_point', not {opts['method']!r}")
    dtype = x0.dtype
    scale = xp.maximum(1, xp.max(xp.abs(x0), axis=-1))
    tol = 16 * eps(dtype) * scale

    def objective(x):
        return lam * (_lse(xp, x) - xp.sum(y * x, axis=-1)) + 0.5 * xp.sum((x - x0) ** 2, axis=-1)

    def gradient(x):
        s = _softmax(xp, x)
        return s, lam * (s - y) + (x - x0)

    def cond(st):
        it, x, active = st
        return xp.logical_and(it < 60, xp.any(active))

    def body(st):
        it, x, active = st
        s, g = gradient(x)
        D = 1 + lam * s
        gD = g / D
        sD = s / D
        denom = 1 - lam * xp.sum(s * sD, axis=-1, keepdims=True)
        step = -(gD + lam * sD * xp.sum(s * gD, axis=-1, keepdims=True) / denom)
        slope = xp.sum(g * step, axis=-1)
        f0 = objective(x)

        def ls_cond(ls):
            k, t, ok = ls
            return xp.logical_and(k < 40, xp.any(xp.logical_not(ok)))

        def ls_body(ls):
            k, t, ok = ls
            t = xp.where(ok, t, 0.5 * t)
            ok = objective(x + t[..., None] * step) <= f0 + 1e-4 * t * slope
            return k + 1, t, ok

        t0 = xp.ones_like(f0)
        # Near the optimum (Newton decrement -slope tiny; the step is then well inside the
        # region of quadratic convergence since I <= H <= (1 + lam/2) I) the objective's
        # decrease is below its rounding, so the full step is taken without a test.
        ok0 = (objective(x + step) <= f0 + 1e-4 * slope) | (-slope <= 1e-4)
        _, t, _ = while_loop(xp, ls_cond, ls_body, (0, t0, ok0))
        x_new = xp.where(active[..., None], x + t[..., None] * step, x)
        _, g_new = gradient(x_new)
        active = xp.logical_and(active, xp.max(xp.abs(g_new), axis=-1) > tol)
        return it + 1, x_new, active

    _, x, _ = while_loop(xp, cond, body, (0, x0, xp.ones(x0.shape[:-1], dtype=bool)))
    return x


def _check_cross_entropy(opts):
    if opts["method"] not in ("newton", "fixed_point"):
        return f"cross_entropy method must be 'newton' or 'fixed_point', not {opts['method']!r}"
    if opts["iterations"] < 1:
        return f"cross_entropy iterations must be at least 1, got {opts['iterations']}"
    return None


cross_entropy = register(
    LossPrimitive(
        name="cross_entropy",
        forward_rule=forward_cross_entropy,
        prox_rule=prox_cross_entropy,
        defaults={"lam": 5.0, "method": "newton", "iterations": 10},
        options_rule=_check_cross_entropy,
        doc="prox of λ·CE(logits, y); Theorem 11",
    )
)


def _margin_project(xp, opts, x0, y):
    m = opts["margin"]
    return xp.where(y > 0, xp.maximum(x0, m), xp.minimum(x0, 0))


margin = register(
    LossPrimitive(
        name="margin",
        forward_rule=lambda xp, opts, x, y: 0.5 * xp.sum((x - _margin_project(xp, opts, x, y)) ** 2, axis=-1),
        prox_rule=_margin_project,
        defaults={"margin": 1.0},
        doc="projection onto {x_c >= margin for the true class, x_c <= 0 otherwise}; Theorem 10. "
        "forward: half the squared distance to that set",
    )
)

mse = register(
    LossPrimitive(
        name="mse",
        forward_rule=lambda xp, opts, x, t: 0.5 * xp.sum((x - t) ** 2, axis=-1),
        prox_rule=lambda xp, opts, x0, t: (x0 + opts["lam"] * t) / (1 + opts["lam"]),
        defaults={"lam": 1.0},
        doc="prox of lam * 0.5 |x - t|^2: (x0 + lam t) / (1 + lam); regression targets t",
    )
)
