"""The collapsed lowering: the same iterates as the materialized lowering (AP, DR, DM), from
producer values and per-node coefficients instead of stored edges."""
import collections
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp
import feascomp.solver
from feascomp import data, primitives
from feascomp.errors import FeascompError
from feascomp.frontends.dsl import parse_model
from feascomp.backends.collapsed import CollapsedSlots
from feascomp.passes import DEFAULT_PIPELINE, FUSED_PIPELINE
from models import mlp_source

models = st.tuples(
    st.lists(st.integers(1, 4), min_size=2, max_size=5).map(lambda w: w[:-1] + [max(w[-1], 2)]),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.booleans(),  # readout
    st.integers(1, 3),  # batch
    st.integers(0, 2**31 - 1),
    st.booleans(),  # weighted
    st.sampled_from(["cross_entropy(logits)", "margin(logits)"]),
)


ALGORITHMS = [("ap", {}), ("dr", {"relaxation": 0.8}), ("dm", {})]  # DM with β ≠ 1: the examples test


def run(tensor, batch, lowering, params, x, y, weighted, steps=3, pipeline=DEFAULT_PIPELINE, updates=1, algorithm="ap",
        options=None):
    # the collapsed lowering keeps the paper's splitting: the materialized one is compared unfolded
    solver = feascomp.compile(tensor, batch_size=batch, algorithm=algorithm, steps=steps, dtype="float64",
                              weighted=weighted, lowering=lowering, pipeline=pipeline, fold_inputs=False,
                              **(options or {}))
    state = solver.init(params)
    for i in range(updates):
        p, state, info = solver.update(state, x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"]), solver


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,options", ALGORITHMS, ids=[f"{a}{o}" for a, o in ALGORITHMS])
def test_collapsed_matches_materialized_on_random_mlps(algorithm, options):
    @settings(max_examples=4 if algorithm == "ap" else 2, deadline=None)
    @given(models)
    def check(case):
        widths, bias, readout, batch, seed, weighted, loss = case
        tensor = parse_model(mlp_source(widths, bias, readout, loss=loss))
        rng = np.random.default_rng(seed)
        params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
        x = rng.normal(size=(batch, widths[0]))
        y = rng.integers(0, widths[-1], size=batch)
        pm, rm, _ = run(tensor, batch, "materialized", params, x, y, weighted, algorithm=algorithm, options=options)
        pc, rc, solver = run(tensor, batch, "collapsed", params, x, y, weighted, algorithm=algorithm, options=options)
        assert solver.program.strategies(CollapsedSlots)  # every dense layer qualifies
        for k in pm:
            np.testing.assert_allclose(pc[k], pm[k], rtol=1e-8, atol=1e-10, err_msg=k)
        # the collapsed step residual is a quadratic form in the basis' inner products: near 0
        # its absolute error is ~sqrt(eps) x (terms x largest basis vector), not eps (two
        # equal slots, e.g. a parameter that stopped moving, cancel in the Gram form;
        # collapsed.py, distance). Found by hypothesis: 8.6e-8 where the edges give 2e-15.
        scale = np.linalg.norm(x) + sum(np.linalg.norm(v) for v in params.values())
        floor = np.sqrt(np.finfo(np.float64).eps) * 16 * scale
        np.testing.assert_allclose(rc, rm, rtol=1e-6, atol=floor)

    check()


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


EXAMPLES = [("examples/digits_mlp.fc", {"0", "logits"}), ("examples/digits_readout.fc", {"0", "2", "4"}),
            ("examples/digits_residual.fc", {"0", "2", "logits"}), ("examples/digits_cnn.fc", {"0", "2", "logits"})]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,options,model,collapsed",
                         [("ap", {}, m, c) for m, c in EXAMPLES] + [("dr", {}, *EXAMPLES[1]), ("dr", {}, *EXAMPLES[3]),
                                                                  ("dm", {"beta": 0.7}, *EXAMPLES[0])])
