"""Bad input never produces a traceback: a located message, exit status 2."""
import re
import subprocess
import sys

import pytest

from feascomp.cli import main

GOOD = """model m
input  x  : f32[64]
param  W1 : f32[64, 32] = he_normal
param  b1 : f32[32]     = zeros
param  W2 : f32[32, 10] = he_normal
h = relu(x @ W1 + b1)
output logits = h @ W2
loss cross_entropy(logits, lambda = 5.0)
"""


def run_dump(capsys, path):
    code = main(["dump", str(path), "--stage", "tensor"])
    out = capsys.readouterr()
    return code, out.out, out.err


def bad(line_no, new_line):
    lines = GOOD.splitlines()
    lines[line_no - 1] = new_line
    return "\n".join(lines) + "\n"


CASES = [
    # (source, line, col, message fragment)
    (bad(6, "h = relu(x @ W1 + )"), 6, 19, "syntax error"),
    (bad(6, "h = relu(x @ W2 + b1)"), 6, 10, "matmul shapes do not agree"),
    (bad(6, "h = relu(x @ W9 + b1)"), 6, 14, "undefined name 'W9'"),
    (bad(6, "h = tanh(x @ W1 + b1)"), 6, 5, "unknown function 'tanh'"),
    (bad(3, "param  W1 : f32[64, 32] = glorot"), 3, 27, "unknown initialiser 'glorot'"),
    (bad(5, "param  W1 : f32[32, 10] = he_normal"), 5, 8, "already defined"),
    (bad(2, "input  x  : q8[64]"), 2, 13, "unknown element type"),
    (bad(8, "loss hinge(logits)"), 8, 6, "unknown loss 'hinge'"),
    (bad(8, "loss cross_entropy(logits, lambda = -1.0)"), 8, 28, "lambda must be positive"),
    (bad(8, "loss cross_entropy(logits, temperature = 1.0)"), 8, 28, "no option"),
    (bad(8, "loss cross_entropy(h)"), 8, 20, "must be applied to the output"),
    (bad(6, "h = relu(x @ W1 + b1) $"), 6, 23, "unexpected character"),
    (bad(6, "h = relu(x @ W1 + b1"), 6, 21, "unexpected end of line"),
    (bad(4, "param  b1 : f32[0]     = zeros"), 4, 17, "positive"),
]


@pytest.mark.parametrize("source,line,col,fragment", CASES)
def test_located_errors(tmp_path, capsys, source, line, col, fragment):
    path = tmp_path / "bad.fc"
    path.write_text(source)
    code, out, err = run_dump(capsys, path)
    assert code == 2
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:{line}:{col}: error: "), err
    assert fragment in first
    # the offending line and a caret under column col
    lines = err.splitlines()
    assert lines[1].strip() == source.splitlines()[line - 1].strip()
    assert lines[2].index("^") - 4 == col - 1


def test_missing_output_and_loss(tmp_path, capsys):
    p = tmp_path / "m.fc"
    p.write_text("\n".join(GOOD.splitlines()[:6]) + "\n")
    code, _, err = run_dump(capsys, p)
    assert code == 2 and "no `output` statement" in err and re.match(rf"{re.escape(str(p))}:1:1: error:", err)


@pytest.mark.parametrize(
    "kind,fragment",
    [("empty", "empty model file"), ("blank", "empty model file"), ("binary", "binary file"),
     ("latin1", "not valid UTF-8"), ("missing", "no such file"), ("dir", "is a directory")],
)
def test_unreadable_files(tmp_path, capsys, kind, fragment):
    p = tmp_path / "m.fc"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "blank":
        p.write_text("\n   \n# only a comment\n".replace("# only a comment", ""))
    elif kind == "binary":
        p.write_bytes(b"\x7fELF\x00\x01\x02")
    elif kind == "latin1":
        p.write_bytes(GOOD.encode().replace(b"model m", b"model m\xe9"))
    elif kind == "dir":
        p.mkdir()
    code, _, err = run_dump(capsys, p)
    assert code == 2 and fragment in err and err.startswith(str(p)) and "Traceback" not in err


def test_non_utf8_is_located(tmp_path, capsys):
    p = tmp_path / "m.fc"
    p.write_bytes(GOOD.encode().replace(b"h = relu", b"h = r\xe9lu"))
    code, _, err = run_dump(capsys, p)
    assert code == 2 and err.startswith(f"{p}:6:6: error: file is not valid UTF-8")


def test_cli_process_has_no_traceback(tmp_path):
    p = tmp_path / "bad.fc"
    p.write_text(bad(6, "h = relu(x @ W2 + b1)"))
    r = subprocess.run([sys.executable, "-m", "feascomp.cli", "dump", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{p}:6:10: error:" in r.stderr


def test_bad_options_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "examples/digits_mlp.fc", "--updates", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["train", "examples/digits_mlp.fc", "--algorithm", "lbfgs"])
    assert e.value.code == 2


def test_dataset_shape_mismatch(capsys):
    code = main(["train", "examples/digits_mlp.fc", "--dataset", "mnist5k", "--updates", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "input has shape [64]" in err and "Traceback" not in err


def test_eval_bad_params_file(tmp_path, capsys):
    p = tmp_path / "p.npz"
    p.write_text("not an npz")
    code = main(["eval", "examples/digits_mlp.fc", "--params", str(p), "--dataset", "digits"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"{p}: error:") and "Traceback" not in err
