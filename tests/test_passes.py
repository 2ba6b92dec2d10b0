"""Passes against reference answers: the tensor IR's own evaluator (scalarize,
fuse-sum-relu) and brute-force 2-colouring (color)."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feascomp.backends.analysis import PlanAnalysis
from feascomp.backends.lowering import plain
from feascomp.errors import FeascompError
from feascomp.frontends.dsl import parse_model
from feascomp.ir import Edge, Family, FeasModule, TensorType, feasibility
from feascomp.ir.feasibility import BroadcastMap
from feascomp.ir.tensor import evaluate
from feascomp.passes import DEFAULT_PIPELINE, parse_pipeline, run_pipeline
from feascomp.passes.color import ColorPass
from feascomp.passes.fuse_sum_relu import FuseSumReluPass
from feascomp.passes.scalarize import ScalarizePass
from models import mlp_source


mlps = st.tuples(
    st.lists(st.integers(1, 5), min_size=2, max_size=5).map(lambda w: w[:-1] + [max(w[-1], 2)]),
    st.lists(st.booleans(), min_size=5, max_size=5),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
)


def random_params(tensor, rng):
    return {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}


@settings(max_examples=40, deadline=None)
@given(mlps)
def test_scalarized_forward_equals_tensor_forward(case):
    widths, bias, batch, seed = case
    tensor = parse_model(mlp_source(widths, bias))
    rng = np.random.default_rng(seed)
    params = random_params(tensor, rng)
    x = rng.normal(size=(batch, widths[0]))
    ref = evaluate(np, tensor, params, {"x": x})
    unfused = run_pipeline(tensor, [ScalarizePass(batch)])
    fused = run_pipeline(unfused, [FuseSumReluPass()])
    for m in (unfused, fused):
        vals = PlanAnalysis(run_pipeline(m, [ColorPass()])).forward_values(np, params, {"x": x})
        np.testing.assert_allclose(vals["logits"], ref, rtol=1e-12, atol=1e-12)
    # fuse-sum-relu removes exactly the sum families that fed a relu
    n_sum = sum(f.kind == "sum" for f in unfused.families)
    assert sum(f.kind == "sum" for f in fused.families) == 0
    assert len(fused.families) == len(unfused.families) - n_sum


@settings(max_examples=40, deadline=None)
@given(mlps)
def test_colouring_is_proper_and_mlps_are_bipartite(case):
    widths, bias, batch, _ = case
    plan = run_pipeline(parse_model(mlp_source(widths, bias)), parse_pipeline("scalarize,fuse-sum-relu,color", batch=batch))
    colour = {f.name: f.attr("colour") for f in plan.families}
    assert colour["target"] == 0
    assert all(colour[e.src] != colour[e.dst] for e in plan.edges)


def random_dag(n, edges_bits):
    """Families 0..n-1: 0 is a const, the rest sums; i -> j for i < j where a bit says so
    (each j > 0 gets at least its predecessor j - 1); the last feeds a target."""
    pairs = [(i, j) for j in range(1, n) for i in range(j)]
    chosen = {p for p, bit in zip(pairs, edges_bits) if bit} | {(j - 1, j) for j in range(1, n)}
    indeg = {j: sum(1 for (_, b) in chosen if b == j) for j in range(n)}
    fams = [Family("f0", "const", TensorType("f64", (1,)))]
    fams += [Family(f"f{j}", "sum", TensorType("f64", (1,)), (("x", indeg[j]),)) for j in range(1, n)]
    fams.append(Family("target", "target", TensorType("f64", (1,)), (("logits", 1),), (("kind", "cross_entropy"),)))
    slot = {j: 0 for j in range(n)}
    edges = []
    for i, j in sorted(chosen):
        edges.append(Edge(f"f{i}", f"f{j}", "x", slot[j], slot[j] + 1, BroadcastMap((0,)), TensorType("f64", (1, 1))))
        slot[j] += 1
    edges.append(Edge(f"f{n - 1}", "target", "logits", 0, 1, BroadcastMap((0,)), TensorType("f64", (1, 1))))
    return FeasModule("dag", tuple(fams), tuple(edges), (("batch", 1),)), chosen


def brute_force_two_colourable(n, pairs):
    pairs = list(pairs) + [(n - 1, n)]  # the target is node n
    return any(all(c[a] != c[b] for a, b in pairs) for c in itertools.product((0, 1), repeat=n + 1))


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))))
def test_color_matches_brute_force(case):
    n, bits = case
    m, chosen = random_dag(n, bits)
    feasibility.verify(m)
    if brute_force_two_colourable(n, chosen):
        out = ColorPass().run(m)
        colour = {f.name: f.attr("colour") for f in out.families}
        assert colour["target"] == 0 and all(colour[e.src] != colour[e.dst] for e in out.edges)
    else:
        with pytest.raises(FeascompError, match="not bipartite"):
            ColorPass().run(m)


def test_projection_makes_each_colours_constraints_hold():
    """After P_c every family of colour c satisfies its constraint (a reference check of the
    materialized lowering's gather/scatter and consensus)."""
    tensor = parse_model(mlp_source([5, 4, 3], [True] * 5))
    plan = run_pipeline(tensor, parse_pipeline("scalarize,fuse-sum-relu,color", batch=3))
    prog = plain(plan)
    rng = np.random.default_rng(0)
    z = {e.key: rng.normal(size=e.type.shape) for e in plan.edges}
    data = {"x": rng.normal(size=(3, 5)), "__labels__": np.eye(3)[[0, 1, 2]]}
    for c in (0, 1):
        p = prog.project(np, c, z, data)
        for name in prog.analysis.by_colour[c]:
            info = prog.info[name]
            f = info.family
            if f.is_function:
                ins = [np.concatenate([p[e.key] for e in es], -1) for _, _, es in info.in_ports]
                y = info.prim.forward(*ins)
                for e in info.out:
                    np.testing.assert_allclose(p[e.key], e.map.apply(np, y, e.type.shape), atol=1e-9)
            elif f.kind == "param":
                mean = prog.mean_out(np, info, p, data)
                for e in info.out:
                    np.testing.assert_allclose(p[e.key], e.map.apply(np, mean, e.type.shape), atol=1e-12)
            elif f.kind == "const":
                for e in info.out:
                    np.testing.assert_allclose(p[e.key], e.map.apply(np, data["x"], e.type.shape))
        # edges not incident to colour c are untouched
        touched = {e.key for e in plan.edges if plan.colour(e.src) == c or plan.colour(e.dst) == c}
        assert touched == {e.key for e in plan.edges}  # bipartite: every edge touches each colour


def test_pipeline_parsing_and_errors():
    ps = parse_pipeline("scalarize{batch=7}, fuse-sum-relu ,color")
    assert [p.name for p in ps] == ["scalarize", "fuse-sum-relu", "color"] and ps[0].batch == 7
    with pytest.raises(FeascompError, match="unknown pass"):
        parse_pipeline("scalarize,frobnicate")
    with pytest.raises(FeascompError, match="no option"):
        parse_pipeline("scalarize{bach=3}")
    with pytest.raises(FeascompError, match="runs on feasibility IR, but the pipeline gives it tensor IR"):
        run_pipeline(parse_model(mlp_source([2, 2], [False] * 5)), parse_pipeline("color"))


def test_non_bipartite_error_names_the_cycle():
    m, _ = random_dag(3, [True, True, True])  # f0->f1, f0->f2, f1->f2: a triangle
    with pytest.raises(FeascompError, match=r"odd cycle %f\d - %f\d - %f\d"):
        ColorPass().run(m)


def test_chained_sums_are_flattened_into_one():
    """((a + b) + c) + d over four readout dots becomes one 4-slot sum: bipartite again."""
    src = mlp_source([3, 2, 2, 2, 2, 2], [True] * 5, readout=True)  # four hidden layers
    plan = run_pipeline(parse_model(src), parse_pipeline("scalarize,fuse-sum-relu,color", batch=2))
    sums = [f for f in plan.families if f.kind == "sum"]
    assert len(sums) == 1 and sums[0].ports == (("x", 4),)
    slots = sorted((e.start, e.src) for e in plan.in_edges(sums[0].name))
    assert [s for s, _ in slots] == [0, 1, 2, 3]


def brute_force_min_identities(m) -> int:
    """The fewest edge families whose subdivision makes the graph bipartite, by trying
    subsets in increasing size (independent of the pass's colouring search)."""
    import networkx as nx

    edges = [(e.src, e.dst) for e in m.edges]
    for k in range(len(edges) + 1):
        for subset in itertools.combinations(range(len(edges)), k):
            g = nx.Graph()
            for i, (u, v) in enumerate(edges):
                if i in subset:
                    g.add_edge(u, ("mid", i))
                    g.add_edge(("mid", i), v)
                else:
                    g.add_edge(u, v)
            if nx.is_bipartite(g):
                return k
    raise AssertionError("unreachable")


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))),
       st.integers(0, 2**31 - 1))
