"""The margin and mse losses' prox against brute-force minimisers and their optimality
conditions (cross_entropy's has its own tests in test_primitives.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from feascomp import primitives as P

vectors = st.integers(2, 6).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-5, 5, allow_nan=False, width=64), min_size=n, max_size=n),
        st.integers(0, n - 1),
    )
)


@settings(max_examples=150, deadline=None)
@given(vectors, st.floats(0.01, 3.0))
def test_margin_prox_is_the_projection_onto_its_set(case, margin):
    """The set {x_true >= margin, x_other <= 0} is a box: the projection is the box's
    minimiser of |x - x0|² (found here by L-BFGS-B), it lies in the set, and x0 - p makes
    an obtuse angle with every direction into the set (the variational inequality)."""
    values, true = case
    x0 = np.array(values)
    onehot = np.eye(len(x0))[true]
    p = np.asarray(P.get("margin", margin=margin).prox(x0[None], onehot[None]))[0]
    bounds = [(margin, None) if k == true else (None, 0.0) for k in range(len(x0))]
    brute = minimize(lambda x: np.sum((x - x0) ** 2), np.zeros_like(x0) + onehot * margin,
                     jac=lambda x: 2 * (x - x0), bounds=bounds, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12})
    np.testing.assert_allclose(p, brute.x, atol=1e-6)
    assert p[true] >= margin - 1e-12 and np.all(np.delete(p, true) <= 1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):  # random points of the set
        c = np.where(onehot > 0, margin + rng.exponential(size=len(x0)), -rng.exponential(size=len(x0)))
        assert np.dot(x0 - p, c - p) <= 1e-9
        assert np.sum((x0 - p) ** 2) <= np.sum((x0 - c) ** 2) + 1e-9


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-5, 5, allow_nan=False, width=64), min_size=n, max_size=n),
    st.lists(st.floats(-5, 5, allow_nan=False, width=64), min_size=n, max_size=n))),
    st.floats(0.01, 100.0))
def test_mse_prox_minimises_its_objective(case, lam):
    """prox(x0) = argmin lam/2 |x - t|² + 1/2 |x - x0|²: its gradient vanishes there, and a
    general-purpose minimiser finds the same point."""
    x0, t = (np.array(v) for v in case)
    p = np.asarray(P.get("mse", lam=lam).prox(x0[None], t[None]))[0]
    np.testing.assert_allclose(lam * (p - t) + (p - x0), 0, atol=1e-9 * (1 + lam))
    objective = lambda x: 0.5 * lam * np.sum((x - t) ** 2) + 0.5 * np.sum((x - x0) ** 2)  # noqa: E731
    brute = minimize(objective, np.zeros_like(x0), jac=lambda x: lam * (x - t) + (x - x0), method="BFGS",
                     options={"gtol": 1e-12})
    np.testing.assert_allclose(p, brute.x, atol=1e-6)
    assert objective(p) <= objective(brute.x) + 1e-12


@pytest.mark.parametrize("name,options", [("margin", {"margin": 1.0}), ("mse", {"lam": 2.0})])
def test_prox_is_the_same_on_jax_arrays(name, options):
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(5, 4))
    t = np.eye(4)[rng.integers(0, 4, size=5)]
    prim = P.get(name, **options)
    np.testing.assert_allclose(np.asarray(prim.prox(jnp.asarray(x0, jnp.float32), jnp.asarray(t, jnp.float32))),
                               prim.prox(x0, t), rtol=1e-6, atol=1e-6)
