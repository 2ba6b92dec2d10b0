"""Reliability: inputs that used to crash, the memory estimate and its refusal, non-finite
states named at their family, feascomp's own bugs reported as such."""
import json
import os

import numpy as np
import pytest

import feascomp
from feascomp import cli, data, numerics
from feascomp.frontends.dsl import parse_model
from feascomp.resources import MemoryEstimate, parse_size
from feascomp.train import save_params

GOOD = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "digits_mlp.fc")).read()


def test_a_byte_order_mark_is_skipped(tmp_path, capsys):
    p = tmp_path / "bom.fc"
    p.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert cli.main(["dump", str(p), "--stage", "tensor"]) == 0
    assert capsys.readouterr().out == feascomp.compile(parse_model(GOOD, str(p)), batch_size=256).dump("tensor")


def test_optional_parts_of_statements():
    """`param W : T` (zeros) and `output name` (an existing value), which used to crash."""
    m = parse_model("model m\ninput x : f32[4]\nparam W : f32[4, 3]\nh = relu(x @ W)\noutput h\nloss cross_entropy(h)\n")
    assert m.by_kind("param")[0].attr("init") == "zeros" and m.by_kind("output")[0].operands == ("h",)


def test_memory_estimate_parts_and_lowering():
    mat = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="ap")
    col = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="ap", lowering="collapsed")
    for s in (mat, col):
        assert s.memory.edge_state == s.state_bytes == sum(b for _, b in s.memory.families)
        assert s.memory.params == 4 * (784 * 128 + 128 + 128 * 10)
    assert col.memory.peak < mat.memory.peak
    # AP does not store the input's edges (elide_inputs): the first layer's family holds its W copies only
    assert dict(mat.memory.families)["0"] == 4 * 256 * 128 * 784


def test_max_memory_refuses_before_the_first_update_and_allows_above(capsys):
    args = ["train", "examples/digits_mlp.fc", "--dataset", "digits", "--batch-size", "64", "--updates", "1",
            "--steps-per-batch", "1", "--no-progress", "--json"]
    peak = feascomp.compile("examples/digits_mlp.fc", batch_size=64).memory.peak
    assert cli.main(args + ["--max-memory", str(peak - 1)]) == 2
    err = capsys.readouterr().err
    assert "examples/digits_mlp.fc:1:1: error: this run needs an estimated" in err and "--batch-size" in err
    assert cli.main(args + ["--max-memory", str(peak + 1)]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["memory"]["estimated_peak_bytes"] == peak


@pytest.mark.parametrize("text,value", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GB", int(1.5 * 2**30)), ("1000", 1000)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_an_estimate_is_a_sum_of_its_parts():
    m = MemoryEstimate(edge_state=1000, params=10, families=(("a", 600), ("b", 400)))
    assert m.peak == m.as_dict()["runtime_bytes"] + 10 * 4 + 1000 + m.temporaries


def _diverging(ds):
    """Inputs of 1e30: the forward pass is finite in float32, the dot projection's squared
    norms overflow."""
    return data.Dataset("huge", ds.x_train * 1e30, ds.y_train, ds.x_test, ds.y_test)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"algorithm": "dr"}, {"algorithm": "ap", "lowering": "collapsed"}, {"algorithm": "cp"}])
def test_a_diverging_run_names_the_family_and_step(options):
    from feascomp.train import train

    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=64, steps=3, **options)
    with pytest.raises(numerics.Diverged) as e:
        train(solver, _diverging(data.load("digits")), updates=3, progress=False)
    assert e.value.update == 1 and e.value.where.family is not None and e.value.where.step >= 1
    family = solver.program.info[e.value.where.family].family
    assert family.kind == "dot"  # the first to square 1e30-sized values
    assert f"%{family.name} (dot, from examples/digits_mlp.fc:{family.loc.line})" in e.value.render()


def test_divergence_keeps_the_previous_parameters_file(tmp_path, monkeypatch, capsys):
    saved = tmp_path / "p.npz"
    save_params(str(saved), {"W": np.arange(3.0)}, {"model": "before"})
    before = saved.read_bytes()
    monkeypatch.setitem(data.DATASETS, "huge", lambda path, **options: _diverging(data.load("digits", validation=0)))
    code = cli.main(["train", "examples/digits_mlp.fc", "--dataset", "huge", "--batch-size", "64", "--updates", "2",
                     "--steps-per-batch", "2", "--no-progress", "--save", str(saved)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "non-finite (NaN or Inf) at update 1" in err and "family %" in err and f"{saved} keeps its previous contents" in err
    assert saved.read_bytes() == before


def test_finite_check_reads_residuals_and_parameters():
    ok = {"residual": np.ones(3)}
    assert numerics.finite(ok, {"W": np.zeros(2)})
    assert not numerics.finite({"residual": np.array([1.0, np.nan])}, {"W": np.zeros(2)})
    assert not numerics.finite(ok, {"W": np.array([0.0, np.inf])})


def test_a_bug_is_reported_as_such_with_its_traceback_in_a_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)

    def broken(args):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(cli, "_backends", broken)
    assert cli.main(["backends"]) == cli.EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error (a bug in feascomp" in err and "an invariant broke" in err
    path = err.split("the traceback is in ")[1].split(";")[0]
    assert os.path.dirname(path) == str(tmp_path) and "RuntimeError: an invariant broke" in open(path).read()


def test_labels_outside_the_models_classes_are_refused():
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=4, steps=1)
    state = solver.init(solver.init_params(0))
    with pytest.raises(feascomp.FeascompError, match=r"class indices in \[0, 10\)"):
        solver.update(state, np.zeros((4, 64)), np.array([0, 1, 2, 12]))
    with pytest.raises(feascomp.FeascompError, match="one-hot labels have 5 columns"):
        solver.update(state, np.zeros((4, 64)), np.zeros((4, 5)))


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 10 GB")])
def test_running_out_of_memory_anyway_is_a_message(monkeypatch, capsys, error):
    """Where the estimate let a run through and an allocation still failed (NumPy's
    MemoryError, XLA's RESOURCE_EXHAUSTED): exit 2 and one line, not a bug report."""
    def exhausted(args):
        raise error

    monkeypatch.setattr(cli, "_backends", exhausted)
    assert cli.main(["backends"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory during feascomp backends") and "internal error" not in err
