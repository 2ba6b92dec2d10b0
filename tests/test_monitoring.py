"""Residual monitoring, the CSV log, the plot, and warm starts."""
import csv

import numpy as np
import pytest

import feascomp
from feascomp import data
from feascomp.cli import main


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_residual_csv_and_plot(tmp_path, capsys):
    csv_path, png = tmp_path / "r.csv", tmp_path / "r.png"
    code = main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--batch-size", "64", "--updates", "4",
                 "--steps-per-batch", "5", "--eval-every", "2", "--residuals", str(csv_path), "--no-progress"])
    assert code == 0
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 4 * 5 and [int(r["step"]) for r in rows] == list(range(1, 21))
    fams = [c for c in rows[0] if c.startswith("dist:")]
    assert {"dist:W1", "dist:h", "dist:target"} <= set(fams)
    assert [r["validation_accuracy"] != "" for r in rows].count(True) == 2  # measured on the validation split
    # DR reads from the shadow P0(z): colour-0 consensus and function constraints hold there
    # (to float32 rounding: W1 has 131,072 edges), while colour-1 families are off it
    for r in rows:
        assert float(r["dist:W1"]) < 1e-4 and float(r["dist:h"]) < 1e-4
    assert max(float(r["dist:logits"]) for r in rows) > 1e-2
    assert main(["plot", str(csv_path), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_rejects_other_files(tmp_path, capsys):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    assert main(["plot", str(p)]) == 2
    assert "not a feascomp residual CSV" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["dr", "ap"])
def test_warm_start_continues_the_iteration(digits, algorithm):
    """Two warm updates of K steps on one batch equal one cold update of 2K steps."""
    x, y = digits.x_train[:64], digits.y_train[:64]
    warm = feascomp.compile("examples/digits_mlp.fc", batch_size=64, steps=10, warm_start=True, algorithm=algorithm, dtype="float64")
    cold = feascomp.compile("examples/digits_mlp.fc", batch_size=64, steps=20, algorithm=algorithm, dtype="float64")
    p0 = warm.init_params(0)
    state = warm.init(p0)
    _, state, _ = warm.update(state, x, y)
    assert state.edges is not None
    pw, _, _ = warm.update(state, x, y)
    pc, state_c, _ = cold.update(cold.init(p0), x, y)
    assert state_c.edges is None
    for k in pw:
        np.testing.assert_allclose(np.asarray(pw[k]), np.asarray(pc[k]), rtol=1e-12, atol=1e-14)
