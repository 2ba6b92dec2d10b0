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
            assert prim.doc
        else:
            assert callable(prim.forward_rule) and callable(prim.prox_rule) and prim.doc
    assert {"identity", "affine", "sum", "sum_relu", "dot", "max", "quantize", "cross_entropy", "margin",
            "leaky_relu", "clip", "sign", "min", "mul", "square", "average", "mse"} <= set(P.names())


def test_unknown_primitive_and_option():
    with pytest.raises(KeyError, match="unknown primitive"):
        P.get("nope")
    with pytest.raises(ValueError, match="no option"):
        P.get("cross_entropy", lamda=2.0)


# -- references -------------------------------------------------------------------------

OPTIONS = {"affine": {"scale": -1.5, "shift": 0.5}, "leaky_relu": {"slope": 0.1}, "clip": {"lo": -1.0, "hi": 2.0}, "quantize": {"levels": 5, "scale": 2.0}}


def prim(name):
    return P.get(name, **OPTIONS.get(name, {}))


def project1(name, ins, y0, w):
    """Project one node (inputs as 1-D / scalars) and return flat arrays."""
    p = prim(name)
    batched = tuple(np.asarray(a, float)[None] for a in ins)
    xs, y = p.project(batched, np.array([y0], float), w)
    return [np.asarray(x[0]) for x in xs], float(y[0])


def d2(ins, ins0, y, y0, w):
    return float(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2) for a, b in zip(ins, ins0)) + w * (y - y0) ** 2)


def on_closure(name, ins, y, tol):
    """Is (ins, y) on the closure of Graph(name)?"""
    p = prim(name)
    if name in ("quantize", "sign"):
        pieces = pieces_1d(name)
        x = float(ins[0])
        return any(abs(y - z) <= tol and lo - tol <= x <= hi + tol for lo, hi, z in pieces)
    return abs(float(p.forward(*[np.asarray(a)[None] for a in ins])[0]) - y) <= tol * max(1.0, abs(y))


def pieces_1d(name):
    if name == "sign":
        return [(-np.inf, 0.0, -1.0), (0.0, np.inf, 1.0)]
    o = OPTIONS["quantize"]
    z = [-o["scale"] + i * 2 * o["scale"] / (o["levels"] - 1) for i in range(o["levels"])]
    b = [-np.inf] + [(u + v) / 2 for u, v in zip(z, z[1:])] + [np.inf]
    return [(b[i], b[i + 1], z[i]) for i in range(len(z))]


def slsqp_pieces(x0, y0, w, pieces):
    """min over pieces of SLSQP on min |x - x0|^2 + w (y - y0)^2 s.t. the piece's constraints."""
    best = np.inf
    for cons in pieces:
        for start in (np.append(x0, y0), np.zeros(len(x0) + 1), np.append(x0, 0.0)):
            r = minimize(lambda v: np.sum((v[:-1] - x0) ** 2) + w * (v[-1] - y0) ** 2, start,
                         method="SLSQP", constraints=cons, options={"ftol": 1e-15, "maxiter": 1000})
            if r.success or r.status == 8:
                viol = max([0.0] + [abs(c["fun"](r.x)) if c["type"] == "eq" else max(0.0, -c["fun"](r.x)) for c in cons])
                if viol < 1e-7:
                    best = min(best, r.fun)
    return best


def eq(f):
    return {"type": "eq", "fun": f}


def ineq(f):  # f(v) >= 0
    return {"type": "ineq", "fun": f}


