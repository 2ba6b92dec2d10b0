"""The collapsed lowering (AP): the same iterates as the materialized lowering, from values
and per-node coefficients instead of stored edges."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp
from feascomp import data, primitives
from feascomp.errors import FeascompError
from feascomp.frontends.dsl import parse_model
from feascomp.passes import DEFAULT_PIPELINE, FUSED_PIPELINE
from models import mlp_source

models = st.tuples(
    st.lists(st.integers(1, 4), min_size=2, max_size=5).map(lambda w: w[:-1] + [max(w[-1], 2)]),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.booleans(),  # readout
    st.integers(1, 3),  # batch
    st.integers(0, 2**31 - 1),
    st.booleans(),  # weighted
    st.sampled_from(["cross_entropy(logits)", "margin(logits)"]),
)


def run(tensor, batch, lowering, params, x, y, weighted, steps=6, pipeline=DEFAULT_PIPELINE, updates=1):
    solver = feascomp.compile(tensor, batch_size=batch, algorithm="ap", steps=steps, dtype="float64",
                              weighted=weighted, lowering=lowering, pipeline=pipeline)
    state = solver.init(params)
    for i in range(updates):
        p, state, info = solver.update(state, x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"]), solver


@settings(max_examples=10, deadline=None)
@given(models)
def test_collapsed_ap_matches_materialized_on_random_mlps(case):
    widths, bias, readout, batch, seed, weighted, loss = case
    tensor = parse_model(mlp_source(widths, bias, readout, loss=loss))
    rng = np.random.default_rng(seed)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x = rng.normal(size=(batch, widths[0]))
    y = rng.integers(0, widths[-1], size=batch)
    pm, rm, _ = run(tensor, batch, "materialized", params, x, y, weighted)
    pc, rc, solver = run(tensor, batch, "collapsed", params, x, y, weighted)
    assert solver.program.collapsed  # every dense layer qualifies
    for k in pm:
        np.testing.assert_allclose(pc[k], pm[k], rtol=1e-9, atol=1e-11, err_msg=k)
    np.testing.assert_allclose(rc, rm, rtol=1e-7, atol=1e-9)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.mark.parametrize("model,collapsed", [("examples/digits_mlp.fc", {"0", "logits"}),
                                             ("examples/digits_readout.fc", {"0", "2", "4"}),
                                             ("examples/digits_residual.fc", {"0", "2", "logits"}),
                                             ("examples/digits_cnn.fc", {"logits"})])
def test_collapsed_ap_matches_materialized_on_examples(model, collapsed, digits):
    """Two updates of 4 steps, weighted; convolutions stay materialized next to collapsed
    dense layers."""
    pipeline = FUSED_PIPELINE if model.endswith("readout.fc") else DEFAULT_PIPELINE
    tensor = feascomp.solver.load_model(model)
    params = feascomp.compile(tensor, batch_size=8, pipeline=pipeline).init_params(0)
    x, y = digits.x_train[:16], digits.y_train[:16]
    pm, rm, sm = run(tensor, 8, "materialized", params, x, y, True, steps=4, pipeline=pipeline, updates=2)
    pc, rc, sc = run(tensor, 8, "collapsed", params, x, y, True, steps=4, pipeline=pipeline, updates=2)
    assert set(sc.program.collapsed) == collapsed
    assert sc.state_bytes < sm.state_bytes
    for k in pm:
        np.testing.assert_allclose(pc[k], pm[k], rtol=1e-9, atol=1e-11, err_msg=k)
    np.testing.assert_allclose(rc, rm, rtol=1e-7)


def test_collapsed_state_is_values_and_coefficients():
    """784-128-10, batch 256: the edge state is the hidden layer's values, W2, and six
    coefficients per dot node, not the [256, 128, 784] copies of W1."""
    s = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="ap", lowering="collapsed")
    m = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="ap")
    assert m.state_bytes > 100e6
    assert s.state_bytes < 2e6


@pytest.mark.parametrize("options,needs", [(dict(algorithm="dr"), "--algorithm ap"), (dict(algorithm="cp"), "--algorithm ap"),
                                           (dict(algorithm="ap", warm_start=True), "cold start"),
                                           (dict(algorithm="ap", monitor=True), "monitoring"),
                                           (dict(algorithm="ap", backend="numpy"), "jax backend"),
                                           (dict(algorithm="ap", lowering="fused"), "lowering must be one of")])
def test_collapsed_lowering_refuses_what_it_cannot_do(options, needs):
    options = {"lowering": "collapsed", **options}
    with pytest.raises(FeascompError, match=needs):
        feascomp.compile("examples/digits_mlp.fc", batch_size=4, **options)


def test_collapsed_ap_trains_like_materialized(digits):
    """float32 training: the same accuracy to within rounding's effect."""
    from models import fit

    acc = {}
    for lowering in ("materialized", "collapsed"):
        s = feascomp.compile("examples/digits_mlp.fc", batch_size=64, algorithm="ap", steps=20, lowering=lowering)
        p, _, _ = fit(s, digits, 20)
        acc[lowering] = s.accuracy(p, digits.x_test, digits.y_test)
    assert acc["collapsed"] > 0.7
    assert abs(acc["collapsed"] - acc["materialized"]) < 0.03, acc


vectors = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-3, 3), min_size=n, max_size=n), st.lists(st.floats(-3, 3), min_size=n, max_size=n),
    st.floats(-5, 5), st.sampled_from([1.0, 2.0, 7.0])))


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_dot_linear_rule_reproduces_the_projection(case):
    """dot's coefficients (from |a|², |b|², <a, b>) applied to (a0, b0) give the projection
    itself, to rounding (the Gram form loses accuracy only where a0 ≈ ∓b0)."""
    a0, b0, z0, w = (np.asarray(v, np.float64) if isinstance(v, list) else v for v in case)
    dot = primitives.get("dot")
    (a, b), z = dot.project((a0[None], b0[None]), np.array([z0]), w)
    gram = (a0 @ a0, b0 @ b0, a0 @ b0)
    coef, zc = dot.project_linear([np.array([g]) for g in gram], np.array([z0]), w)
    first = np.eye(len(a0))[0]
    basis = (a0, b0, first)
    ac = sum(coef[0][t][0] * basis[t] for t in range(3))
    bc = sum(coef[1][t][0] * basis[t] for t in range(3))
    scale = 1 + np.abs(a0).sum() + np.abs(b0).sum() + abs(z0)
    tol = 1e-7 * scale / max(np.linalg.norm(a0 + b0) * np.linalg.norm(a0 - b0) / scale**2, 1e-3)
    np.testing.assert_allclose(zc, z, atol=tol)
    np.testing.assert_allclose(ac, a[0], atol=tol)
    np.testing.assert_allclose(bc, b[0], atol=tol)
