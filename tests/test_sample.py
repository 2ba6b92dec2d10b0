"""feascomp sample: text from a character model's saved parameters (the vocabulary rides in
the parameter file), greedy and seeded, with a window that slides once the text outgrows T."""
import numpy as np
import pytest

from feascomp import cli

MODEL = """model char
input  x : i32[8]
param  E : f32[5, 4]   = normal
param  W : f32[12, 13] = he_normal
param  b : f32[13]     = zeros
e = embed(x, E)
for t in range(8) carry h : f32[8]:
    u = concat(e[t], h) @ W + b
    h = relu(slice(u, stop = 8))
    logits[t] = slice(u, start = 8, stop = 13)
end
output logits
loss cross_entropy(logits)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A character RNN that learned the cycle abcde (Adam: a deterministic next character)."""
    d = tmp_path_factory.mktemp("sample")
    (d / "char.fc").write_text(MODEL)
    (d / "abcde.txt").write_text("abcde" * 400)
    code = cli.main(["train", str(d / "char.fc"), "--dataset", "text", "--data", str(d / "abcde.txt"), "--seq-len", "8",
                     "--batch-size", "16", "--algorithm", "adam", "--learning-rate", "0.01", "--updates", "200",
                     "--save", str(d / "p.npz"), "--no-progress"])
    assert code == 0
    return d


def _sample(d, capsys, *extra):
    capsys.readouterr()
    code = cli.main(["sample", str(d / "char.fc"), "--params", str(d / "p.npz"), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_greedy_continues_the_cycle_past_the_window(trained, capsys):
    code, out, _ = _sample(trained, capsys, "--prompt", "cd", "--length", "20", "--greedy")
    assert code == 0 and out == "cd" + "eabcd" * 4 + "\n"  # 22 characters: the window of 8 slid


def test_sampling_is_seeded(trained, capsys):
    a = _sample(trained, capsys, "--prompt", "ab", "--length", "30", "--seed", "1", "--temperature", "3")[1]
    b = _sample(trained, capsys, "--prompt", "ab", "--length", "30", "--seed", "1", "--temperature", "3")[1]
    c = _sample(trained, capsys, "--prompt", "ab", "--length", "30", "--seed", "2", "--temperature", "3")[1]
    assert a == b and a != c and len(a) == 33 and set(a.strip()) <= set("abcde")


def test_refusals(trained, capsys, tmp_path):
    code, _, err = _sample(trained, capsys, "--prompt", "abz")
    assert code == 2 and "outside the model's vocabulary: 'z'" in err
    with np.load(trained / "p.npz") as z:  # the parameters without the vocabulary
        np.savez(tmp_path / "novocab.npz", **{k: z[k] for k in z.files if k.startswith("param:")})
    capsys.readouterr()
    code = cli.main(["sample", str(trained / "char.fc"), "--params", str(tmp_path / "novocab.npz")])
    assert code == 2 and f"{tmp_path / 'novocab.npz'}: error: the parameter file holds no vocabulary" in capsys.readouterr().err
    capsys.readouterr()
    code = cli.main(["sample", "examples/digits_mlp.fc", "--params", str(trained / "p.npz")])
    assert code == 2 and "sample needs a character model" in capsys.readouterr().err
