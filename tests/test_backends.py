"""The JAX backend against the NumPy scalar-graph oracle, which builds the literal scalar
graph from the tensor IR by its own code (no scalarize, no index maps)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp
from feascomp import backends
from feascomp.frontends.dsl import parse_model
from models import mlp_source

# DR and DM fold the input into the first layer's products by default (fold_inputs): the
# oracle folds alike; the unfolded splitting is checked too
ALGORITHMS = [("ap", {}), ("dr", {}), ("dr", {"relaxation": 0.8}), ("dr", {"fold_inputs": False}), ("cp", {}),
              ("dm", {}), ("dm", {"beta": 0.7})]

models = st.tuples(
    st.lists(st.integers(1, 3), min_size=2, max_size=5).map(lambda w: w[:-1] + [max(w[-1], 2)]),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.booleans(),  # readout
    st.integers(1, 3),  # batch
    st.integers(0, 2**31 - 1),
    st.booleans(),  # weighted
)


def run(tensor, batch, backend, algorithm, options, params, x, y, weighted):
    # input edges stored (elide_inputs=False): AP's residual then covers every scalar edge, as the oracle's
    # does; tests/test_elide.py checks that eliding them leaves the iterates unchanged
    solver = feascomp.compile(tensor, batch_size=batch, algorithm=algorithm, steps=10, dtype="float64",
                              backend=backend, weighted=weighted, elide_inputs=False, **options)
    p, _, info = solver.update(solver.init(params), x, y)
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,options", ALGORITHMS, ids=[f"{a}{o}" for a, o in ALGORITHMS])
def test_jax_matches_scalar_graph_oracle(algorithm, options):
    @settings(max_examples=6, deadline=None)  # the suite's time budget
    @given(models)
    def check(case):
        widths, bias, readout, batch, seed, weighted = case
        tensor = parse_model(mlp_source(widths, bias, readout))
        rng = np.random.default_rng(seed)
        params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
        x = rng.normal(size=(batch, widths[0]))
        y = rng.integers(0, widths[-1], size=batch)
        pj, rj = run(tensor, batch, "jax", algorithm, options, params, x, y, weighted)
        pn, rn = run(tensor, batch, "numpy", algorithm, options, params, x, y, weighted)
        for k in pj:
            np.testing.assert_allclose(pj[k], pn[k], rtol=1e-6, atol=1e-9, err_msg=k)
        np.testing.assert_allclose(rj, rn, rtol=1e-6, atol=1e-9)

    check()


FEASIBLE = """model f
input x : f64[2]
param W0 : f64[2, 3] = normal
param b0 : f64[3] = normal
param W1 : f64[3, 2] = normal
h = relu(x @ W0 + b0)
output logits = h @ W1
loss margin(logits, margin = 1.0)
"""


@pytest.mark.parametrize("backend", ["jax", "numpy"])
@pytest.mark.parametrize("algorithm", ["ap", "dr", "cp", "dm"])
def test_feasible_point_is_a_fixed_point(backend, algorithm):
    """Data the model fits exactly under margin targets: the forward-pass state satisfies
    every constraint, so no algorithm moves it."""
    params = {"W0": np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]), "b0": np.array([0.0, 0.0, 0.1]),
              "W1": np.array([[2.0, -1.0], [-1.0, 2.0], [0.0, 0.0]])}
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.5]])
    y = np.array([0, 1, 0])  # logits: (2,-1), (-1,2), (3.5,0): true class >= 1, others <= 0
    solver = feascomp.compile(parse_model(FEASIBLE), batch_size=3, algorithm=algorithm, steps=5, dtype="float64", backend=backend)
    p, _, info = solver.update(solver.init(params), x, y)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), params[k], atol=1e-12)
    assert np.max(np.abs(np.asarray(info["residual"]))) < 1e-12


def test_backends_are_discoverable():
    assert {"jax", "numpy"} <= set(backends.available())
    with pytest.raises(feascomp.FeascompError, match="unknown backend"):
        backends.load("tpu9000")


def test_numpy_backend_refuses_large_models(capsys):
    from feascomp.cli import main

    assert main(["train", "examples/mnist_mlp.fc", "--backend", "numpy", "--updates", "1"]) == 2
    assert "per-scalar reference for small models" in capsys.readouterr().err