def piecewise_sum_pieces(name, n):
    s = lambda v: np.sum(v[:-1])  # noqa: E731
    y = lambda v: v[-1]  # noqa: E731
    if name == "sum_relu":
        return [[eq(y), ineq(lambda v: -s(v))], [eq(lambda v: y(v) - s(v)), ineq(s)]]
    if name == "leaky_relu":
        a = OPTIONS["leaky_relu"]["slope"]
        return [[eq(lambda v: y(v) - a * s(v)), ineq(lambda v: -s(v))], [eq(lambda v: y(v) - s(v)), ineq(s)]]
    if name == "clip":
        lo, hi = OPTIONS["clip"]["lo"], OPTIONS["clip"]["hi"]
        return [[eq(lambda v: y(v) - lo), ineq(lambda v: lo - s(v))],
                [eq(lambda v: y(v) - s(v)), ineq(lambda v: s(v) - lo), ineq(lambda v: hi - s(v))],
                [eq(lambda v: y(v) - hi), ineq(lambda v: s(v) - hi)]]
    if name in ("max", "min"):
        sg = 1 if name == "max" else -1
        return [[eq(lambda v, i=i: v[-1] - v[i])] + [ineq(lambda v, i=i, j=j: sg * (v[i] - v[j])) for j in range(n) if j != i]
                for i in range(n)]
    raise KeyError(name)


def linear_reference(name, x0, y0, w):
    """Affine graphs y = c 1'x: the KKT system (I + w c^2 11') x = x0 + w c y0 1."""
    n = len(x0)
    c = {"sum": 1.0, "average": 1.0 / n, "identity": 1.0}[name]
    x = np.linalg.solve(np.eye(n) + w * c * c * np.ones((n, n)), x0 + w * c * y0)
    return d2([x], [x0], c * x.sum(), y0, w)


def brute_1d(f, x0, y0, w, lo=-60, hi=60):
    """min over x of (x - x0)^2 + w (f(x) - y0)^2 on a fine grid, refined locally."""
    from scipy.optimize import minimize_scalar

    grid = np.linspace(lo, hi, 24001)
    vals = (grid - x0) ** 2 + w * (f(grid) - y0) ** 2
    best = vals.min()
    for i in np.argsort(vals)[:5]:
        r = minimize_scalar(lambda t: (t - x0) ** 2 + w * (f(t) - y0) ** 2, bracket=None,
                            bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]), method="bounded",
                            options={"xatol": 1e-12})
        best = min(best, r.fun)
    return best


def brute_dot(a0, b0, z0, w):
    n = len(a0)

    def g(v):
        return np.sum((v[:n] - a0) ** 2) + np.sum((v[n:] - b0) ** 2) + w * (v[:n] @ v[n:] - z0) ** 2

    rng = np.random.default_rng(0)
    starts = [np.concatenate([a0, b0]), np.zeros(2 * n)] + [rng.normal(size=2 * n) * 3 for _ in range(6)]
    return min(minimize(g, s, method="BFGS", options={"gtol": 1e-10}).fun for s in starts)


def reference_distance(name, ins0, y0, w):
    if name in ("sum", "average", "identity"):
        return linear_reference(name, np.atleast_1d(ins0[0]), y0, w)
    if name in ("sum_relu", "leaky_relu", "clip", "max", "min"):
        x0 = np.asarray(ins0[0])
        return slsqp_pieces(x0, y0, w, piecewise_sum_pieces(name, len(x0)))
    if name in ("quantize", "sign"):
        return min(_segment(ins0[0], y0, w, lo, hi, z) for lo, hi, z in pieces_1d(name))
    if name == "square":
        return brute_1d(lambda t: t * t, ins0[0], y0, w)
    if name == "affine":
        o = OPTIONS["affine"]
        return brute_1d(lambda t: o["scale"] * t + o["shift"], ins0[0], y0, w)
    if name == "dot":
        return brute_dot(np.asarray(ins0[0]), np.asarray(ins0[1]), y0, w)
    if name == "mul":
        return brute_dot(np.atleast_1d(ins0[0]), np.atleast_1d(ins0[1]), y0, w)
    raise KeyError(name)


def _segment(x0, y0, w, lo, hi, z):
    """Distance to a horizontal closed segment by a grid (independent of clip)."""
    a, b = max(lo, x0 - 100), min(hi, x0 + 100)
    if a > b:
        a = b = lo if x0 < lo else hi
    grid = np.linspace(a, b, 20001)
    return float(np.min((grid - x0) ** 2)) + w * (z - y0) ** 2