def test_insert_identities_is_minimal_and_preserves_values(case, seed):
    from feascomp.passes.insert_identities import InsertIdentitiesPass

    n, bits = case
    m, _ = random_dag(n, bits)
    out = InsertIdentitiesPass().run(m)
    feasibility.verify(out)
    added = [f for f in out.families if f.kind == "identity"]
    assert len(added) == out.attr("identities", 0) == brute_force_min_identities(m)
    coloured = ColorPass().run(out)  # bipartite now: colouring succeeds
    assert all(coloured.colour(e.src) != coloured.colour(e.dst) for e in coloured.edges)
    x = np.random.default_rng(seed).normal(size=(1,))
    before = PlanAnalysis(m).forward_values(np, {}, {"f0": x})
    after = PlanAnalysis(out).forward_values(np, {}, {"f0": x})
    for f in m.families:
        if f.kind != "target":
            np.testing.assert_allclose(after[f.name], before[f.name], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(mlps, st.booleans())
def test_mlps_and_readouts_get_no_identities(case, readout):
    widths, bias, batch, _ = case
    plan = run_pipeline(parse_model(mlp_source(widths, bias, readout)), parse_pipeline("scalarize,fuse-sum-relu,insert-identities,color", batch=batch))
    assert not any(f.kind == "identity" for f in plan.families)


def test_residual_example_gets_one_identity():
    import feascomp

    solver = feascomp.compile("examples/digits_residual.fc", batch_size=4)
    assert solver.plan.attr("identities") == 1
    assert "1 identity families inserted" in solver.dump("plan")


# fuse-projections --------------------------------------------------------------------------------
def test_fuse_projections_gives_one_group_per_primitive_and_colour():
    from feascomp.frontends.dsl import parse_file
    from feascomp.ir.text import parse_ir
    from feascomp.passes import FUSED_PIPELINE

    plan = run_pipeline(parse_file("examples/mnist_mlp4_readout.fc"), parse_pipeline(FUSED_PIPELINE, batch=4))
    keys = [(g.kind, g.colour) for g in plan.groups]
    assert len(keys) == len(set(keys))
    want = {(f.kind, f.attr("colour")) for f in plan.families if f.is_function and plan.out_edges(f.name)}
    assert set(keys) == want
    assert sum(len(g.members) for g in plan.groups) == len([f for f in plan.families if f.is_function])
    text = str(plan)
    assert "group @dot_c0 {colour = 0} dot(" in text
    assert str(parse_ir(text)) == text


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ap", "dr", "cp"])
def test_fused_and_unfused_plans_compute_the_same_iterates(algorithm):
    import feascomp
    from feascomp.passes import FUSED_PIPELINE

    @settings(max_examples=3, deadline=None)  # two compiles per example; the suite's time budget
    @given(st.lists(st.integers(1, 4), min_size=3, max_size=5).map(lambda w: w[:-1] + [max(w[-1], 2)]),
           st.booleans(), st.integers(1, 3), st.integers(0, 2**31 - 1), st.booleans())
    def check(widths, readout, batch, seed, weighted):
        tensor = parse_model(mlp_source(widths, [True] * 4, readout))
        rng = np.random.default_rng(seed)
        params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
        x, y = rng.normal(size=(batch, widths[0])), rng.integers(0, widths[-1], size=batch)
        out = []
        for pipeline in (DEFAULT_PIPELINE, FUSED_PIPELINE):
            solver = feascomp.compile(tensor, batch_size=batch, algorithm=algorithm, steps=8, dtype="float64",
                                      weighted=weighted, pipeline=pipeline)
            p, _, info = solver.update(solver.init(params), x, y)
            out.append(({k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"])))
        assert any(len(g.members) > 1 for g in solver.plan.groups)
        for k in out[0][0]:
            np.testing.assert_allclose(out[1][0][k], out[0][0][k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-9, atol=1e-12)

    check()


# colouring without identities ------------------------------------------------------------------------
def test_no_identities_gives_a_general_colouring_for_cp(capsys):
    import feascomp
    from feascomp.cli import main
    from feascomp.passes import NO_IDENTITIES_PIPELINE

    solver = feascomp.compile("examples/digits_residual.fc", batch_size=4, algorithm="cp", pipeline=NO_IDENTITIES_PIPELINE)
    plan = solver.plan
    assert not any(f.kind == "identity" for f in plan.families)
    colours = {f.name: f.attr("colour") for f in plan.families}
    assert len(set(colours.values())) == 3
    assert all(colours[e.src] != colours[e.dst] for e in plan.edges)  # a proper colouring
    for cls in solver.program.classes:  # CP classes are independent sets
        assert not any(e.src in cls and e.dst in cls for e in plan.edges)
    with pytest.raises(feascomp.FeascompError, match="dr alternates between two colour classes"):
        feascomp.compile("examples/digits_residual.fc", batch_size=4, pipeline=NO_IDENTITIES_PIPELINE)
    assert main(["train", "examples/digits_residual.fc", "--dataset", "digits", "--no-identities", "--updates", "1",
                 "--steps-per-batch", "2", "--batch-size", "16", "--no-progress"]) == 2
    assert "use --algorithm cp" in capsys.readouterr().err
    assert main(["train", "examples/digits_residual.fc", "--dataset", "digits", "--no-identities", "--algorithm", "cp",
                 "--updates", "2", "--steps-per-batch", "2", "--batch-size", "16", "--no-progress"]) == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_general_colouring_is_proper(n, seed):
    import networkx as nx

    from feascomp.passes.color import greedy_colouring

    g = nx.gnp_random_graph(n, 0.5, seed=seed)
    g = nx.relabel_nodes(g, {i: f"f{i}" for i in g})
    col = greedy_colouring(g, "f0")
    assert col["f0"] == 0 and all(col[u] != col[v] for u, v in g.edges())
    assert max(col.values()) <= max((d for _, d in g.degree()), default=0)


def test_fuse_projections_needs_a_coloured_plan():
    with pytest.raises(FeascompError, match="pass 'fuse-projections' failed: fuse-projections needs a coloured plan"):
        run_pipeline(parse_model(mlp_source([2, 3, 2], [True])), parse_pipeline("scalarize,fuse-projections", batch=1))
