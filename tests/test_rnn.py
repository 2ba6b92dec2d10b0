"""Unrolled recurrent models: fuse-sum-relu splits a pre-activation whose state half feeds
a relu and whose output half feeds a readout, so the unrolled graph stays bipartite with no
identities; the split plan computes the same forward values and the same iterates as the
NumPy oracle (which fuses per scalar node by its own code)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp
from feascomp.backends.analysis import PlanAnalysis
from feascomp.frontends.dsl import parse_model
from feascomp.ir.tensor import evaluate
from feascomp.ir.text import parse_ir, print_plan
from feascomp.passes import DEFAULT_PIPELINE, parse_pipeline, run_pipeline
from feascomp.passes import fuse_sum_relu
from models import assert_matches_oracle


def rnn_source(steps, width, hidden, classes, readout_every_step=True, dtype="f64", last_state=False):
    """An Elman RNN over ``steps`` rows of ``width`` inputs, unrolled by hand: u_t = x_t Wx +
    h_{t-1} Wh + b, h_t = relu(u_t[:hidden]) (the last step's too with ``last_state``),
    logits = sum of u_t[hidden:] (every step's, or the last's)."""
    n = hidden + classes
    lines = ["model rnn", f"input x : {dtype}[{steps * width}]",
             f"param Wx : {dtype}[{width}, {n}] = normal", f"param Wh : {dtype}[{hidden}, {n}] = normal",
             f"param b : {dtype}[{n}] = normal", f"img = reshape(x, shape = [{steps}, {width}])"]
    for t in range(steps):
        rec = f" + h{t - 1} @ Wh" if t else ""
        lines.append(f"u{t} = flatten(slice(img, start = {t}, stop = {t + 1})) @ Wx{rec} + b")
        if t < steps - 1 or last_state:
            lines.append(f"h{t} = relu(slice(u{t}, stop = {hidden}))")
    outs = [f"slice(u{t}, start = {hidden}, stop = {n})" for t in (range(steps) if readout_every_step else [steps - 1])]
    lines += ["output logits = " + " + ".join(outs), "loss cross_entropy(logits)"]
    return "\n".join(lines) + "\n"


def rnn_for_source(steps, width, hidden, classes, readout_every_step=True, dtype="f64"):
    """The same RNN as a for block (docs/language.md): h and the summed logits are carries
    that start at zero; the last step's logits is a carry assigned at every step."""
    n = hidden + classes
    return "\n".join([
        "model rnn", f"input x : {dtype}[{steps * width}]",
        f"param Wx : {dtype}[{width}, {n}] = normal", f"param Wh : {dtype}[{hidden}, {n}] = normal",
        f"param b : {dtype}[{n}] = normal", f"img = reshape(x, shape = [{steps}, {width}])",
        f"for t in range({steps}) carry h : {dtype}[{hidden}], logits : {dtype}[{classes}]:",
        "    u = img[t] @ Wx + h @ Wh + b",
        f"    h = relu(slice(u, stop = {hidden}))",
        f"    logits = {'logits + ' if readout_every_step else ''}slice(u, start = {hidden}, stop = {n})",
        "end", "output logits", "loss cross_entropy(logits)"]) + "\n"


@settings(max_examples=15, deadline=None)
@given(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans()))
def test_for_block_unrolls_into_the_hand_unrolled_plan(case):
    """The compiler's unrolling makes the families of the RNN unrolled by hand: the same
    plan up to value names (a zero carry's terms dropped at step 0)."""
    from test_jaxpr_frontend import canonical

    pipeline = parse_pipeline(DEFAULT_PIPELINE, batch=2)
    by_hand = run_pipeline(parse_model(rnn_source(*case, last_state=True)), pipeline)
    by_loop = run_pipeline(parse_model(rnn_for_source(*case)), pipeline)
    assert canonical(print_plan(by_loop)) == canonical(print_plan(by_hand))


def sequence_source(steps, width, hidden, classes, embed=False):
    """A sequence model with a target per position: logits[t] collected at every step."""
    n = hidden + classes
    head = ([f"input x : i32[{steps}]", f"param E : f64[5, {width}] = normal", "e = embed(x, E)"] if embed else
            [f"input x : f64[{steps}, {width}]", "e = relu(x)"])
    return "\n".join(["model seq", *head, f"param W : f64[{width + hidden}, {n}] = normal",
                      f"param b : f64[{n}] = normal",
                      f"for t in range({steps}) carry h : f64[{hidden}]:",
                      "    u = concat(e[t], h) @ W + b", f"    h = relu(slice(u, stop = {hidden}))",
                      f"    y[t] = slice(u, start = {hidden}, stop = {n})", "end", "output y",
                      "loss cross_entropy(y)"]) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["dr", "ap", "cp"])
