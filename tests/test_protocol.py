"""The paper's protocol in the driver (validation, best-on-validation, early stopping, the
target accuracy, a time budget), checkpoints that resume bit for bit, batches of any size,
--seeds, and feascomp bench."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import feascomp
from feascomp import data
from feascomp.cli import main
from feascomp.errors import FeascompError
from feascomp.train import Interrupted, load_params, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def dr(digits):
    return feascomp.compile("examples/digits_mlp.fc", batch_size=64, algorithm="dr", steps=5)


@pytest.fixture(scope="module")
def adam(digits):
    return feascomp.compile("examples/digits_mlp.fc", batch_size=64, algorithm="adam", learning_rate=1e-2)


def test_best_on_validation_is_reported_on_test(dr, digits):
    params, r = train(dr, digits, updates=12, eval_every=3, progress=False)
    accs = [e["accuracy"] for e in r["evaluations"]]
    assert [e["update"] for e in r["evaluations"]] == [3, 6, 9, 12] and r["evaluated_on"] == "validation"
    best = int(np.argmax(accs))  # the first of equals
    assert r["best_validation_accuracy"] == accs[best] and r["best_update"] == 3 * (best + 1)
    assert r["test_accuracy"] == dr.accuracy(params, digits.x_test, digits.y_test)
    assert dr.accuracy(params, digits.x_val, digits.y_val) == accs[best]
    first = next(e for e in r["evaluations"] if e["accuracy"] >= 0.99 * max(accs))
    assert r["steps_to_best"] == first["step"] == first["update"] * 5 and r["seconds_to_best"] == first["seconds"]
    seconds = [e["seconds"] for e in r["evaluations"]]
    assert seconds == sorted(seconds) and seconds[-1] <= r["training_seconds"]


def test_target_accuracy_stops_at_the_first_evaluation_reaching_it(adam, digits):
    _, r = train(adam, digits, updates=400, eval_every=5, target_accuracy=0.8, progress=False)
    accs = [e["accuracy"] for e in r["evaluations"]]
    assert r["stopped"] == "target" and accs[-1] >= 0.8 and all(a < 0.8 for a in accs[:-1])
    assert r["updates"] == r["updates_to_target"] == r["steps_to_target"] < 400
    assert r["seconds_to_target"] == r["evaluations"][-1]["seconds"] <= r["training_seconds"]


@pytest.mark.parametrize("flags,every", [([], 10), (["--target-accuracy", "0.999"], 1),
                                         (["--target-accuracy", "0.999", "--eval-every", "4"], 4)])
def test_eval_every_defaults_to_every_update_with_a_target(flags, every, capsys):
    """With a target and no --eval-every, every update is evaluated: the time to the
    target is known to an update, not to ten."""
    argv = ["train", "examples/digits_mlp.fc", "--dataset", "digits", "--algorithm", "adam", "--updates", "12",
            "--json", "--no-progress", *flags]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [e["update"] for e in report["evaluations"]] == sorted({*range(every, 13, every), 12})


def test_patience_stops_after_evaluations_without_improvement(adam, digits):
    _, r = train(adam, digits, updates=400, eval_every=1, patience=2, progress=False)
    accs = [e["accuracy"] for e in r["evaluations"]]
    assert r["stopped"] == "patience" and r["updates"] < 400
    assert max(accs[-2:]) <= max(accs[:-2]) and all(  # never two stale evaluations in a row before the end
        max(accs[i:i + 2]) > max(accs[:i]) for i in range(1, len(accs) - 2))


def test_a_time_budget_stops_the_run(adam, digits):
    _, r = train(adam, digits, updates=10_000, eval_every=1000, max_seconds=1e-9, progress=False)
    assert r["stopped"] == "time" and r["updates"] == 1 and len(r["evaluations"]) == 1


class _StopAt:
    """A stop flag that is set when asked the n-th time (after update n)."""

    def __init__(self, n):
        self.n, self.asked = n, 0

    def is_set(self):
        self.asked += 1
        return self.asked >= self.n


@pytest.mark.parametrize("method", ["dr", "adam"])
def test_an_interrupted_run_resumes_bit_for_bit(method, dr, adam, digits, tmp_path):
    solver = {"dr": dr, "adam": adam}[method]
    full, r1 = train(solver, digits, updates=9, eval_every=4, progress=False)
    with pytest.raises(Interrupted, match="after update 5 of 9"):
        train(solver, digits, updates=9, eval_every=4, progress=False, checkpoint=str(tmp_path), stop=_StopAt(5))
    resumed, r2 = train(solver, digits, updates=9, eval_every=4, progress=False, checkpoint=str(tmp_path))
    assert all(np.array_equal(full[k], resumed[k]) for k in full)
    assert r1["evaluations"][-1]["accuracy"] == r2["evaluations"][-1]["accuracy"]
    assert [e["accuracy"] for e in r1["evaluations"]] == [e["accuracy"] for e in r2["evaluations"]]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".feascomp-")]
    again, r3 = train(solver, digits, updates=9, eval_every=4, progress=False, checkpoint=str(tmp_path))  # finished
    assert r3["updates"] == 9 and all(np.array_equal(full[k], again[k]) for k in full)


def test_a_checkpoint_of_another_run_is_refused_with_what_differs(dr, digits, tmp_path):
    train(dr, digits, updates=2, eval_every=1, progress=False, checkpoint=str(tmp_path))
    with pytest.raises(FeascompError) as e:
        train(dr, digits, updates=2, eval_every=1, progress=False, checkpoint=str(tmp_path), seed=3)
    assert "seed: checkpoint 0, this run 3" in e.value.message and "checkpoint.npz" in str(e.value.loc)
    other = feascomp.compile("examples/digits_mlp.fc", batch_size=64, algorithm="dr", steps=6)
    with pytest.raises(FeascompError, match="options.steps: checkpoint 5, this run 6"):
        train(other, digits, updates=2, eval_every=1, progress=False, checkpoint=str(tmp_path))
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(FeascompError, match="not a readable feascomp checkpoint"):
        train(dr, digits, updates=2, eval_every=1, progress=False, checkpoint=str(tmp_path))
    np.savez(tmp_path / "checkpoint.npz", meta=np.asarray(json.dumps({"format": "something-else/3"})))
    with pytest.raises(FeascompError, match="not a feascomp checkpoint"):
        train(dr, digits, updates=2, eval_every=1, progress=False, checkpoint=str(tmp_path))


def test_update_takes_a_batch_of_any_size(dr, digits):
    state = dr.init(dr.init_params(0))
    x, y = digits.x_train[:10], digits.y_train[:10]
    p_any, _, info = dr.update(state, x, y)
    ten = feascomp.compile("examples/digits_mlp.fc", batch_size=10, algorithm="dr", steps=5)
    p_ten, _, _ = ten.update(ten.init(dr.init_params(0)), x, y)
    assert all(np.array_equal(np.asarray(p_any[k]), np.asarray(p_ten[k])) for k in p_ten)
    assert dr.for_batch(10) is dr.for_batch(10) and len(info["residual"]) == 5  # compiled once, cached
    _, after64, _ = dr.update(state, digits.x_train[:64], digits.y_train[:64])
    _, after10, _ = dr.update(after64, x, y)  # a state holding another batch size's buffers
    _, _, info = dr.update(after10, digits.x_train[:64], digits.y_train[:64])
    assert np.isfinite(info["residual"]).all()
    with pytest.raises(FeascompError, match="at least one sample"):
        dr.for_batch(0)


def test_seeds_are_run_and_aggregated(capsys):
    code = main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--batch-size", "64", "--algorithm", "adam",
                 "--updates", "3", "--eval-every", "3", "--seeds", "0,2", "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and [r["seed"] for r in lines[:2]] == [0, 2]
    summary = lines[-1]
    accs = [r["test_accuracy"] for r in lines[:2]]
    assert summary["runs"] == 2 and summary["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert summary["test_accuracy"]["std"] == pytest.approx(np.std(accs))


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_the_same_command_resumes_bit_for_bit(tmp_path):
    """The acceptance test: SIGINT after a checkpoint exists; exit 130; the same command
    resumes; the final parameters equal an uninterrupted run's, bit for bit."""
    base = [sys.executable, "-m", "feascomp.cli", "train", "examples/digits_mlp.fc", "--dataset", "digits",
            "--batch-size", "64", "--steps-per-batch", "10", "--updates", "30", "--eval-every", "5", "--no-progress"]
    whole = tmp_path / "whole.npz"
    subprocess.run(base + ["--save", str(whole)], cwd=ROOT, check=True, capture_output=True)
    ck, resumed = tmp_path / "ck", tmp_path / "resumed.npz"
    cmd = base + ["--checkpoint", str(ck), "--checkpoint-every", "1", "--save", str(resumed)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (ck / "seed-0" / "checkpoint.npz").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command to resume" in err, err
    assert not resumed.exists()
    with np.load(ck / "seed-0" / "checkpoint.npz") as z:
        done = json.loads(str(z["meta"]))["done"]
    assert 1 <= done < 30
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    a, b = load_params(str(whole)), load_params(str(resumed))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _in_process(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


SPEC = """
title = "tiny table"
[defaults]
batch_size = 64
eval_every = 2
[methods.adam]
algorithm = "adam"
updates = 4
[methods.dr]
algorithm = "dr"
updates = 2
steps_per_batch = 3
[models.mlp]
file = "examples/digits_mlp.fc"
depth = 1
[models.readout]
file = "examples/digits_readout.fc"
depth = 2
[[grid]]
datasets = ["digits"]
models = ["mlp", "readout"]
methods = ["adam", "dr"]
seeds = [0]
"""


@pytest.mark.slow
def test_bench_runs_a_grid_writes_tables_and_figures_and_resumes(tmp_path):
    from feascomp.bench import check_spec, run_bench
    import tomllib

    spec = check_spec(tomllib.loads(SPEC), "tiny.toml", SPEC)
    calls = []

    def runner(argv):
        calls.append(argv)
        return _in_process(argv)

    summary = run_bench(spec, str(tmp_path), progress=False, runner=runner)
    assert len(calls) == 4 and [r["method"] for r in summary["rows"]] == ["adam", "dr", "adam", "dr"]
    table = (tmp_path / "table.md").read_text()
    assert "| Dataset | Model | Method | Accuracy (%) | Steps (k) | Time (s) | Step (ms) | Seeds | Budget |" in table
    assert "| digits | readout | dr |" in table and "2 updates" in table
    lines = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    for row, line in zip(summary["rows"], lines):  # every number from a committed JSON line
        assert line["command"].startswith("feascomp train examples/digits_")
        assert line["machine"]["cores"] == os.cpu_count()  # where the run was measured
        assert row["accuracy"] == [line["report"]["test_accuracy"]]
    assert (tmp_path / "table.csv").read_text().splitlines()[0].startswith("Dataset,Model,Method")
    assert json.loads((tmp_path / "results.json").read_text())["machine"]["cores"] == os.cpu_count()
    for png in ("accuracy_vs_steps.png", "accuracy_vs_time.png", "step_time_vs_depth.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    run_bench(spec, str(tmp_path), progress=False, runner=runner)  # all done: nothing runs again
    assert len(calls) == 4


def test_bench_times_to_thresholds_are_medians_over_seeds_with_ratios():
    """Time to each threshold: the first evaluation reaching it, the median over seeds, the
    ratio to the baseline's median; a seed that never reached it counts as infinitely slow
    (no median unless more than half did)."""
    from feascomp.bench import summarise

    def run(method, seed, curve):
        evals = [{"update": i + 1, "step": i + 1, "seconds": s, "accuracy": a} for i, (s, a) in enumerate(curve)]
        return {"dataset": "d", "model": "m", "method": method, "seed": seed, "budget": "b",
                "report": {"test_accuracy": 0.9, "evaluations": evals}}

    results = [run("dr", 0, [(2.0, 0.8), (4.0, 0.9)]), run("dr", 1, [(3.0, 0.86), (9.0, 0.91)]),
               run("dr", 2, [(5.0, 0.9)]), run("ap", 0, [(1.0, 0.92)]), run("ap", 1, [(3.0, 0.92)]),
               run("ap", 2, [(1.0, 0.5)]),
               run("adam", 0, [(0.1, 0.85), (0.2, 0.9)]), run("adam", 1, [(0.3, 0.9)]), run("adam", 2, [(0.1, 0.95)])]
    rows = {r["method"]: r for r in summarise(results, [0.85, 0.9, 0.95], "adam")}
    dr, adam = rows["dr"]["to_threshold"], rows["adam"]["to_threshold"]
    assert dr["0.85"]["median_seconds"] == 4.0 and dr["0.9"]["median_seconds"] == 5.0  # {4, 3, 5} and {4, 9, 5}
    assert adam["0.9"]["median_seconds"] == 0.2 and dr["0.9"]["ratio"] == pytest.approx(25.0)
    assert adam["0.95"] == {"median_seconds": None, "reached": 1, "runs": 3}
    assert rows["dr"]["cells"][-3:] == ["4.00 (40×)", "5.00 (25×)", "– [0/3]"]
    assert rows["adam"]["cells"][-1] == "– [1/3]"
    assert rows["ap"]["to_threshold"]["0.9"]["median_seconds"] == 3.0  # {1, 3, never}: not the mean of 1 and 3


@pytest.mark.parametrize("text,message,line", [
    ("title = 'x'\n[grid\n", "invalid TOML", 2),
    ("thresholds = [0.9, 1.5]\n", "thresholds must be a list", 1),
    ("baseline = 'adam'\n", "baseline names method 'adam'", 1),
    ("colour = 1\n", "unknown key 'colour'", 1),
    ("[methods.dr]\nalgorithm = 'dr'\nupdate = 3\n", "unknown option 'update'", 3),
    ("[methods.dr]\nalgorithm = 'dr'\nupdates = 'many'\n", "option updates must be int", 3),
    ("[methods.dr]\nalgorithm='dr'\n[models.m]\nfile='a.fc'\n[[grid]]\ndatasets=['digits']\nmodels=['m']\n"
     "methods=['sgd']\n", "grid names method 'sgd'", 8),
    ("[methods.dr]\nalgorithm='dr'\n[models.m]\nfile='a.fc'\n[[grid]]\ndatasets=['imagenet']\nmodels=['m']\n"
     "methods=['dr']\n", "unknown dataset 'imagenet'", 6),
])
def test_bench_spec_errors_are_located(tmp_path, capsys, text, message, line):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and f"spec.toml:{line}:" in err, err


@pytest.mark.parametrize("spec", sorted(f for f in os.listdir("docs/results") if f.endswith(".toml")))
def test_committed_bench_specs_are_valid(spec, capsys):
    """Every committed spec (Tables 2-4) parses, names real models, and lists its commands."""
    assert main(["bench", os.path.join("docs/results", spec), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("feascomp train examples/") and os.path.exists(line.split()[2]) for line in lines)


def test_bench_tables_only_writes_the_runs_present_with_their_machines(tmp_path, capsys):
    """--tables-only runs nothing: the table holds the runs already logged, names the
    grid's others as not run yet, and says which machine measured which runs (a run logged
    before machines were recorded says so, rather than taking this machine's name)."""
    from feascomp.bench import check_spec, expand
    import tomllib

    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(SPEC)
    spec = check_spec(tomllib.loads(SPEC), str(spec_path), SPEC)
    runs = expand(spec)
    out = tmp_path / "out"
    # nothing logged yet: refused, located at the log, exit 2
    assert main(["bench", str(spec_path), "--out", str(out), "--tables-only"]) == 2
    assert "runs.jsonl" in capsys.readouterr().err and not out.exists()

    box = {"cpu": "Box 9000", "cores": 2, "memory_bytes": 24 * 2**30, "python": "3.11.7", "jax": "0.10.2",
           "platform": "Linux", "date": "2026-12-01"}
    evals = [{"update": 1, "step": 3, "seconds": 0.5, "accuracy": 0.5}, {"update": 2, "step": 6, "seconds": 1.0, "accuracy": 0.7}]
    logged = []
    for i, r in enumerate(runs[:3]):  # adam, dr on mlp; adam on readout
        entry = {k: r[k] for k in ("dataset", "model", "method", "seed", "depth", "budget", "command")}
        entry["report"] = {"test_accuracy": 0.61 + i / 100, "evaluations": evals, "steps_to_best": 6,
                           "seconds_to_best": 1.0, "seconds_per_step": 0.01, "updates": 2, "stopped": "updates"}
        if i:  # the third on another kernel build of the same machine: one machine in the table
            entry["machine"] = box if i == 1 else {**box, "platform": "Linux-6.18-other-build"}
        logged.append(entry)
    out.mkdir()
    (out / "runs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in logged))

    def boom(argv):
        raise AssertionError("--tables-only ran " + " ".join(argv))

    from feascomp.bench import run_bench

    summary = run_bench(spec, str(out), progress=False, tables_only=True, runner=boom)
    assert [r["accuracy"] for r in summary["rows"]] == [[0.61], [0.62], [0.63]]
    assert [r["method"] for r in summary["not_run"]] == ["dr"] and summary["not_run"][0]["model"] == "readout"
    assert summary["run_machines"] == [{"machine": None, "runs": 1}, {"machine": box, "runs": 2}]
    table = (out / "table.md").read_text()
    assert "- a machine not recorded: 1 run\n" in table
    assert "- Box 9000 (2 cores, 24 GiB), Python 3.11.7, JAX 0.10.2, 2026-12-01: 2 runs\n" in table
    assert "Not run yet (1 of the grid's runs" in table and "digits readout dr seed 0." in table
    assert "| digits | readout | adam | 63.0 |" in table and "| digits | readout | dr |" not in table
    # one machine for every run: a single line, as before
    (out / "runs.jsonl").write_text("".join(json.dumps({**e, "machine": box}) + "\n" for e in logged))
    assert main(["bench", str(spec_path), "--out", str(out), "--tables-only", "--no-progress"]) == 0
    table = (out / "table.md").read_text()
    assert "Measured on Box 9000 (2 cores, 24 GiB), Python 3.11.7, JAX 0.10.2, 2026-12-01.\n" in table


def test_bench_runs_a_run_logged_as_failed_again(tmp_path):
    """A run that failed (a dataset not installed then, say) is not a result to keep: the
    next bench runs it again and its new line is the one the table reads."""
    from feascomp.bench import check_spec, expand, run_bench
    import tomllib

    spec = check_spec(tomllib.loads(SPEC), "tiny.toml", SPEC)
    runs = expand(spec)
    report = {"test_accuracy": 0.5, "evaluations": [{"update": 1, "step": 3, "seconds": 0.5, "accuracy": 0.5}],
              "steps_to_best": 3, "seconds_to_best": 0.5, "seconds_per_step": 0.01, "updates": 1, "stopped": "updates"}
    lines = [{**{k: r[k] for k in ("dataset", "model", "method", "seed", "depth", "budget", "command")},
              **({"error": {"exit": 2, "stderr": ["no folder"]}} if i == 1 else {"report": report})}
             for i, r in enumerate(runs)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    calls = []

    def runner(argv):
        calls.append(argv)
        return 0, json.dumps({**report, "test_accuracy": 0.75}) + "\n", ""

    summary = run_bench(spec, str(tmp_path), progress=False, runner=runner)
    assert calls == [runs[1]["argv"]]
    assert [r["accuracy"] for r in summary["rows"]] == [[0.5], [0.75], [0.5], [0.5]]
    assert [r["failed"] for r in summary["rows"]] == [0, 0, 0, 0]
