"""The input folded into its product nodes under DR and DM (fold_inputs, the default):
which families fold, what they store, the same iterates as the scalar-graph oracle folding
alike (conv patches included), the native step as XLA's, and nothing folded where the
option is off or does not apply."""
import numpy as np
import pytest
from models import assert_matches_oracle

import feascomp
from feascomp.backends.factored import FactoredCopies
from feascomp.backends.fused import FoldedSums
from feascomp.backends.storage import FoldedInputs
from feascomp.frontends.dsl import parse_model

MLP = "examples/digits_mlp.fc"


def folded(solver):
    return {n: type(s).__name__ for n, s in solver.program.storage.items() if isinstance(s, (FoldedInputs, FoldedSums, FactoredCopies))}


@pytest.mark.parametrize("options,fused", [(dict(algorithm="dr"), True), (dict(algorithm="dm"), True),
                                           (dict(algorithm="dr", fuse_kernels=False), False),
                                           (dict(algorithm="dm", beta=0.7), False)])
def test_dr_and_dm_fold_the_first_layer(options, fused):
    """Folded, and by default its copies of W factored (tests/test_factored.py); with
    ``factor_copies=False`` stored as edges (fused where the native step applies)."""
    assert folded(feascomp.compile(MLP, batch_size=4, steps=1, **options)) == {"0": "FactoredCopies"}
    s = feascomp.compile(MLP, batch_size=4, steps=1, factor_copies=False, **options)
    unfolded = feascomp.compile(MLP, batch_size=4, steps=1, fold_inputs=False, **options)
    first = s.plan.families[[f.kind for f in s.plan.families].index("dot")].name  # x @ W1
    from feascomp import kernels

    want = "FoldedSums" if fused and kernels.load("dot_project") else "FoldedInputs"
    assert folded(s) == {first: want}
    assert not folded(unfolded)
    # the input's edges are gone: exactly the first layer's copies of x
    x_edges = sum(np.prod(e.type.shape) for e in s.plan.edges if e.src == s.input_name)
    assert unfolded.state_bytes - s.state_bytes == x_edges * 4


@pytest.mark.parametrize("options", [dict(algorithm="ap"), dict(algorithm="cp"), dict(algorithm="dr", lowering="collapsed"),
                                     dict(algorithm="adam")])
def test_nothing_folds_elsewhere(options):
    assert not folded(feascomp.compile(MLP, batch_size=4, steps=1, **options))


CNN = """model c
input x : f64[16]
param K : f64[3, 3, 1, 2] = normal
param W : f64[2, 3] = normal
img = reshape(x, shape = [4, 4, 1])
h = relu(conv2d(img, K, padding = 1))
output logits = global_max_pool(h) @ W
loss cross_entropy(logits)
"""


@pytest.mark.parametrize("algorithm", ["dr", "dm"])
@pytest.mark.parametrize("fold", [True, False])
def test_folded_conv_matches_the_oracle(algorithm, fold):
    """A conv's patches of the input held fixed (or not): jax's update equals the
    scalar-graph oracle's, which folds each scalar product node by its own code."""
    tensor = parse_model(CNN)
    rng = np.random.default_rng(5)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x, y = rng.normal(size=(2, 16)), np.array([0, 2])
    assert_matches_oracle(tensor, 2, algorithm, params, x, y, True, fold_inputs=fold)


def test_folded_update_differs_from_the_unfolded_one():
    """Folding is another splitting of the same feasibility problem: its iterates are its
    own (so the option is not a no-op), and an update still moves every parameter."""
    tensor = parse_model(CNN)
    rng = np.random.default_rng(6)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x, y = rng.normal(size=(2, 16)), np.array([1, 0])
    out = {}
    for fold in (True, False):
        s = feascomp.compile(tensor, batch_size=2, steps=3, dtype="float64", fold_inputs=fold)
        p, _, _ = s.update(s.init(params), x, y)
        out[fold] = {k: np.asarray(v) for k, v in p.items()}
    assert not np.allclose(out[True]["K"], out[False]["K"])
    for k in params:
        assert not np.allclose(out[True][k], params[k])


def test_cli_reports_the_folded_families_and_turns_folding_off(capsys):
    """``train --json`` names the folded families; ``--no-fold-inputs`` gives none (and the
    paper's edge state)."""
    import json

    from feascomp.cli import main

    reports = {}
    for flags in ([], ["--no-fold-inputs"]):
        assert main(["train", MLP, "--dataset", "digits", "--updates", "1", "--steps-per-batch", "2", "--batch-size", "16",
                     "--json", "--no-progress", *flags]) == 0
        reports[bool(flags)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reports[False]["folded_families"] == ["0"] and reports[True]["folded_families"] == []
    assert reports[True]["device_state_bytes"] > reports[False]["device_state_bytes"]