@pytest.mark.parametrize("embed", [False, True], ids=["dense", "embedding"])
def test_sequence_model_matches_the_oracle(algorithm, embed):
    """A target per position (labels [batch, T]): the jax backend's update equals the scalar
    graph oracle's, which builds its own per-position target nodes."""
    tensor = parse_model(sequence_source(3, 2, 3, 4, embed))
    rng = np.random.default_rng(7)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x = rng.integers(0, 5, size=(2, 3)) if embed else rng.normal(size=(2, 3, 2))
    y = rng.integers(0, 4, size=(2, 3))
    assert sum(f.kind == "target" for f in run_pipeline(tensor, parse_pipeline(DEFAULT_PIPELINE, batch=2)).families) == 3
    assert_matches_oracle(tensor, 2, algorithm, params, x, y, weighted=False)


def test_sequence_model_trains_and_reports_per_position_accuracy():
    """Labels [n, T]: the solver takes class indices per position, apply gives [n, T, C]."""
    solver = feascomp.compile(parse_model(sequence_source(3, 2, 4, 3, embed=True)), batch_size=8, steps=5, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(8, 3))
    y = (x + 1) % 3  # the next class is a function of this position's token
    params = solver.init_params(0)
    state = solver.init(params)
    for _ in range(3):
        params, state, info = solver.update(state, x, y)
    assert np.asarray(solver.apply(params, x)).shape == (8, 3, 3)
    assert np.all(np.isfinite(info["residual"]))
    assert 0.0 <= solver.accuracy(params, x, y) <= 1.0
    with pytest.raises(feascomp.FeascompError, match=r"class indices of shape \[8, 3\]"):
        solver.update(state, x, y[:, :2])


def test_digits_rnn_is_split_fused_and_bipartite():
    tensor = feascomp.solver.load_model("examples/digits_rnn.fc")
    plan = run_pipeline(tensor, parse_pipeline(DEFAULT_PIPELINE, batch=4))
    kinds = {f.name: f for f in plan.families}
    assert not any(f.kind in ("identity",) for f in plan.families)
    for t in range(7):  # h_t = sum_relu(x_t Wx[:, :16], h_{t-1} Wh[:, :16], b[:16])
        assert kinds[f"h_t{t}"].kind == "sum_relu" and kinds[f"h_t{t}"].port_length("x") == (2 if t == 0 else 3)
    assert kinds["logits"].kind == "sum" and kinds["logits"].port_length("x") == 8 * 3 - 1
    assert not any(f.kind == "sum" and f.name != "logits" and plan.out_edges(f.name) for f in plan.families)
    assert all(plan.colour(e.src) != plan.colour(e.dst) for e in plan.edges)
    text = print_plan(plan)
    assert "0 identity families inserted" in text and print_plan(parse_ir(text)) == text


def test_without_the_split_the_rnn_needs_identities(monkeypatch):
    monkeypatch.setattr(fuse_sum_relu.FuseSumReluPass, "_find_split", lambda self, m: None)
    tensor = feascomp.solver.load_model("examples/digits_rnn.fc")
    plan = run_pipeline(tensor, parse_pipeline(DEFAULT_PIPELINE, batch=4))
    assert plan.attr("identities") == 7


rnns = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans())


@settings(max_examples=25, deadline=None)
@given(rnns, st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_split_preserves_forward_values_and_needs_no_identities(case, batch, seed):
    tensor = parse_model(rnn_source(*case))
    plan = run_pipeline(tensor, parse_pipeline(DEFAULT_PIPELINE, batch=batch))
    assert plan.attr("identities", 0) == 0
    rng = np.random.default_rng(seed)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x = rng.normal(size=(batch,) + tensor.by_kind("input")[0].type.shape)
    vals = PlanAnalysis(plan).forward_values(np, params, {"x": x})
    into_target = sorted(plan.in_edges("target"), key=lambda e: e.start)  # the logits, as the target reads them
    logits = np.concatenate([e.map.apply(np, vals[e.src], e.type.shape, {"x": x}) for e in into_target], -1)
    np.testing.assert_allclose(logits, evaluate(np, tensor, params, {"x": x}), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ap", "dr", "cp"])
def test_rnns_match_scalar_graph_oracle(algorithm):
    @settings(max_examples=2, deadline=None)  # for blocks: test_sequence_model_matches_the_oracle
    @given(rnns, st.integers(1, 2), st.integers(0, 2**31 - 1), st.booleans())
    def check(case, batch, seed, weighted):
        tensor = parse_model(rnn_source(*case))
        rng = np.random.default_rng(seed)
        params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
        x = rng.normal(size=(batch,) + tensor.by_kind("input")[0].type.shape)
        y = rng.integers(0, case[3], size=batch)
        assert_matches_oracle(tensor, batch, algorithm, params, x, y, weighted)

    check()


@pytest.mark.slow
def test_digits_rnn_trains():
    from feascomp import data
    from feascomp.train import train

    solver = feascomp.compile("examples/digits_rnn.fc", batch_size=64, algorithm="dr", steps=50)
    _, report = train(solver, data.load("digits"), updates=30, seed=0, progress=False)
    print(f"digits RNN test accuracy {report['test_accuracy']:.3f}")
    assert report["test_accuracy"] >= 0.60