FUNCTIONS = sorted(P.names("function"))


@st.composite
def node(draw, name):
    p = prim(name)
    n = draw(st.integers(1, 4 if name in ("max", "min", "dot") else 5))
    ins = tuple(draw(vec(n)) if q.vector else draw(finite) for q in p.ports)
    return ins, draw(finite), draw(weights)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_projection_is_on_graph_and_nearest(name):
    tol_graph = 1e-7 if name in ("dot", "mul", "square") else 1e-9

    @settings(max_examples=40 if name in ("dot", "mul", "max", "min", "clip") else 80, deadline=None)
    @given(node(name))
    def check(case):
        ins0, y0, w = case
        xs, y = project1(name, ins0, y0, w)
        assert on_closure(name, xs, y, tol_graph)
        d = d2(xs, ins0, y, y0, w)
        ref = reference_distance(name, ins0, y0, w)
        assert d <= ref + 1e-7 * max(1.0, ref), (d, ref)
        # idempotent: projecting the projection returns it
        xs2, y2 = project1(name, xs, y, w)
        assert d2(xs2, xs, y2, y, 1.0) <= 1e-12 * max(1.0, d)

    check()


@pytest.mark.parametrize("name", ["identity", "sum", "average", "affine"])
def test_affine_projections_are_nonexpansive(name):
    rng = np.random.default_rng(0)
    p = prim(name)
    shape = (500,) if name in ("identity", "affine") else (500, 4)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    ya, yb = rng.normal(size=500), rng.normal(size=500)
    w = rng.uniform(0.5, 4, size=500)
    (pa,), qa = p.project((a,), ya, w)
    (pb,), qb = p.project((b,), yb, w)
    before = ((a - b) ** 2).reshape(500, -1).sum(1) + w * (ya - yb) ** 2
    after = ((pa - pb) ** 2).reshape(500, -1).sum(1) + w * (qa - qb) ** 2
    assert np.all(after <= before + 1e-12)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_never_nan_on_extreme_input(name, dtype):
    rng = np.random.default_rng(3)
    p = prim(name)
    for scale in (0.0, 1.0, 1e3, 1e6):
        ins = tuple((rng.normal(size=(64, 6)) if q.vector else rng.normal(size=64)).astype(dtype) * scale for q in p.ports)
        y0 = (rng.normal(size=64) * scale).astype(dtype)
        w = np.asarray(rng.choice([1.0, 3.0], size=64), dtype)
        xs, y = p.project(ins, y0, w)
        assert all(np.all(np.isfinite(x)) for x in xs) and np.all(np.isfinite(y)), (name, scale)
        assert all(x.dtype == dtype for x in xs) and y.dtype == dtype


def test_max_ties_are_not_unique():
    """Graph(max) is not convex: at x0 = (0, 0), y0 = 1 two points are nearest."""
    xs, y = project1("max", [np.array([0.0, 0.0])], 1.0, 1.0)
    assert d2(xs, [np.zeros(2)], y, 1.0, 1.0) == pytest.approx(0.5)
    assert sorted(xs[0].tolist()) == [0.0, 0.5] and y == 0.5


def test_quantize_keeps_the_chosen_level_at_an_interval_end():
    q = P.get("quantize", levels=2, scale=1.0)  # levels -1, +1; I_1 = (-inf, 0]
    (x,), y = q.project((np.array([-0.3]),), np.array([1.0]))
    assert x[0] == 0.0 and y[0] == 1.0  # nearest: (0, +1), on the closure of the upper piece
    assert float(q.forward(x)[0]) == -1.0  # recomputing by rounding would say -1