def test_collapsed_matches_materialized_on_examples(model, collapsed, algorithm, options, digits):
    """Two updates of 3 steps, weighted; convolutions collapse too (their patch ports'
    slots are the producers' patches); the readout's concatenated port stays materialized.
    dense layers. DM with β ≠ 1 combines sibling branches (its cached inner products are
    recomputed at each combination)."""
    pipeline = FUSED_PIPELINE if model.endswith("readout.fc") else DEFAULT_PIPELINE
    tensor = feascomp.solver.load_model(model)
    params = feascomp.compile(tensor, batch_size=8, pipeline=pipeline).init_params(0)
    x, y = digits.x_train[:16], digits.y_train[:16]
    pm, rm, sm = run(tensor, 8, "materialized", params, x, y, True, steps=3, pipeline=pipeline, updates=2,
                     algorithm=algorithm, options=options)
    pc, rc, sc = run(tensor, 8, "collapsed", params, x, y, True, steps=3, pipeline=pipeline, updates=2,
                     algorithm=algorithm, options=options)
    assert set(sc.program.strategies(CollapsedSlots)) == collapsed
    assert sc.program.slots.recompute_gram == (algorithm == "dm")
    if algorithm == "ap":
        assert sc.state_bytes < sm.state_bytes
    for k in pm:
        np.testing.assert_allclose(pc[k], pm[k], rtol=1e-9, atol=1e-11, err_msg=k)
    np.testing.assert_allclose(rc, rm, rtol=1e-7)


def test_collapsed_state_is_values_and_coefficients():
    """784-128-10, batch 256: the edge state is the producers' values, coefficients per dot
    node and slot, and the slots' inner products, not the [256, 128, 784] copies. AP keeps
    one slot per port; DR one per producer-colour projection of an update (K + 2)."""
    m = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="dr", fold_inputs=False)  # every edge
    assert m.state_bytes > 190e6
    s = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="ap", lowering="collapsed")
    assert s.state_bytes < 2e6
    assert {c.name: c.slots for c in s.program.strategies(CollapsedSlots).values()} == {"0": [1, 1], "logits": [1, 1]}
    d = feascomp.compile("examples/mnist_mlp.fc", batch_size=256, algorithm="dr", steps=10, lowering="collapsed")
    assert {c.name: c.slots for c in d.program.strategies(CollapsedSlots).values()} == {"0": [1, 12], "logits": [12, 12]}
    assert d.state_bytes < 15e6


def conv_source(h, w, c, widths, kernel, stride, padding):
    """Convolutions (the first on the input, the rest on hidden maps: patch ports whose
    producers move), ReLU, a global max-pool and a dense layer."""
    lines = ["model c", f"input x : f64[{h * w * c}]", f"img = reshape(x, shape = [{h}, {w}, {c}])"]
    prev, x = c, "img"
    for i, co in enumerate(widths):
        lines.insert(2, f"param K{i} : f64[{kernel}, {kernel}, {prev}, {co}] = normal")
        lines.append(f"h{i} = relu(conv2d({x}, K{i}, stride = {stride}, padding = {padding}))")
        prev, x = co, f"h{i}"
    lines.insert(2, f"param W : f64[{prev}, 3] = normal")
    lines += [f"output logits = global_max_pool({x}) @ W", "loss cross_entropy(logits)"]
    return "\n".join(lines) + "\n"


