"""Embedding lookups: a table's rows at runtime token ids. The gather step's adjoint is a
scatter-add (checked against jax.linear_transpose); the table's out-degree is counted per
batch, so a row no token names keeps its value; whole models agree with the NumPy oracle,
which builds each batch's scalar graph from the ids by its own code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp
from feascomp.errors import FeascompError
from feascomp.frontends.dsl import parse_model
from feascomp.ir.feasibility import BroadcastMap, ChainMap, Gather
from feascomp.ir.text import parse_ir
from feascomp.passes import DEFAULT_PIPELINE, parse_pipeline, run_pipeline
from models import assert_matches_oracle, update_once


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 3), min_size=0, max_size=2),
       st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_gather_adjoint_matches_jax_linear_transpose(rows, row_shape, index_shape, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rows, size=index_shape).astype(np.int32)
    step = Gather("ids", tuple(index_shape))
    src = (rows,) + tuple(row_shape)
    out = step.out_shape(src)
    m = ChainMap((step,), BroadcastMap(tuple(range(len(out)))))
    x = rng.normal(size=src)
    g = rng.normal(size=out)
    with jax.enable_x64(True):
        data = {"ids": jnp.asarray(ids)}
        np.testing.assert_array_equal(m.apply(np, x, out, {"ids": ids}), np.asarray(m.apply(jnp, jnp.asarray(x), out, data)))
        (ref,) = jax.linear_transpose(lambda v: m.apply(jnp, v, out, data), jnp.asarray(x))(jnp.asarray(g))
        np.testing.assert_allclose(m.transpose(np, g, src, {"ids": ids}), np.asarray(ref), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(m.transpose(jnp, jnp.asarray(g), src, data)), np.asarray(ref),
                                   rtol=1e-12, atol=1e-12)


def embed_source(vocab, dim, length, hidden, twice):
    """Token ids -> embedding -> flatten -> [relu dense] -> logits; ``twice``: a second
    lookup of the same table (another use of its rows) joins through a concat readout."""
    lines = [
        "model emb", f"input x : i32[{length}]",
        f"param E : f64[{vocab}, {dim}] = normal",
        f"param W : f64[{length * dim}, {hidden}] = normal",
        f"param V : f64[{hidden + (length * dim if twice else 0)}, 3] = normal",
        "e = flatten(embed(x, E))",
        "h = relu(e @ W)",
    ]
    if twice:
        lines += ["r = concat(h, flatten(embed(x, E)))", "output logits = r @ V"]
    else:
        lines += ["output logits = h @ V"]
    lines += ["loss cross_entropy(logits)"]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ap", "dr", "cp"])
def test_embedding_models_match_scalar_graph_oracle(algorithm):
    @settings(max_examples=6, deadline=None)
    @given(st.integers(2, 6), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans(),
           st.integers(1, 3), st.integers(0, 2**31 - 1), st.booleans())
    def check(vocab, dim, length, hidden, twice, batch, seed, weighted):
        tensor = parse_model(embed_source(vocab, dim, length, hidden, twice))
        rng = np.random.default_rng(seed)
        params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
        x = rng.integers(0, vocab, size=(batch, length))
        y = rng.integers(0, 3, size=batch)
        pj = assert_matches_oracle(tensor, batch, algorithm, params, x, y, weighted)
        unused = np.setdiff1d(np.arange(vocab), x)
        np.testing.assert_array_equal(pj["E"][unused], params["E"][unused])

    check()


def test_unused_rows_keep_their_value_and_used_rows_move():
    tensor = parse_model(embed_source(8, 2, 3, 4, False))
    rng = np.random.default_rng(1)
    params = {op.result: rng.normal(size=op.type.shape) for op in tensor.by_kind("param")}
    x = np.array([[0, 1, 1], [1, 2, 0]])
    for backend in ("jax", "numpy"):
        p, _ = update_once(tensor, 2, backend, "dr", params, x, np.array([0, 2]), True, steps=3)
        np.testing.assert_array_equal(p["E"][3:], params["E"][3:])
        assert np.all(np.abs(p["E"][:3] - params["E"][:3]).sum(1) > 0)


def test_embedding_plan_round_trips_and_counts_no_identities():
    tensor = feascomp.solver.load_model("examples/digits_embed.fc")
    plan = run_pipeline(tensor, parse_pipeline(DEFAULT_PIPELINE, batch=4))
    from feascomp.ir.text import print_plan

    text = print_plan(plan)
    assert 'gather {index = "x", shape = [4, 64]}' in text
    assert "0 identity families inserted" in text
    assert print_plan(parse_ir(text)) == text


@pytest.mark.parametrize("source, message", [
    ("model m\ninput x : i32[4]\nparam W : f32[4, 3] = normal\noutput logits = x @ W\nloss cross_entropy(logits)\n",
     "holds integer token ids"),
    ("model m\ninput x : f32[4]\nparam E : f32[5, 3] = normal\ne = embed(x, E)\noutput logits = reduce_max(e, axes = [0])\n"
     "loss cross_entropy(logits)\n", "embed needs integer token ids"),
])
def test_bad_embedding_models_are_located(source, message):
    with pytest.raises(FeascompError, match=message) as e:
        parse_model(source, "m.fc")
    assert e.value.loc is not None and e.value.loc.line is not None


def test_bad_token_data_is_refused():
    solver = feascomp.compile("examples/digits_embed.fc", batch_size=2, steps=1)
    state = solver.init(solver.init_params(0))
    with pytest.raises(FeascompError, match="not integers"):
        solver.update(state, np.full((2, 64), 0.5), [0, 1])
    with pytest.raises(FeascompError, match=r"\[0, 17\)"):
        solver.update(state, np.full((2, 64), 17), [0, 1])


@pytest.mark.slow
def test_digits_embedding_model_trains():
    """64 pixel-intensity tokens, a 17 x 4 table, dense ReLU 32, dense 10: DR, batch 64."""
    from feascomp import data
    from feascomp.train import train

    ds = data.load("digits_tokens")
    solver = feascomp.compile("examples/digits_embed.fc", batch_size=64, algorithm="dr", steps=50)
    _, report = train(solver, ds, updates=30, seed=0, progress=False)
    assert report["test_accuracy"] >= 0.80, report