def test_max_selects_rather_than_sorts_and_is_not_quadratic():
    """The TOP + 1 largest by passes of a max decide the nodes; a sort only in a cond's
    fallback (XLA's sort and top_k on CPU cost ~250 ns per entry: benchmarks/max_fanin.py)."""
    import jax

    p = P.get("max", kernel="xla")  # the reference form (the native kernel: tests/test_kernels.py)
    x = jax.numpy.zeros((4, 512))
    jaxpr = jax.make_jaxpr(lambda x, y: p.project((x,), y))(x, jax.numpy.zeros(4))
    shapes = [v.aval.shape for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
    assert all(512 * 512 > np.prod(s) * 4 for s in shapes if s)  # no n x n intermediate
    names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert "cond" in names and not names & {"sort", "top_k"}  # sorting is inside the cond


@pytest.mark.parametrize("kernel", ["xla", "auto"])
@settings(max_examples=12, deadline=None)
@given(st.sampled_from([10, 17, 40]), st.integers(0, 2**31 - 1), st.booleans())  # few shapes: few compiles
def test_max_by_selection_is_the_sort_based_projection(kernel, n, seed, wide):
    """Past TOP + 1 inputs the projection is decided by the largest TOP + 1 (the first valid
    candidate), falling back to the sort for nodes with larger active sets: the same
    point as the sort over all candidates, in NumPy and in JAX (XLA's form and the native
    kernel), ties included."""
    import jax
    from feascomp.primitives import maxmin

    rng = np.random.default_rng(seed)
    x0 = rng.integers(-3, 4, size=(6, n)).astype(float) if seed % 2 else rng.normal(size=(6, n))
    if wide:  # a large active set: y0 far below a plateau
        x0[:3] = 5.0 + 1e-3 * rng.normal(size=(3, n))
    y0, w = rng.normal(size=6), rng.uniform(0.5, 2.0, size=6)
    k, y, t = maxmin._by_sort(np, x0, y0, w[:, None])
    (x,), got = maxmin.project_max(np, {}, (x0,), y0, w)
    np.testing.assert_allclose(got, y, rtol=1e-12, atol=1e-12)
    with jax.enable_x64(True):
        (xj,), yj = jax.jit(lambda a, b, c: maxmin.project_max(jax.numpy, {"kernel": kernel}, (a,), b, c))(x0, y0, w)
    np.testing.assert_allclose(np.asarray(yj), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(xj), x, rtol=1e-12, atol=1e-12)
    assert np.all(np.max(x, axis=-1) == got)


class _JaxDot:
    """dot projected on JAX arrays (the native kernel where it is built), results as NumPy."""

    def project(self, ins, z0):
        import jax
        import jax.numpy as jnp

        with jax.enable_x64(ins[0].dtype == np.float64):
            (a, b), z = P.get("dot").project(tuple(jnp.asarray(x) for x in ins), jnp.asarray(z0))
            return (np.asarray(a), np.asarray(b)), np.asarray(z)


@pytest.mark.parametrize("arrays", ["numpy", "jax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dot_degenerate_and_extreme_inputs(dtype, arrays):
    dot = P.get("dot") if arrays == "numpy" else _JaxDot()
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_dot_root_solve_in_blocks_equals_one_solve(dtype, weighted):
    """JAX solves large dot families' roots in blocks of CHUNK nodes (lax.map); a converged
    node never moves, so the blocked roots equal one solve over all nodes, bit for bit,
    degenerate nodes (a0 = -b0, a0 = b0, zeros) and a ragged last block included."""
    import jax
    import jax.numpy as jnp

    from feascomp.primitives import dot as D

    rng = np.random.default_rng(0)
    n = 2 * D.CHUNK + 123
    A2, B2 = rng.gamma(2, size=n) * 10.0 ** rng.integers(-6, 6, n), rng.gamma(2, size=n)
    A2[:50], B2[50:100], A2[100:150], B2[100:150] = 0, 0, 0, 0
    z0 = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n)
    w = rng.integers(1, 30, n).astype(dtype) if weighted else 1.0
    with jax.enable_x64(dtype == np.float64):
        args = [jnp.asarray(v, dtype) for v in (A2, B2, z0)] + [w if not weighted else jnp.asarray(w)]
        blocked = np.asarray(jax.jit(lambda *a: D.solve_lambda(jnp, *a))(*args))
        whole = np.asarray(jax.jit(lambda *a: D._solve(jnp, *a))(*args))
    np.testing.assert_array_equal(blocked, whole)
    assert np.all(np.abs(blocked) <= 1) and np.all(np.isfinite(blocked))


@pytest.mark.parametrize("arrays", ["numpy", "jax"])
def test_dot_feasible_points_with_a_zero_rotated_norm_stay_put(arrays):
    """On-graph points with a = -b or a = b (|u| or |v| zero): the projection returns them to
    rounding, not to sqrt(eps) (the constraint form |u|² = 2z + |v|² cancels there)."""
    dot = P.get("dot") if arrays == "numpy" else _JaxDot()
    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 5))
    b = np.concatenate([-a[:20], a[20:]])
    z = np.sum(a * b, -1)
    (pa, pb), pz = dot.project((a, b), z)
    scale = 1 + np.abs(a).max()
    assert np.max(np.abs(pa - a)) < 1e-13 * scale and np.max(np.abs(pb - b)) < 1e-13 * scale
    assert np.max(np.abs(pz - z)) < 1e-13 * scale**2