def conv_fits(case) -> bool:
    """Every layer's window fits its input (a stride-2 layer can leave the next a 1x1 map)."""
    h, w, _, widths, kernel, stride, padding = case[:7]
    pads = {'"same"': None, "1": (1, 1, 1, 1), "[0, 1, 1, 0]": (0, 1, 1, 0)}[padding]
    for _ in widths:
        if pads is None:  # "same": ceil(size / stride), any kernel
            h, w = -(-h // stride), -(-w // stride)
            continue
        top, bottom, left, right = pads
        if h + top + bottom < kernel or w + left + right < kernel:
            return False
        h, w = (h + top + bottom - kernel) // stride + 1, (w + left + right - kernel) // stride + 1
    return True


convs = st.tuples(st.integers(3, 6), st.integers(3, 5), st.integers(1, 2),  # height, width, channels
                  st.lists(st.integers(1, 3), min_size=1, max_size=2),  # output channels per layer
                  st.integers(1, 3), st.integers(1, 2), st.sampled_from(['"same"', "1", "[0, 1, 1, 0]"]),
                  st.integers(1, 3), st.integers(0, 2**31 - 1), st.sampled_from(["ap", "dr"])).filter(conv_fits)


@pytest.mark.slow
def test_collapsed_convolutions_match_materialized():
    """Conv families collapse whatever their kernel, stride, padding and channels: their
    patch ports keep the producer's patches, and the consensus maps back through col2im.
    The same parameters and residual as the edges after an update of 3 steps (float64)."""

    @settings(max_examples=3, deadline=None)
    @given(convs)
    def check(case):
        h, w, c, widths, kernel, stride, padding, batch, seed, algorithm = case
        tensor = parse_model(conv_source(h, w, c, widths, kernel, stride, padding))
        rng = np.random.default_rng(seed)
        params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
        x, y = rng.normal(size=(batch, h * w * c)), rng.integers(0, 3, size=batch)
        pm, rm, _ = run(tensor, batch, "materialized", params, x, y, False, algorithm=algorithm)
        pc, rc, solver = run(tensor, batch, "collapsed", params, x, y, False, algorithm=algorithm)
        collapsed = solver.program.strategies(CollapsedSlots)
        assert {n for n, s in collapsed.items() if s.edges[0].map.kind == "chain"} == {
            f.name for f in solver.plan.families if f.attr("spec", "").startswith("conv2d")}
        # Under AP each port is one slot: the same arithmetic as the edges to rounding. Under
        # DR a port's edges are combinations of every slot of the update, and a conv's
        # zero-padding edges hold only what the dot's projection wrote there, multiples of the
        # kernel's slots, which differ by a step's change: their norms come from Gram forms
        # that cancel, accurate to ~sqrt(eps) x the state's scale (collapsed.py; found by
        # hypothesis: 7.7e-8 on a 1x1 kernel with one-sided padding, where a perturbation of
        # the parameters by 1e-13 moves the edges' iterates by 4e-14). The residual, a Gram
        # form too, has the same floor near 0, as for the MLPs above.
        scale = np.linalg.norm(x) + sum(np.linalg.norm(v) for v in params.values())
        floor = np.sqrt(np.finfo(np.float64).eps) * 16 * scale
        for k in pm:
            np.testing.assert_allclose(pc[k], pm[k], rtol=1e-8, atol=1e-10 if algorithm == "ap" else floor, err_msg=k)
        np.testing.assert_allclose(rc, rm, rtol=1e-6, atol=floor)

    check()


def test_collapsed_cnn_state_is_patches_and_coefficients():
    """The 4x16 CNN + readout at batch 256: its edges (11.5 GB, a copy of each patch per
    output channel) become each layer's patches and per-node coefficients, under 1 GB, with
    an estimated peak under 6 GB (issue 17: it must train here at this batch)."""
    s = feascomp.compile("examples/mnist_cnn4_readout.fc", batch_size=256, algorithm="ap", lowering="collapsed")
    convs = {n for n, c in s.program.strategies(CollapsedSlots).items() if c.edges[0].map.kind == "chain"}
    assert convs == {"0", "2", "4", "6"}
    assert s.state_bytes < 1e9
    assert s.memory.peak < 6e9


@pytest.mark.parametrize("options,needs", [(dict(algorithm="cp"), "--algorithm ap, dr or dm"),
                                           (dict(algorithm="ap", warm_start=True), "cold start"),
                                           (dict(algorithm="ap", monitor=True), "monitoring"),
                                           (dict(algorithm="ap", backend="numpy"), "jax backend"),
                                           (dict(algorithm="ap", lowering="fused"), "lowering must be one of")])
def test_collapsed_lowering_refuses_what_it_cannot_do(options, needs):
    options = {"lowering": "collapsed", **options}
    with pytest.raises(FeascompError, match=needs):
        feascomp.compile("examples/digits_mlp.fc", batch_size=4, **options)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ap", "dr"])
def test_collapsed_trains_like_materialized(algorithm, digits):
    """float32 training: the same accuracy to within rounding's effect."""
    from models import fit

    acc = {}
    for lowering in ("materialized", "collapsed"):
        s = feascomp.compile("examples/digits_mlp.fc", batch_size=64, algorithm=algorithm, steps=20, lowering=lowering)
        p, _, _ = fit(s, digits, 20)
        acc[lowering] = s.accuracy(p, digits.x_test, digits.y_test)
    assert acc["collapsed"] > 0.7
    assert abs(acc["collapsed"] - acc["materialized"]) < 0.03, acc


vectors = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-3, 3), min_size=n, max_size=n), st.lists(st.floats(-3, 3), min_size=n, max_size=n),
    st.floats(-5, 5), st.sampled_from([1.0, 2.0, 7.0])))


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_dot_linear_rule_reproduces_the_projection(case):
    """dot's coefficients (from |a|², |b|², <a, b>) applied to (a0, b0) give a nearest point
    of the graph: on it, and as near as the projection's own. Away from a0 = ±b0 (where the
    nearest point is not unique and the Gram form's rounding may pick another one) it is
    the projection's point."""
    a0, b0, z0, w = (np.asarray(v, np.float64) if isinstance(v, list) else v for v in case)
    dot = primitives.get("dot")
    (a, b), z = dot.project((a0[None], b0[None]), np.array([z0]), w)
    gram = (a0 @ a0, b0 @ b0, a0 @ b0)
    coef, zc = dot.project_linear([np.array([g]) for g in gram], np.array([z0]), w)
    basis = (a0, b0, np.eye(len(a0))[0])
    ac = sum(coef[0][t][0] * basis[t] for t in range(3))
    bc = sum(coef[1][t][0] * basis[t] for t in range(3))
    scale = 1 + np.abs(a0).sum() + np.abs(b0).sum() + abs(z0)
    # the Gram form's |a0 ± b0|² are accurate to eps (|a0|² + |b0|²): relative to the smaller
    # one, that is its conditioning (below 64 eps (|a0|² + |b0|²) it counts as 0)
    eps, norms = np.finfo(np.float64).eps, gram[0] + gram[1]
    small = min(np.sum((a0 + b0) ** 2), np.sum((a0 - b0) ** 2)) / 2
    tol = (1e-9 + 10 * eps * norms / max(small, 64 * eps * norms, 1e-300)) * scale**2
    assert abs(ac @ bc - zc[0]) <= tol

    def dist2(a, b, z):
        return np.sum((a - a0) ** 2) + np.sum((b - b0) ** 2) + w * (z - z0) ** 2

    assert dist2(ac, bc, zc[0]) <= dist2(a[0], b[0], z[0]) + tol
    if min(np.linalg.norm(a0 + b0), np.linalg.norm(a0 - b0)) > 1e-3 * scale:
        np.testing.assert_allclose(zc, z, atol=1e-8 * scale)
        np.testing.assert_allclose(ac, a[0], atol=1e-7 * scale)
        np.testing.assert_allclose(bc, b[0], atol=1e-7 * scale)


