"""Dot product z = <a, b> (Theorem 7), weighted, with the degenerate branches.

Rotate to u = (a + b)/√2, v = (a - b)/√2: then <a, b> = (|u|^2 - |v|^2)/2 and the
problem min |a - a0|^2 + |b - b0|^2 + w (<a, b> - z0)^2 keeps u ∥ u0 and v ∥ v0. With
A = |u0|, B = |v0| the stationarity conditions a = a0 + λ b, b = b0 + λ a (λ = w (z0 - z))
give |u| = A / (1 - λ), |v| = B / (1 + λ) and λ is the root in (-1, 1) of

    f(λ) = ½ (A² / (1 - λ)² - B² / (1 + λ)²) + λ / w - z0,

which is strictly increasing (f' = A²/(1-λ)³ + B²/(1+λ)³ + 1/w > 0): the paper's
equation (32) in these coordinates. We find it with Newton safeguarded by a bracket that
stays inside (-1, 1) (the paper's unguarded Newton from 0 can leave the interval).

Degenerate branches. If A = 0 (a0 = -b0) f stays finite at λ → 1; when f(1-) < 0 the
nearest points have λ = 1 and |u| = sqrt(2 (z0 - 1/w) + B²/4) > 0 in *any* direction
(likewise B = 0, a0 = b0, at λ = -1). The bracket then converges to the end point and the
norms below are computed from the constraint, so these cases need no special code but
the direction: we take u along u0 if A > 0, else along v0, else along the first axis
(the choice documented in docs/primitives.md). E.g. a0 = b0 = 0, z0 = 2: the nearest
points are a = b = e1, z = 1, at distance² 3; the origin is at distance² 4.

Conditioning near |λ| = 1: for λ > 1/2 we take |v| = B/(1+λ) (well conditioned) and |u|
from the constraint |u|² = 2z + |v|²; for λ < -1/2 the mirror image. Then <a, b> = z holds
to rounding whatever the accuracy of λ. For |λ| <= 1/2 both norms come from the direct
formulas |u| = A/(1-λ), |v| = B/(1+λ), which are well conditioned there; the constraint form
would lose half the digits of a norm near 0 (|u|² = 2z + |v|² cancels: a feasible point with
a = -b would move by sqrt(eps)), and Newton has already made <a, b> - z = f(λ) rounding-small.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import register
from .base import Port, Primitive, check_kernel_option, eps, kernel_applies, while_loop


def forward_dot(xp, opts, a, b):
    return xp.sum(a * b, axis=-1)


CHUNK = 4096  # nodes per block of the root solve (JAX)


def solve_lambda(xp, A2, B2, z0, w):
    """Root in (-1, 1) of f (module docstring), vectorised; safeguarded Newton.

    Under JAX, large inputs are solved in blocks of CHUNK nodes (``lax.map``): XLA on CPU
    splits each Newton step into several kernels that each pass over all nodes (it does not
    duplicate a division into several consumers), so on 10⁶ nodes the loop is bound by
    memory traffic; on blocks that stay in cache it runs 3× faster (measured 57 -> 17 ms),
    and each block stops when its own nodes have converged. A converged node never moves,
    so the roots do not depend on the blocking."""
    if xp is not np and A2.size > CHUNK:
        return _solve_blocked(xp, A2, B2, z0, w)
    return _solve(xp, A2, B2, z0, w)


def _solve_blocked(xp, A2, B2, z0, w):
    from jax import lax

    n = A2.size
    m = -(-n // CHUNK)
    ws = w if isinstance(w, (int, float)) else xp.broadcast_to(xp.asarray(w, A2.dtype), A2.shape)

    def blocks(v):
        return xp.pad(xp.reshape(v, (n,)), (0, m * CHUNK - n), constant_values=1).reshape(m, CHUNK)

    args = (blocks(A2), blocks(B2), blocks(z0)) + (() if isinstance(ws, (int, float)) else (blocks(ws),))
    lam = lax.map(lambda t: _solve(xp, t[0], t[1], t[2], ws if isinstance(ws, (int, float)) else t[3]), args)
    return xp.reshape(xp.reshape(lam, (m * CHUNK,))[:n], A2.shape)


def _solve(xp, A2, B2, z0, w):
    dtype = A2.dtype
    tol = 8 * eps(dtype)
    tiny = float(xp.finfo(dtype).tiny) ** 0.5
    winv = 1 / w

    def f_df(lam):
        om = xp.maximum(1 - lam, tiny)
        op = xp.maximum(1 + lam, tiny)
        ta = A2 / om**2
        tb = B2 / op**2
        f = 0.5 * (ta - tb) + lam * winv - z0
        df = ta / om + tb / op + winv
        noise = 4 * eps(dtype) * (0.5 * (ta + tb) + xp.abs(lam * winv) + xp.abs(z0))  # rounding in f
        return f, df, noise

    def cond(st):
        it, lam, lo, hi, active = st
        return xp.logical_and(it < 100, xp.any(active))

    def body(st):
        it, lam, lo, hi, was_active = st
        f, df, noise = f_df(lam)
        lo = xp.where(f < 0, lam, lo)
        hi = xp.where(f > 0, lam, hi)
        newton = lam - f / df
        inside = xp.logical_and(newton > lo, newton < hi)
        nxt = xp.where(inside, newton, 0.5 * (lo + hi))
        nxt = xp.where(f == 0, lam, nxt)
        # converged: the step is below rounding, the bracket has closed, or f is zero to
        # within its own rounding error (further Newton steps would only chase noise)
        done = (xp.abs(nxt - lam) <= tol * xp.maximum(1, xp.abs(lam))) | (hi - lo <= tol) | (xp.abs(f) <= noise)
        nxt = xp.where(xp.abs(f) <= noise, lam, nxt)
        lam = xp.where(was_active, nxt, lam)  # a converged node keeps its root
        return it + 1, lam, lo, hi, xp.logical_and(was_active, xp.logical_not(done))

    zeros = xp.zeros_like(A2)
    # A cheap start: the root of the linearisation of f at 0 (f(0) = (A²-B²)/2 - z0).
    f0, df0, _ = f_df(zeros)
    lam0 = xp.clip(-f0 / df0, -0.5, 0.5)
    st = (0, lam0, zeros - 1, zeros + 1, xp.ones(A2.shape, dtype=bool))
    _, lam, _, _, _ = while_loop(xp, cond, body, st)
    return lam


def _coefficients(xp, A2, B2, z0, w, dtype):
    """The projection as per-node coefficients: a = ks_a (a0 + b0) + kd_a (a0 - b0) + ke_a e1,
    b likewise, from A2 = |a0 + b0|²/2, B2 = |a0 - b0|²/2; and the output z."""
    lam = solve_lambda(xp, A2, B2, z0, w)
    z = z0 - lam / w
    A = xp.sqrt(A2)
    B = xp.sqrt(B2)
    pos = lam >= 0
    mid = xp.abs(lam) <= 0.5  # both direct formulas well conditioned
    nu_pos = xp.where(pos, B / (1 + lam), 0)
    nu_neg_base = A / xp.maximum(1 - lam, 1)  # only used where lam < 0, where 1 - lam > 1
    nu_u_mid = A / xp.maximum(1 - lam, 0.5)
    nu_v_mid = B / xp.maximum(1 + lam, 0.5)
    nu_u = xp.where(pos, xp.where(mid, nu_u_mid, xp.sqrt(xp.maximum(2 * z + nu_pos**2, 0))), nu_neg_base)
    nu_v = xp.where(pos, nu_pos, xp.where(mid, nu_v_mid, xp.sqrt(xp.maximum(nu_neg_base**2 - 2 * z, 0))))
    # u = nu_u * (unit U), v = nu_v * (unit V); U = a0 + b0 (if A > 0) else a0 - b0 (if B > 0)
    # else e1; V = a0 - b0 (if B > 0) else a0 + b0 (if A > 0) else e1. a = (u + v)/√2,
    # b = (u - v)/√2, and |a0 ± b0| = √2 A (resp. √2 B).
    # Norms whose squares are subnormal are not accurate enough to normalise by; treat them
    # as 0 (the direction then falls back, which changes the distance by O(|u0| |u|) < 1e-150).
    tiny = float(xp.finfo(dtype).tiny)
    has_a, has_b = A2 > tiny, B2 > tiny
    r2 = math.sqrt(2)
    cu = nu_u / (r2 * xp.where(has_a, r2 * A, xp.where(has_b, r2 * B, 1)))
    cv = nu_v / (r2 * xp.where(has_b, r2 * B, xp.where(has_a, r2 * A, 1)))
    u_s, u_d, u_e = has_a, ~has_a & has_b, ~(has_a | has_b)  # which vector U is
    v_s, v_d, v_e = ~has_b & has_a, has_b, ~(has_a | has_b)  # which vector V is
    ka = (cu * u_s + cv * v_s, cu * u_d + cv * v_d, cu * u_e + cv * v_e)
    kb = (cu * u_s - cv * v_s, cu * u_d - cv * v_d, cu * u_e - cv * v_e)
    return ka, kb, z


def _project_kernel(xp, a0, b0, z0, w):
    from .. import kernels

    shape = xp.broadcast_shapes(a0.shape[:-1], b0.shape[:-1], xp.shape(z0), xp.shape(w))
    n = a0.shape[-1]
    count = math.prod(shape)
    a0 = xp.reshape(xp.broadcast_to(a0, shape + (n,)), (count, n))
    b0 = xp.reshape(xp.broadcast_to(b0, shape + (n,)), (count, n))
    z0 = xp.reshape(xp.broadcast_to(z0, shape), (count,))
    w = xp.reshape(xp.broadcast_to(w, shape), (count,))  # per node (under vmap a scalar would not stay one)
    a, b, z = kernels.dot_project(a0, b0, z0, w.astype(a0.dtype))
    return (xp.reshape(a, shape + (n,)), xp.reshape(b, shape + (n,))), xp.reshape(z, shape)


def project_dot(xp, opts, inputs, z0, w):
    a0, b0 = inputs
    if kernel_applies(xp, opts, a0):
        # the same arithmetic as below in one pass over cache-sized blocks of rows
        return _project_kernel(xp, a0, b0, z0, w)
    dtype = a0.dtype
    # The reductions and the output are each one pass over a0, b0: the output is written
    # as a = ks (a0 + b0) + kd (a0 - b0) + ke e1 with per-node scalars, so no n-long
    # temporary is shared between the passes (sums and differences are still formed per
    # element before scaling, which keeps a0 ≈ ±b0 exact). The cheaper coefficient form
    # (ks + kd) a0 + (ks - kd) b0, chosen per batch by lax.cond when no coefficient is
    # large, was measured: 15 % faster alone, but 10 % slower inside a DR step, because the
    # cond makes XLA materialize the reflected inputs. See docs/performance.md.
    A2 = 0.5 * xp.sum((a0 + b0) ** 2, axis=-1)
    B2 = 0.5 * xp.sum((a0 - b0) ** 2, axis=-1)
    ka, kb, z = _coefficients(xp, A2, B2, z0, w, dtype)
    first = (xp.arange(a0.shape[-1]) == 0).astype(dtype)

    def combine(ks, kd, ke):
        return ks[..., None] * (a0 + b0) + kd[..., None] * (a0 - b0) + ke[..., None] * first

    return (combine(*ka), combine(*kb)), z


def linear_dot(xp, opts, gram, z0, w):
    """The projection from the inputs' per-node inner products (the collapsed lowering):
    gram = (|a0|², |b0|², <a0, b0>); returns coefficients c[port][term] with
    new port = c[port][0] a0 + c[port][1] b0 + c[port][2] e1, and z. Exact in exact
    arithmetic; in floating point |a0 ± b0|² is formed from inner products, which loses
    relative accuracy where a0 ≈ ∓b0 (as any Gram-based method does)."""
    aa, bb, ab = gram
    # |a0 ± b0|² carry rounding of order eps (|a0|² + |b0|²): below a few times that they are
    # 0 (a0 = ∓b0 to working precision), so the degenerate branch picks a direction that
    # exists instead of normalising a vector that is only rounding
    noise = 64 * eps(aa.dtype) * (aa + bb)
    A2 = 0.5 * (aa + bb) + ab
    B2 = 0.5 * (aa + bb) - ab
    A2 = xp.where(A2 > noise, A2, 0)
    B2 = xp.where(B2 > noise, B2, 0)
    ka, kb, z = _coefficients(xp, A2, B2, z0, w, aa.dtype)
    return tuple((ks + kd, ks - kd, ke) for ks, kd, ke in (ka, kb)), z


def fixed_dot(xp, opts, inputs, fixed, z0, w, axis=-1):
    """The projection with one operand held fixed (a constant folded into the node): with
    a fixed, Graph = {(b, z): <a, b> = z} is a hyperplane, and the nearest point to
    (b0, z0) in |b - b0|² + w (z - z0)² is b = b0 - μ a, z = z0 + μ / w with
    μ = (<a, b0> - z0) / (|a|² + 1/w) (b fixed likewise). Both fixed: z = <a, b>.
    ``axis``: the ports' vector axis (None: scalar ports, mul)."""
    a0, b0 = inputs
    red = (lambda v: v) if axis is None else (lambda v: xp.sum(v, axis=axis))
    grow = (lambda v: v) if axis is None else (lambda v: v[..., None])
    if all(fixed):
        return (a0, b0), red(a0 * b0)
    if not any(fixed):
        raise ValueError("fixed_dot: no port is fixed (use project)")
    k = 0 if fixed[0] else 1
    c, v0 = inputs[k], inputs[1 - k]
    mu = (red(c * v0) - z0) / (red(c * c) + 1 / w)
    v = v0 - grow(mu) * c
    return ((c, v) if k == 0 else (v, c)), z0 + mu / w


def _same_length(lengths, opts):
    if lengths.get("a") != lengths.get("b"):
        return f"dot needs equal port lengths, got a[{lengths.get('a')}] and b[{lengths.get('b')}]"
    return check_kernel_option(opts)


dot = register(
    Primitive(
        name="dot",
        ports=(Port("a", vector=True), Port("b", vector=True)),
        forward_rule=forward_dot,
        project_rule=project_dot,
        shape_rule=_same_length,
        doc="z = <a, b>",
        zero_padding=True,
        linear_rule=linear_dot,
        fixed_rule=fixed_dot,
        defaults={"kernel": "auto"},
    )
)
