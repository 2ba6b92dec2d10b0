"""The outer step (``outer_step`` / ``--outer-step``): an update moves a named parameter by
a factor times the move the projections gave it; every other parameter as before."""
import json

import numpy as np
import pytest

import feascomp
from feascomp import data
from feascomp.bench import check_spec
from feascomp.cli import main
from feascomp.errors import FeascompError
from feascomp.options import normalize_outer_step

MODEL = "examples/digits_cnn.fc"


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _solver(**kw):
    return feascomp.compile(MODEL, batch_size=32, steps=4, dtype="float64", **kw)


@pytest.mark.parametrize("algorithm,factors", [("dr", {"K1": 9.0, "c2": 0.5}), ("ap", {"K2": 64.0})])
def test_an_update_scales_the_named_parameters_moves(digits, algorithm, factors):
    """Against the plain solver's update from the same parameters on the same batches: the
    named parameters are ``theta + f * (consensus - theta)``, the others identical, and the
    next update starts from the scaled parameters."""
    plain, outer = _solver(algorithm=algorithm), _solver(algorithm=algorithm, outer_step=factors)
    params = plain.init_params(1)
    state = outer.init(params)
    for i in range(2):
        x, y = digits.x_train[32 * i: 32 * (i + 1)], digits.y_train[32 * i: 32 * (i + 1)]
        want, _, _ = plain.update(plain.init(params), x, y)
        got, state, _ = outer.update(state, x, y)
        for k in params:
            f = factors.get(k, 1.0)
            expected = np.asarray(params[k]) + f * (np.asarray(want[k]) - np.asarray(params[k]))
            np.testing.assert_allclose(np.asarray(got[k]), expected, rtol=1e-12, atol=1e-14, err_msg=k)
            assert np.asarray(got[k]).dtype == np.float64
            if f != 1.0:  # the factor is not lost in rounding: the move is visibly scaled
                assert np.abs(np.asarray(got[k]) - np.asarray(want[k])).max() > 1e-6
        for k in params:
            np.testing.assert_array_equal(np.asarray(state.params[k]), np.asarray(got[k]))
        params = got


def test_the_option_is_normalized_and_checked():
    assert normalize_outer_step("K1=784, c1=2") == (("K1", 784.0), ("c1", 2.0))
    assert normalize_outer_step({"b": 3, "a": 1.5}) == (("a", 1.5), ("b", 3.0))
    assert normalize_outer_step(None) == () == normalize_outer_step("")
    for bad, words in [("K1", "PARAM=FACTOR"), ("K1=x", "not a number"), ("K1=0", "finite positive"),
                       ("K1=-2", "finite positive"), ("K1=inf", "finite positive"), ("K1=2,K1=3", "twice"),
                       ("=2", "PARAM=FACTOR")]:
        with pytest.raises(FeascompError, match=words):
            normalize_outer_step(bad)


@pytest.mark.parametrize("kw,words", [
    ({"outer_step": {"K9": 2.0}}, "'K9', not a parameter of this model .*K1, c1, K2, c2, W"),
    ({"outer_step": {"K1": 2.0}, "warm_start": True}, "warm-start"),
    ({"outer_step": {"K1": 2.0}, "algorithm": "adam"}, "learning rate, not an outer step"),
])
def test_refused_combinations_say_why(kw, words):
    with pytest.raises(FeascompError, match=words):
        feascomp.compile(MODEL, batch_size=8, **kw)


def test_the_cli_and_bench_take_it(tmp_path, capsys):
    argv = ["train", MODEL, "--dataset", "digits", "--batch-size", "32", "--updates", "2", "--steps-per-batch", "2",
            "--no-progress", "--json"]
    assert main(argv + ["--outer-step", "K1=9,c1=9"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_accuracy"] >= 0
    assert main(argv + ["--outer-step", "K7=9"]) == 2
    err = capsys.readouterr().err
    assert "digits_cnn.fc" in err and "'K7', not a parameter" in err and "Traceback" not in err
    def spec(step):
        return {"models": {"m": {"file": MODEL}}, "methods": {"dr": {"algorithm": "dr", "outer_step": step}},
                "grid": [{"datasets": ["digits"], "models": ["m"], "methods": ["dr"]}]}

    check_spec(spec("K1=9"), "spec.toml")
    with pytest.raises(FeascompError, match="outer_step must be str"):
        check_spec(spec(9), "spec.toml")


@pytest.mark.parametrize("batch", [2, 3])
def test_the_plan_dump_gives_each_parameters_copies_per_sample(tmp_path, batch):
    """The factor to choose for --outer-step: a kernel convolved over a 6x5 image without
    padding has one copy per output position (4 x 3 = 12) per sample, whatever the batch;
    its bias the same; a dense layer's weight one."""
    model = tmp_path / "conv.fc"
    model.write_text(
        "model conv\ninput x : f32[30]\nparam K : f32[3, 3, 1, 2] = he_normal\n"
        "param c : f32[2] = zeros\nparam W : f32[24, 3] = he_normal\n"
        'img = reshape(x, shape = [6, 5, 1])\nh = relu(conv2d(img, K, padding = "valid") + c)\n'
        "output logits = reshape(h, shape = [24]) @ W\nloss cross_entropy(logits)\n")
    plan = feascomp.compile(str(model), batch_size=batch).dump("plan")
    copies = {line.split("=")[0].strip(" %"): line.rsplit("copies per sample ", 1)[1]
              for line in plan.splitlines() if "= param()" in line}
    assert copies == {"K": "12", "c": "12", "W": "1"}


def test_checkpoints_from_before_the_option_still_resume(digits):
    """Checkpoints written before --outer-step existed record no ``outer_step`` option: a run
    without one must fingerprint the same (else every older checkpoint is refused), and a
    run with one must differ from it, by name."""
    from feascomp import checkpoint

    def options(solver):
        return checkpoint.fingerprint(solver, digits, seed=0, protocol={})["options"]

    plain, outer = options(_solver(algorithm="dr")), options(_solver(algorithm="dr", outer_step="K1=9"))
    assert "outer_step" not in plain  # what the code before the option wrote: no outer_step
    diff = checkpoint._differences({"options": plain}, {"options": outer})
    assert len(diff) == 1 and diff[0].startswith("options.outer_step: checkpoint '(absent)'")