@pytest.mark.parametrize("algorithm,options,per_step,shadow,combines,chain", [
    ("ap", {}, {0: 1, 1: 1}, {}, False, True),
    ("dr", {}, {0: 1, 1: 1}, {0: 1}, True, True),
    ("dm", {}, {0: 1, 1: 1}, {0: 1, 1: 1}, True, True),
    ("dm", {"beta": 0.7}, {0: 2, 1: 2}, {0: 2, 1: 2}, True, False),
    ("cp", {"classes": 5}, {c: 1 for c in range(5)}, {}, False, True),
])
def test_declared_projections_match_the_formula(algorithm, options, per_step, shadow, combines, chain):
    """Each algorithm's declared Projections (which size the collapsed lowering's slots) are
    what a run of its step and shadow does: a counting projection, and a combine that
    records whether every combination is of a chain of states."""
    from feascomp.algorithms import Projections, get_algorithm

    calls, combined, is_chain = [], [], [True]

    def project(c, z):
        calls.append(c)
        return {"v": z["v"], "w": z["w"] | {object()}}

    def combine(fn, *states):
        combined.append(True)
        union = frozenset().union(*(s["w"] for s in states))
        is_chain[0] = is_chain[0] and any(s["w"] == union for s in states)
        return {"v": fn(*(s["v"] for s in states)), "w": union}

    alg = get_algorithm(algorithm, **options)
    z = {"v": 1.0, "w": frozenset()}
    alg.step(np, project, z, distance=lambda a, b: 0.0, combine=combine)
    step = dict(collections.Counter(calls))
    calls.clear()
    alg.shadow(project, z, combine=combine)
    counted = Projections(step=step, shadow=dict(collections.Counter(calls)), combines=bool(combined), chain=is_chain[0])
    assert counted == Projections(per_step, shadow, combines, chain) == alg.projections


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("z0", [-5.0, 0.0, 5.0])
def test_dot_linear_rule_at_ties(dtype, sign, z0):
    """a0 = ±b0 (and both 0), where the Gram form's |a0 ∓ b0|² is rounding: the degenerate
    branch's direction, a finite point on the graph, as near as the projection's."""
    a0 = np.array([0.1, 0.2, 0.3], dtype) * (sign != 0.0)
    b0 = (sign * a0).astype(dtype)
    dot = primitives.get("dot")
    gram = [np.array([g], dtype) for g in (a0 @ a0, b0 @ b0, a0 @ b0)]
    coef, zc = dot.project_linear(gram, np.array([z0], dtype), 1.0)
    basis = (a0, b0, np.eye(3, dtype=dtype)[0])
    ac = sum(coef[0][t][0] * basis[t] for t in range(3))
    bc = sum(coef[1][t][0] * basis[t] for t in range(3))
    assert np.all(np.isfinite(ac)) and np.all(np.isfinite(bc)) and np.isfinite(zc[0])
    tol = 50 * np.finfo(dtype).eps * (1 + abs(z0))
    assert abs(float(ac @ bc) - float(zc[0])) <= tol
    (a, b), z = dot.project((a0[None], b0[None]), np.array([z0], dtype), 1.0)
    d = lambda a, b, z: np.sum((a - a0) ** 2) + np.sum((b - b0) ** 2) + (z - z0) ** 2  # noqa: E731
    assert d(ac, bc, zc[0]) <= d(a[0], b[0], z[0]) + tol


