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


def rnn_source(steps, width, hidden, classes, readout_every_step=True, dtype="f64"):
    """An Elman RNN over ``steps`` rows of ``width`` inputs: u_t = x_t Wx + h_{t-1} Wh + b,
    h_t = relu(u_t[:hidden]), logits = sum of u_t[hidden:] (every step's, or the last's)."""
    n = hidden + classes
    lines = ["model rnn", f"input x : {dtype}[{steps * width}]",
             f"param Wx : {dtype}[{width}, {n}] = normal", f"param Wh : {dtype}[{hidden}, {n}] = normal",
             f"param b : {dtype}[{n}] = normal", f"img = reshape(x, shape = [{steps}, {width}])"]
    for t in range(steps):
        rec = f" + h{t - 1} @ Wh" if t else ""
        lines.append(f"u{t} = flatten(slice(img, start = {t}, stop = {t + 1})) @ Wx{rec} + b")
        if t < steps - 1:
            lines.append(f"h{t} = relu(slice(u{t}, stop = {hidden}))")
    outs = [f"slice(u{t}, start = {hidden}, stop = {n})" for t in (range(steps) if readout_every_step else [steps - 1])]
    lines += ["output logits = " + " + ".join(outs), "loss cross_entropy(logits)"]
    return "\n".join(lines) + "\n"


def test_digits_rnn_is_split_fused_and_bipartite():
    tensor = feascomp.solver.load_model("examples/digits_rnn.fc")
    plan = run_pipeline(tensor, parse_pipeline(DEFAULT_PIPELINE, batch=4))
    kinds = {f.name: f for f in plan.families}
    assert not any(f.kind in ("identity",) for f in plan.families)
    for t in range(7):  # h_t = sum_relu(x_t Wx[:, :16], h_{t-1} Wh[:, :16], b[:16])
        assert kinds[f"h{t}"].kind == "sum_relu" and kinds[f"h{t}"].port_length("x") == (2 if t == 0 else 3)
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
    @settings(max_examples=5, deadline=None)
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