# -- projections with a port held fixed (a constant folded into the node) ----------------

FIXED = sorted(n for n in P.names("function") if P.get(n).fixed_rule is not None)


def test_the_products_fold_a_fixed_operand():
    assert {"dot", "mul"} <= set(FIXED)


@pytest.mark.parametrize("name", FIXED)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fixed_port_projection_is_the_least_squares_point(name, data):
    # the graph with port k fixed at c is the hyperplane {(v, y): <c, v> = y}; its nearest
    # point to (v0, y0) in |v - v0|² + w (y - y0)² is the minimum-norm correction d of
    # C d = -C p0 in the scaled coordinates (v, sqrt(w) y): numpy's lstsq, not the formula
    p = prim(name)
    vector = p.ports[0].vector
    n = data.draw(st.integers(1, 6)) if vector else 1
    ins0 = tuple(data.draw(vec(n)) for _ in p.ports)
    if not vector:
        ins0 = tuple(float(v[0]) for v in ins0)
    y0, w = data.draw(finite), data.draw(weights)
    k = data.draw(st.integers(0, 1))
    fixed = (k == 0, k == 1)
    xs, y = p.project_fixed(ins0, fixed, y0, w)
    c, v0 = np.atleast_1d(ins0[k]), np.atleast_1d(ins0[1 - k])
    assert np.array_equal(np.atleast_1d(xs[k]), c)  # the fixed port is returned as given
    s = np.sqrt(w)
    C = np.concatenate([c, [-1 / s]])[None, :]
    p0 = np.concatenate([v0, [s * y0]])
    d = np.linalg.lstsq(C, -C @ p0, rcond=None)[0]
    want = p0 + d
    np.testing.assert_allclose(np.atleast_1d(xs[1 - k]), want[:-1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y, want[-1] / s, rtol=1e-9, atol=1e-9)
    # on the graph, and no farther than any other point of it with the same fixed port
    assert abs(float(np.dot(c, np.atleast_1d(xs[1 - k]))) - float(y)) <= 1e-9 * max(1.0, abs(float(y)))
    other = v0 + data.draw(vec(n))
    assert dist2(xs[1 - k], v0, y, y0, w) <= dist2(other, v0, float(np.dot(c, other)), y0, w) + 1e-9


def test_fixed_ports_both_or_none():
    a, b = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    (pa, pb), y = P.get("dot").project_fixed((a, b), (True, True), 7.0)
    assert np.array_equal(pa, a) and np.array_equal(pb, b) and float(y) == 1.0
    with pytest.raises(ValueError, match="no port is fixed"):
        P.get("dot").project_fixed((a, b), (False, False), 7.0)
