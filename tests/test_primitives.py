"""Property tests of every projection against an independent reference (float64).

References: closed-form KKT solves (affine graphs), SLSQP on each convex piece
(sum_relu), multi-start BFGS on the unconstrained form (dot), and the optimality
condition of the proximal operator (cross_entropy).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import feascomp.primitives as P

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
weights = st.sampled_from([1.0, 0.5, 2.0, 3.0, 10.0])


def vec(n):
    return st.lists(finite, min_size=n, max_size=n).map(np.array)


@st.composite
def vector_point(draw, max_n=6):
    n = draw(st.integers(1, max_n))
    return draw(vec(n)), draw(finite), draw(weights)


def dist2(x, x0, y, y0, w):
    return float(np.sum((np.asarray(x) - x0) ** 2) + w * (float(y) - y0) ** 2)


def test_registry_has_every_rule():
    for name in P.names():
        prim = P.get(name)
        if prim.kind == "function":
            assert prim.ports and callable(prim.forward_rule) and callable(prim.project_rule) and callable(prim.shape_rule)
        else:
            assert callable(prim.forward_rule) and callable(prim.prox_rule)
    assert {"identity", "sum", "sum_relu", "dot", "cross_entropy"} <= set(P.names())


def test_unknown_primitive_and_option():
    with pytest.raises(KeyError, match="unknown primitive"):
        P.get("nope")
    with pytest.raises(ValueError, match="no option"):
        P.get("cross_entropy", lamda=2.0)


@settings(max_examples=150, deadline=None)
@given(finite, finite, weights)
def test_identity_is_weighted_average(x0, y0, w):
    (x,), y = P.get("identity").project((np.array([x0]),), np.array([y0]), w)
    assert x[0] == pytest.approx(y[0], abs=1e-12)
    # reference: minimise (t - x0)^2 + w (t - y0)^2
    assert x[0] == pytest.approx((x0 + w * y0) / (1 + w), abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(vector_point())
def test_sum_matches_kkt_solution(pt):
    x0, y0, w = pt
    n = len(x0)
    (x,), y = P.get("sum").project((x0[None],), np.array([y0]), w)
    assert abs(x[0].sum() - y[0]) < 1e-9
    # KKT of min |x-x0|^2 + w (1'x - y0)^2:  (I + w 11') x = x0 + w y0 1
    ref = np.linalg.solve(np.eye(n) + w * np.ones((n, n)), x0 + w * y0)
    np.testing.assert_allclose(x[0], ref, atol=1e-9)


def test_affine_projections_are_nonexpansive():
    rng = np.random.default_rng(0)
    for name in ("identity", "sum"):
        prim = P.get(name)
        shape = (500,) if name == "identity" else (500, 4)
        a, b = rng.normal(size=shape), rng.normal(size=shape)
        ya, yb = rng.normal(size=500), rng.normal(size=500)
        (pa,), qa = prim.project((a,), ya)
        (pb,), qb = prim.project((b,), yb)
        before = ((a - b) ** 2).reshape(500, -1).sum(1) + (ya - yb) ** 2
        after = ((pa - pb) ** 2).reshape(500, -1).sum(1) + (qa - qb) ** 2
        assert np.all(after <= before + 1e-12)


def _slsqp(x0, y0, w, cons):
    best = None
    for start in (np.append(x0, y0), np.zeros(len(x0) + 1)):
        r = minimize(
            lambda v: np.sum((v[:-1] - x0) ** 2) + w * (v[-1] - y0) ** 2,
            start, method="SLSQP", constraints=cons, options={"ftol": 1e-14, "maxiter": 500},
        )
        if best is None or r.fun < best.fun:
            best = r
    return best.fun


@settings(max_examples=120, deadline=None)
@given(vector_point(max_n=5))
def test_sum_relu_is_nearest_of_both_pieces(pt):
    x0, y0, w = pt
    (x,), y = P.get("sum_relu").project((x0[None],), np.array([y0]), w)
    x, y = x[0], y[0]
    assert abs(max(x.sum(), 0.0) - y) < 1e-9  # on the graph
    d = dist2(x, x0, y, y0, w)
    c1 = [{"type": "eq", "fun": lambda v: v[-1]}, {"type": "ineq", "fun": lambda v: -np.sum(v[:-1])}]
    c2 = [{"type": "eq", "fun": lambda v: v[-1] - np.sum(v[:-1])}, {"type": "ineq", "fun": lambda v: np.sum(v[:-1])}]
    best = min(_slsqp(x0, y0, w, c1), _slsqp(x0, y0, w, c2))
    assert d <= best + 1e-7


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(vec(n), vec(n), finite, weights)))
def test_dot_is_at_least_as_near_as_brute_force(case):
    a0, b0, z0, w = case
    n = len(a0)
    (a, b), z = P.get("dot").project((a0[None], b0[None]), np.array([z0]), w)
    a, b, z = a[0], b[0], z[0]
    assert abs(a @ b - z) < 1e-7 * max(1.0, abs(z))
    d = np.sum((a - a0) ** 2) + np.sum((b - b0) ** 2) + w * (z - z0) ** 2

    def g(v):
        return np.sum((v[:n] - a0) ** 2) + np.sum((v[n:] - b0) ** 2) + w * (v[:n] @ v[n:] - z0) ** 2

    rng = np.random.default_rng(0)
    starts = [np.concatenate([a0, b0]), np.zeros(2 * n)] + [rng.normal(size=2 * n) * 3 for _ in range(6)]
    best = min(minimize(g, s, method="BFGS", options={"gtol": 1e-10}).fun for s in starts)
    assert d <= best + 1e-7 * max(1.0, best)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dot_degenerate_and_extreme_inputs(dtype):
    dot = P.get("dot")
    # a0 = b0 = 0, z0 = 2: the origin (distance^2 4) is not nearest; a = b = e1, z = 1 (distance^2 3)
    (a, b), z = dot.project((np.zeros((1, 3), dtype), np.zeros((1, 3), dtype)), np.array([2.0], dtype))
    assert dist2(np.concatenate([a[0], b[0]]), 0, z[0], 2.0, 1.0) == pytest.approx(3.0, rel=1e-5)
    # a0 = b0 with z0 far below |a0|^2/4 - 1: nearest points at lambda = -1, not unique
    a0 = np.array([[1.0, 2.0]], dtype)
    (a, b), z = dot.project((a0, a0), np.array([-5.0], dtype))
    assert abs(a[0] @ b[0] - z[0]) < 1e-4
    np.testing.assert_allclose(a[0] + b[0], a0[0], atol=1e-5)  # the lambda = -1 family: a + b = a0 + b0
    rng = np.random.default_rng(1)
    cases = [
        (rng.normal(size=(50, 8)) * 1e6, rng.normal(size=(50, 8)) * 1e6, rng.normal(size=50) * 1e6),
        (np.zeros((5, 4)), np.zeros((5, 4)), np.zeros(5)),
        (rng.normal(size=(50, 8)), rng.normal(size=(50, 8)), rng.normal(size=50) * 1e3),
        (rng.normal(size=(50, 8)), rng.normal(size=(50, 8)), -rng.normal(size=50) * 1e3),
    ]
    for a0, b0, z0 in cases:
        (a, b), z = dot.project((a0.astype(dtype), b0.astype(dtype)), z0.astype(dtype))
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(np.isfinite(z))
        scale = np.maximum(1.0, np.abs(z) + np.sum(a * a, -1) + np.sum(b * b, -1))
        assert np.all(np.abs(np.sum(a * b, -1) - z) <= 1e-4 * scale)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10).flatmap(lambda d: st.tuples(vec(d), st.integers(0, d - 1))), st.sampled_from([0.5, 1.0, 5.0, 20.0]))
def test_cross_entropy_prox_optimality(case, lam):
    x0, label = case
    y = np.eye(len(x0))[label]
    x = P.get("cross_entropy", lam=lam).prox(x0[None], y[None])[0]
    s = np.exp(x - x.max())
    s /= s.sum()
    assert np.max(np.abs(x - x0 - lam * (y - s))) < 1e-8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_extreme_logits(dtype):
    rng = np.random.default_rng(0)
    x0 = (rng.choice([-1e4, 1e4], size=(20, 10)) * rng.uniform(0.5, 1, size=(20, 10))).astype(dtype)
    y = np.eye(10, dtype=dtype)[rng.integers(0, 10, 20)]
    x = P.get("cross_entropy").prox(x0, y)
    assert np.all(np.isfinite(x))
    s = np.exp(x - x.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    assert np.max(np.abs(x - x0 - 5.0 * (y - s))) < (1e-2 if dtype == np.float32 else 1e-9)


def test_fixed_point_option_is_the_papers_and_inexact_at_lambda_5():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(200, 10)) * 3
    y = np.eye(10)[rng.integers(0, 10, 200)]
    exact = P.get("cross_entropy").prox(x0, y)
    fp = P.get("cross_entropy", method="fixed_point").prox(x0, y)
    # the paper's 10 fixed-point steps: x <- x0 + lam (y - softmax(x)), from x0
    ref = x0.copy()
    for _ in range(10):
        s = np.exp(ref - ref.max(-1, keepdims=True))
        ref = x0 + 5.0 * (y - s / s.sum(-1, keepdims=True))
    np.testing.assert_allclose(fp, ref, rtol=1e-12)
    assert np.max(np.abs(fp - exact)) > 0.5  # it does not converge at lambda = 5


def test_numpy_and_jax_agree():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for name in ("identity", "sum", "sum_relu", "dot"):
            prim = P.get(name)
            shape = (64,) if name == "identity" else (64, 5)
            ins = tuple(rng.normal(size=shape) for _ in prim.ports)
            y0 = rng.normal(size=64) * 3
            (xn, yn) = prim.project(ins, y0, 2.0)
            (xj, yj) = prim.project(tuple(jnp.asarray(a) for a in ins), jnp.asarray(y0), 2.0)
            for u, v in zip(xn, xj):
                np.testing.assert_allclose(u, np.asarray(v), atol=1e-12)
            np.testing.assert_allclose(yn, np.asarray(yj), atol=1e-12)
        x0 = rng.normal(size=(32, 10)) * 4
        y = np.eye(10)[rng.integers(0, 10, 32)]
        ce = P.get("cross_entropy")
        np.testing.assert_allclose(ce.prox(x0, y), np.asarray(ce.prox(jnp.asarray(x0), jnp.asarray(y))), atol=1e-10)