UNUSED = """model u
input x : f64[6]
param W0 : f64[6, 12] = normal
param W1 : f64[8, 3] = normal
z = x @ W0
h = relu(slice(z, start = 0, stop = 8))
output logits = h @ W1
loss cross_entropy(logits)
"""


@pytest.mark.parametrize("algorithm", ["ap", "dr"])
def test_collapsed_dot_with_unused_outputs(algorithm):
    """A collapsed dot some of whose nodes feed nothing (a slice of its output): those
    nodes keep f(x) as their output's target, as in the materialized lowering."""
    tensor = parse_model(UNUSED)
    rng = np.random.default_rng(0)
    params = {"W0": rng.normal(size=(6, 12)), "W1": rng.normal(size=(8, 3))}
    x, y = rng.normal(size=(4, 6)), rng.integers(0, 3, 4)
    pm, rm, _ = run(tensor, 4, "materialized", params, x, y, True, algorithm=algorithm)
    pc, rc, s = run(tensor, 4, "collapsed", params, x, y, True, algorithm=algorithm)
    assert "z" in s.program.strategies(CollapsedSlots) and s.program.info["z"].has_unused
    for k in pm:
        np.testing.assert_allclose(pc[k], pm[k], rtol=1e-9, atol=1e-11, err_msg=k)
    np.testing.assert_allclose(rc, rm, rtol=1e-8, atol=1e-10)


def test_cli_lowering_option(capsys):
    """``feascomp train --lowering collapsed`` trains; with an option it cannot honour it
    exits 2 naming what it needs, without a traceback."""
    from feascomp.cli import main

    code = main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--batch-size", "64", "--algorithm", "ap",
                 "--steps-per-batch", "5", "--updates", "2", "--lowering", "collapsed", "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["lowering"] == "collapsed" and report["algorithm"] == "ap"
    code = main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--algorithm", "cp", "--lowering", "collapsed",
                 "--updates", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "the collapsed lowering needs --algorithm ap, dr or dm" in err and "Traceback" not in err
