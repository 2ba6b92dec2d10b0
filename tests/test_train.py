"""End-to-end: compile, train on sklearn's digits, save, evaluate."""
import json

import jax
import numpy as np
import pytest

import feascomp
from models import fit
from feascomp import data
from feascomp.cli import main
from feascomp.train import load_params

REQUIRED = {"algorithm", "dataset", "seed", "updates", "steps", "train_accuracy", "test_accuracy",
            "seconds_per_step", "compile_seconds", "peak_rss_mb"}


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_split(digits):
    # 1,400 train (10 % of them held out for validation) and 397 test
    assert digits.x_train.shape == (1260, 64) and digits.x_val.shape == (140, 64) and digits.x_test.shape == (397, 64)
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_mnist5k_split():
    ds = data.load("mnist5k")
    assert ds.x_train.shape == (3600, 784) and ds.x_val.shape == (400, 784) and ds.x_test.shape == (1000, 784)
    assert ds.x_train.max() == pytest.approx(1.0) and ds.x_train.min() == 0.0
    counts = np.bincount(ds.y_train, minlength=10)
    assert counts.min() > 300  # shuffled: every class in the training split


@pytest.mark.slow
def test_cli_trains_digits_by_dr_saves_and_evaluates(tmp_path, capsys):
    out = tmp_path / "params.npz"
    code = main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--batch-size", "64",
                 "--updates", "25", "--seed", "1", "--json", "--save", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert REQUIRED <= set(report)
    assert report["steps"] == 25 * 50 and report["algorithm"] == "dr" and report["dataset"] == "digits"
    assert report["test_accuracy"] >= 0.80, report
    assert report["seconds_per_step"] > 0 and report["compile_seconds"] > 0
    # DR's second dense layer runs the native step; the first, input folded, has its copies factored
    assert report["fused_families"] == ["logits"] and report["factored_families"] == ["0"]
    ds = data.load("digits")  # the majority class's test accuracy, the floor beside the model's
    assert report["majority_accuracy"] == pytest.approx(np.mean(ds.y_test == np.bincount(ds.y_train).argmax()))
    params = load_params(str(out))
    assert set(params) == {"W1", "b1", "W2"} and params["W1"].shape == (64, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".feascomp-")]  # no temporary left
    code = main(["eval", "examples/digits_mlp.fc", "--params", str(out), "--dataset", "digits", "--json"])
    assert code == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_accuracy"] == pytest.approx(report["test_accuracy"])


@pytest.mark.slow
def test_api_trains_digits_by_ap(digits):
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=64, algorithm="ap", steps=50)
    params = solver.init_params(seed=0)
    state = solver.init(params)
    rng = np.random.default_rng(0)
    order = data.batches(len(digits.x_train), 64, rng)
    for _ in range(30):
        idx = next(order)
        params, state, info = solver.update(state, digits.x_train[idx], digits.y_train[idx])
        assert info["residual"].shape == (50,)
    assert state.count == 30
    assert solver.accuracy(params, digits.x_test, digits.y_test) >= 0.80


def test_onehot_and_integer_labels_agree(digits):
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=16, steps=3)
    state = solver.init(solver.init_params(0))
    x, y = digits.x_train[:16], digits.y_train[:16]
    p1, _, _ = solver.update(state, x, y)
    p2, _, _ = solver.update(state, x, np.eye(10)[y])
    for k in p1:
        np.testing.assert_array_equal(np.asarray(p1[k]), np.asarray(p2[k]))


def test_wrong_sample_shape_is_an_error(digits):
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=16, steps=2)
    state = solver.init(solver.init_params(0))
    with pytest.raises(feascomp.FeascompError, match="compiled for"):  # (another batch size is fine: test_protocol)
        solver.update(state, digits.x_train[:16, :63], digits.y_train[:16])


def count_equations(jaxpr) -> int:
    from jax.extend.core import subjaxprs

    return len(jaxpr.eqns) + sum(count_equations(sub) for sub in subjaxprs(jaxpr))


def test_update_is_vectorised_not_unrolled():
    """No Python loop over nodes or edges: the traced program has the same number of
    equations whatever the batch size (each family is one vectorised projection)."""
    sizes = []
    for batch in (4, 32):
        solver = feascomp.compile("examples/digits_mlp.fc", batch_size=batch, steps=2)
        p = solver.init_params(0)
        x = np.zeros((batch, 64), np.float32)
        y = np.zeros((batch, 10), np.float32)
        jaxpr = jax.make_jaxpr(solver.backend.update_fn())(p, x, y)
        sizes.append(count_equations(jaxpr.jaxpr))
    assert sizes[0] == sizes[1]


def test_float64_run_is_explicit():
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=8, steps=2, dtype="float64")
    state = solver.init(solver.init_params(0))
    params, _, _ = solver.update(state, np.zeros((8, 64)), np.zeros(8, int))
    assert np.asarray(params["W1"]).dtype == np.float64
    assert not jax.config.jax_enable_x64  # nothing global was left switched on


@pytest.mark.slow
def test_sign_network_trains_by_dr(digits, capsys):
    """Sign activations are non-differentiable everywhere; DR still trains them (here with
    XLA's code throughout: --no-fuse-kernels)."""
    code = main(["train", "examples/digits_sign.fc", "--dataset", "digits", "--batch-size", "64",
                 "--updates", "30", "--seed", "0", "--json", "--no-fuse-kernels"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["fused_families"] == []
    print(f"sign network: test accuracy {report['test_accuracy']:.3f}")
    assert report["test_accuracy"] >= 0.50


@pytest.mark.parametrize("activation", ["leaky_relu(x @ W1 + b1, slope = 0.1)", "clip(x @ W1 + b1)",
                                        "quantize(x @ W1 + b1, levels = 4, scale = 1.0)", "max(x @ W1, x @ W3)",
                                        "square(x @ W1) + b1"])
def test_other_activations_compile_and_learn(tmp_path, digits, activation):
    src = f"""input x : f32[64]
param W1 : f32[64, 32] = he_normal
param b1 : f32[32] = zeros
param W2 : f32[32, 10] = he_normal
param W3 : f32[64, 32] = he_normal
h = {activation}
output logits = h @ W2
loss cross_entropy(logits)
"""
    path = tmp_path / "m.fc"
    path.write_text(src)
    solver = feascomp.compile(str(path), batch_size=64, steps=20)
    params, state, info = fit(solver, digits, 10, seed=0)
    assert np.all(np.isfinite(np.asarray(info["residual"])))
    assert solver.accuracy(params, digits.x_test, digits.y_test) > 0.3  # well above chance (0.1)


def test_weighted_projection_is_selectable(digits):
    x, y = digits.x_train[:16], digits.y_train[:16]
    out = {}
    for weighted in (False, True):
        solver = feascomp.compile("examples/digits_mlp.fc", batch_size=16, steps=5, weighted=weighted)
        params, _, _ = solver.update(solver.init(solver.init_params(0)), x, y)
        out[weighted] = np.asarray(params["W1"])
    assert not np.allclose(out[False], out[True])  # sum_relu's out-degree is 10, not 1


@pytest.mark.slow
def test_residual_model_trains_by_dr(digits):
    """A skip connection makes paths of different parity; one identity family fixes it."""
    solver = feascomp.compile("examples/digits_residual.fc", batch_size=64, steps=50)
    params, state, _ = fit(solver, digits, 30, seed=0)
    assert solver.accuracy(params, digits.x_test, digits.y_test) >= 0.80
