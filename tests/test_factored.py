"""A folded layer's copies of its other operand stored factored, C + alpha x
(backends/factored.py; ``factor_copies``, the default under DR and DM): which families
factor, what they store, and the same iterates as the copies stored as edges (the
reference path, itself checked against the scalar-graph oracle in tests/test_fold.py):
parameters, residuals, and every copy read back from the factored state."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import mlp_source
from test_collapsed import conv_fits, conv_source

import feascomp
from feascomp.backends.factored import FactoredCopies
from feascomp.frontends.dsl import parse_model

MLP = "examples/digits_mlp.fc"


def factored(solver):
    return sorted(solver.program.strategies(FactoredCopies))


@pytest.mark.parametrize("model,first", [(MLP, "0"), ("examples/digits_cnn.fc", None)])
@pytest.mark.parametrize("options", [dict(algorithm="dr"), dict(algorithm="dm"), dict(algorithm="dm", beta=0.7),
                                     dict(algorithm="dr", fuse_kernels=False)])
def test_dr_and_dm_factor_the_folded_layer(model, first, options):
    s = feascomp.compile(model, batch_size=4, steps=1, **options)
    if first is None:  # the conv on the input (not the second, on h1)
        first = next(f.name for f in s.plan.families if f.kind == "dot" and f.attr("spec", "").startswith("conv2d"))
    assert factored(s) == [first]


@pytest.mark.parametrize("options", [dict(algorithm="ap"), dict(algorithm="cp"), dict(algorithm="adam"),
                                     dict(algorithm="dr", lowering="collapsed"), dict(algorithm="dr", fold_inputs=False),
                                     dict(algorithm="dr", factor_copies=False), dict(algorithm="dr", warm_start=True),
                                     dict(algorithm="dr", monitor=True),
                                     dict(algorithm="dr", dtype="float32", edge_dtype="float16")])
def test_nothing_factors_elsewhere(options):
    assert not factored(feascomp.compile(MLP, batch_size=4, steps=1, **options))


def test_factored_state_is_one_shared_array_and_a_coefficient_per_node():
    """784-128-10 at batch 256: the first layer keeps W's [784, 128] and [256, 128]
    coefficients instead of [256, 128, 784] copies."""
    s = feascomp.compile("examples/mnist_mlp.fc", batch_size=256)
    edges = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, factor_copies=False)
    f = s.program.storage["0"]
    assert f.keys() == ["0#shared", "0#coef"] and f.shared_shape == (784, 128) and f.nodes == (256, 128)
    assert s.program.family_state_bytes()["0"] == (784 * 128 + 256 * 128) * 4
    assert edges.program.family_state_bytes()["0"] == 256 * 128 * 784 * 4
    assert {k: v for k, v in s.program.family_state_bytes().items() if k != "0"} == \
        {k: v for k, v in edges.program.family_state_bytes().items() if k != "0"}
    # split over 4 devices along the batch: the coefficients split, the shared array does not
    assert f.device_nbytes(4, 4) == (784 * 128 + 256 * 128 // 4) * 4


def _pair(tensor, batch, params, x, y, **options):
    """One update of 3 steps, factored and with the copies as edges (XLA's code), float64."""
    out = []
    for factor in (True, False):
        s = feascomp.compile(tensor, batch_size=batch, steps=3, dtype="float64", fuse_kernels=False,
                             factor_copies=factor, **options)
        assert bool(factored(s)) == factor
        p, _, info = s.update(s.init(params), x, y)
        out.append(({k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"])))
    return out


def _assert_same(out):
    (pf, rf), (pe, re) = out
    for k in pe:
        np.testing.assert_allclose(pf[k], pe[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(rf, re, rtol=1e-9, atol=1e-12)


mlps = st.tuples(st.lists(st.integers(1, 6), min_size=1, max_size=2), st.integers(2, 4), st.integers(1, 5),
                 st.booleans(), st.sampled_from([("dr", {}), ("dr", {"relaxation": 0.8}), ("dm", {}),
                                                 ("dm", {"beta": 0.7})]),
                 st.booleans(), st.integers(0, 2**31 - 1))


@pytest.mark.slow  # the oracle comparisons (tests/test_fold.py, test_backends.py) run the factored path unmarked
@settings(max_examples=3, deadline=None)  # two compiles per example: the suite's time budget
@given(mlps)
def test_factored_mlps_give_the_edges_iterates(case):
    """Any widths, batch, readout, weighting and DR/DM variant: the same parameters and step
    residuals as the copies stored as edges."""
    hidden, classes, batch, readout, (algorithm, options), weighted, seed = case
    tensor = parse_model(mlp_source([3] + hidden + [classes], [True] * len(hidden), readout=readout))
    rng = np.random.default_rng(seed)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x, y = rng.normal(size=(batch, 3)), rng.integers(0, classes, batch)
    _assert_same(_pair(tensor, batch, params, x, y, algorithm=algorithm, weighted=weighted, **options))


convs = st.tuples(st.integers(3, 6), st.integers(3, 5), st.integers(1, 2), st.lists(st.integers(1, 3), min_size=1,
                                                                                   max_size=2),
                  st.integers(1, 3), st.integers(1, 2), st.sampled_from(['"same"', "1", "[0, 1, 1, 0]"]),
                  st.integers(1, 3), st.integers(0, 2**31 - 1), st.sampled_from(["dr", "dm"])).filter(conv_fits)


@pytest.mark.slow
@settings(max_examples=3, deadline=None)
@given(convs)
def test_factored_convolutions_give_the_edges_iterates(case):
    """A conv on the input whatever its kernel, stride, padding and channels: C is the
    reshaped kernel, the contractions are the conv and its kernel's transpose (padding
    zeros in the patches included)."""
    h, w, c, widths, kernel, stride, padding, batch, seed, algorithm = case
    tensor = parse_model(conv_source(h, w, c, widths, kernel, stride, padding))
    rng = np.random.default_rng(seed)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x, y = rng.normal(size=(batch, h * w * c)), rng.integers(0, 3, size=batch)
    _assert_same(_pair(tensor, batch, params, x, y, algorithm=algorithm))


@pytest.mark.parametrize("model", [MLP, "examples/digits_cnn.fc"])
def test_every_copy_reads_back_as_the_edges_hold_it(model):
    """The Program run in NumPy, three DR steps: each factored copy C + alpha x (``read``)
    equals the stored edge of the unfactored program, every other key is equal, and the
    states' distance (the step residual's form) is the edges' distance."""
    from feascomp import data as datasets

    ds = datasets.load("digits")
    x, y = ds.x_train[:3].astype(np.float64), ds.y_train[:3]
    runs = []
    for factor in (True, False):
        s = feascomp.compile(model, batch_size=3, steps=3, dtype="float64", fuse_kernels=False, factor_copies=factor)
        prog, alg = s.program, s.algorithm
        params = {k: np.asarray(v, np.float64) for k, v in s.init_params(2).items()}
        onehot = np.eye(s.num_classes)[y]
        data = prog.with_degrees(np, {s.input_name: x, "__labels__": onehot})
        z = prog.init_edges(np, prog.forward_values(np, params, data), data)
        combine = lambda fn, *zs, p=prog, d=data: p.combine(np, d, fn, *zs)  # noqa: E731
        distance = lambda a, b, p=prog, d=data: p.distance(np, a, b, d)  # noqa: E731
        states = [z]
        for i in range(3):
            z, _ = alg.step(np, prog.projector(np, data, i), z, distance, combine)
            states.append(z)
        runs.append((prog, data, states))
    (pf, df, sf), (pe, de, se) = runs
    (name,) = pf.strategies(FactoredCopies)
    store = pf.storage[name]
    for zf, ze in zip(sf, se):
        np.testing.assert_allclose(store.read(np, store.edge, zf, df), ze[store.edge.key], rtol=1e-10, atol=1e-12)
        for k in ze:
            if k != store.edge.key:
                np.testing.assert_allclose(zf[k], ze[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for a, b in ((0, 1), (1, 3), (2, 3)):
        np.testing.assert_allclose(pf.distance(np, sf[a], sf[b], df), pe.distance(np, se[a], se[b], de), rtol=1e-8)


@pytest.mark.slow
def test_cli_reports_the_factored_families_and_turns_factoring_off(capsys):
    from feascomp.cli import main

    reports = {}
    for flags in ([], ["--no-factor-copies"]):
        assert main(["train", MLP, "--dataset", "digits", "--updates", "1", "--steps-per-batch", "2", "--batch-size", "16",
                     "--json", "--no-progress", *flags]) == 0
        reports[bool(flags)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reports[False]["factored_families"] == ["0"] and reports[True]["factored_families"] == []
    assert reports[False]["folded_families"] == reports[True]["folded_families"] == ["0"]
    assert reports[True]["device_state_bytes"] > reports[False]["device_state_bytes"]


def test_dump_names_how_each_family_is_stored(capsys):
    from feascomp.cli import main

    for flags, want in (([], "//   %0: 532480 B (input folded, copies factored)"),
                        (["--algorithm", "ap"], "//   %0: 102760448 B (edges, input elided)")):
        assert main(["dump", "examples/mnist_mlp.fc", "--stage", "plan", "--batch-size", "256", *flags]) == 0
        out = capsys.readouterr().out
        assert want in out, out[-600:]
