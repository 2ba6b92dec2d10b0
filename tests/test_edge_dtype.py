"""--edge-dtype: the edge state stored in float16 or bfloat16, the arithmetic in float32.

The native kernels' 16-bit paths against their float32 paths (the same arithmetic on the
widened edges, the results rounded), their rounding against ml_dtypes', the solver's
native step against XLA's step with the same storage, and the options' refusals."""
import functools
import json

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp
from feascomp import data, kernels
from feascomp.cli import main

STORES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# a value's rounding error in each storage: half its spacing, relative
REL = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def _jnp(a, dtype=np.float32):
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(a, dtype))


def _widened(a):
    return np.asarray(a).astype(np.float32)


SPECIALS = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 7e4, -1e6, 1e-5, -3e-7, 6.1e-5, 1e-8, 1e-40,
                     np.inf, -np.inf, 3.0e38, 1 / 3, np.pi], np.float32)


@pytest.mark.parametrize("store", sorted(STORES))
@pytest.mark.parametrize("by_row", [True, False])
def test_fill_rounds_like_ml_dtypes(store, by_row):
    """Edges written by the fill kernel are the source rounded to nearest even, exactly as
    ml_dtypes rounds (overflow to infinity, subnormals, signed zeros; a row length with a
    tail past whole vectors)."""
    assert kernels.load("dot_project"), kernels.status("dot_project")
    rng = np.random.default_rng(0)
    N, m, n = 3, 4, 37
    src = (rng.normal(size=((N if by_row else m), n)) * rng.choice([1e-6, 1.0, 300.0], size=n)).astype(np.float32)
    src[0, : len(SPECIALS)] = SPECIALS
    donor = _jnp(np.zeros((N, m, n)), STORES[store])
    out = np.asarray(kernels.fill(donor, _jnp(src), by_row))
    with np.errstate(over="ignore"):
        want = np.asarray(src.astype(STORES[store]))
    want = np.broadcast_to(want[:, None, :] if by_row else want[None, :, :], (N, m, n))
    assert out.dtype == STORES[store]
    np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16))
    nan = src.copy()
    nan[0, 0] = np.nan
    out = np.asarray(kernels.fill(donor, _jnp(nan), by_row))
    assert np.isnan(_widened(out)[0, 0, 0] if by_row else _widened(out)[:, 0, 0]).all()


@st.composite
def families(draw):
    N, m, n = draw(st.integers(1, 5)), draw(st.integers(1, 20)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.01, 1.0, 20.0]))
    store = draw(st.sampled_from(sorted(STORES)))
    za = (rng.normal(size=(N, m, n)) * scale).astype(STORES[store])
    zb = (rng.normal(size=(N, m, n)) * scale).astype(STORES[store])
    rest = dict(pa=rng.normal(size=(N, n)) * scale, pb=rng.normal(size=(m, n)) * scale,
                c0=rng.normal(size=(N, m)) * scale**2, w=rng.integers(1, 5, (N, m)).astype(float),
                va=rng.normal(size=(N, n)) * scale, vb=rng.normal(size=(m, n)) * scale)
    return store, za, zb, {k: v.astype(np.float32) for k, v in rest.items()}, draw(st.sampled_from([0.5, 0.8]))


def _close_to_rounded(narrow, wide, store):
    """A 16-bit result is the float32 result rounded: within the rounding (plus a float32
    rounding's worth of difference in the arithmetic's order)."""
    got, want = _widened(narrow), np.asarray(wide)
    scale = np.max(np.abs(want)) + 1e-30
    np.testing.assert_allclose(got, want, rtol=1.01 * REL[store], atol=1e-5 * scale)


@settings(max_examples=15, deadline=None)
@given(families())
def test_narrow_edge_kernels_are_the_float32_kernels_rounded(case):
    """dr_step, dr_project and dr_update on 16-bit edges compute in float32 on the widened
    edges: their edges are the float32 kernels' rounded, their per-node results the same,
    and the sums they return are of the edges as stored (rounded), not as computed."""
    store, za, zb, v, r = case
    assert kernels.load("dot_project")
    wa, wb = _widened(za), _widened(zb)
    G = min(za.shape[0], 8)
    narrow = [np.asarray(o) for o in kernels.dot_dr_step(_jnp(za, STORES[store]), _jnp(zb, STORES[store]), _jnp(v["pa"]),
                                                         _jnp(v["pb"]), _jnp(v["c0"]), _jnp(v["w"]), r, G)]
    wide = [np.asarray(o) for o in kernels.dot_dr_step(_jnp(wa), _jnp(wb), _jnp(v["pa"]), _jnp(v["pb"]),
                                                       _jnp(v["c0"]), _jnp(v["w"]), r, G)]
    assert narrow[0].dtype == narrow[1].dtype == STORES[store]
    _close_to_rounded(narrow[0], wide[0], store)
    _close_to_rounded(narrow[1], wide[1], store)
    np.testing.assert_allclose(narrow[2], wide[2], rtol=1e-5, atol=1e-6 * (np.abs(wide[2]).max() + 1))  # y
    np.testing.assert_allclose(narrow[4], _widened(narrow[0]).sum(1), rtol=1e-5, atol=1e-5 * (np.abs(wa).max() + 1))
    np.testing.assert_allclose(narrow[5].sum(0), _widened(narrow[1]).sum(0), rtol=1e-5,
                               atol=1e-5 * (np.abs(wb).max() + 1) * za.shape[0])

    for reflect in (True, False):
        y, coef, sa, sb = (np.asarray(o) for o in kernels.dot_dr_project(
            _jnp(za, STORES[store]), _jnp(zb, STORES[store]), _jnp(v["c0"]), _jnp(v["w"]), G, reflect))
        y2, coef2, sa2, sb2 = (np.asarray(o) for o in kernels.dot_dr_project(
            _jnp(wa), _jnp(wb), _jnp(v["c0"]), _jnp(v["w"]), G, reflect))
        np.testing.assert_allclose(coef, coef2, rtol=1e-4, atol=1e-6)
        tol = 1e-5 * (np.abs(sa2).max() + 1)
        np.testing.assert_allclose(sa, sa2, rtol=1e-4, atol=tol)  # the stored edges are the same: sums agree
        np.testing.assert_allclose(sb.sum(0), sb2.sum(0), rtol=1e-4, atol=tol * za.shape[0])

    za2, zb2, res = (np.asarray(o) for o in kernels.dot_dr_update(
        _jnp(za, STORES[store]), _jnp(zb, STORES[store]), _jnp(coef2), _jnp(v["va"]), _jnp(v["vb"]), r))
    wa2, wb2, res2 = (np.asarray(o) for o in kernels.dot_dr_update(
        _jnp(wa), _jnp(wb), _jnp(coef2), _jnp(v["va"]), _jnp(v["vb"]), r))
    assert za2.dtype == STORES[store]
    _close_to_rounded(za2, wa2, store)
    _close_to_rounded(zb2, wb2, store)
    np.testing.assert_allclose(res, res2, rtol=1e-4, atol=1e-6 * (np.abs(res2).max() + 1))


@functools.lru_cache(maxsize=None)
def _digits_update(edge_dtype, fuse, steps=4):
    """One DR update of K = ``steps`` on a digits batch (cached: the float32 run serves
    several tests)."""
    ds = data.load("digits")
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=32, algorithm="dr", steps=steps,
                              edge_dtype=edge_dtype, fuse_kernels=fuse)
    params = solver.init_params(0)
    state = solver.init(params)
    params, state, info = solver.update(state, ds.x_train[:32], ds.y_train[:32])
    return solver, {k: np.asarray(p) for k, p in params.items()}, state, np.asarray(info["residual"])


@pytest.mark.slow
@pytest.mark.parametrize("store", sorted(STORES))
def test_native_step_equals_xlas_step_with_the_same_storage(store):
    """The native DR step on 16-bit edges against XLA's step, which reads every edge widened
    and stores it rounded: the same iterates up to roundings that fall differently; and
    both within the storage's precision of the float32 run."""
    solver, native, state, res = _digits_update(store, True)
    assert solver.program.native_step(solver.algorithm) is not None
    assert state.buffers and all(b.dtype == STORES[store] for b in state.buffers.values())
    _, xla, _, res_xla = _digits_update(store, False)
    _, exact, _, res_exact = _digits_update(None, True)
    for k in native:
        scale = np.abs(exact[k]).max()
        np.testing.assert_allclose(native[k], xla[k], rtol=0, atol=8 * REL[store] * scale, err_msg=k)
        np.testing.assert_allclose(native[k], exact[k], rtol=0, atol=64 * REL[store] * scale, err_msg=k)
        # the storage is really narrower: the float32 run differs by more than float32's rounding
    assert max(np.abs(native[k] - exact[k]).max() for k in native) > 1e-6
    np.testing.assert_allclose(res, res_xla, rtol=8 * REL[store])


def test_float32_edge_dtype_is_the_default():
    """--edge-dtype float32 (the arithmetic's) is no change: the same iterates bit for bit."""
    _, a, _, ra = _digits_update(None, True)
    _, b, _, rb = _digits_update("float32", True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(ra, rb)


def test_narrow_edges_halve_the_state_estimate(capsys):
    # the first layer's copies stored as edges (under 16-bit edges they are not factored)
    full = feascomp.compile("examples/mnist_mlp.fc", batch_size=64, factor_copies=False)
    half = feascomp.compile("examples/mnist_mlp.fc", batch_size=64, edge_dtype="float16")
    assert half.memory.edge_state * 2 == full.memory.edge_state
    # XLA's temporaries are counted at the arithmetic's width: the steps work on widened copies
    assert half.memory.temporaries == full.memory.temporaries
    assert half.state_bytes * 2 == full.state_bytes
    assert main(["dump", "examples/mnist_mlp.fc", "--stage", "plan", "--batch-size", "64", "--edge-dtype",
                 "float16"]) == 0
    assert f"edges float16): edge state {half.memory.edge_state} B" in capsys.readouterr().out


@pytest.mark.parametrize("flags, why", [
    (["--algorithm", "adam"], "adam has no edges"),
    (["--lowering", "collapsed", "--algorithm", "ap"], "the collapsed lowering stores values and coefficients"),
    (["--dtype", "float64"], "float16 and bfloat16 edges take --dtype float32"),
    (["--backend", "numpy"], "the jax backend alone"),
])
def test_refused_combinations_are_located_errors(flags, why, capsys):
    assert main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--updates", "1", "--edge-dtype",
                 "float16", *flags]) == 2
    err = capsys.readouterr().err
    assert "--edge-dtype float16 is refused: " + why in err and "Traceback" not in err


@pytest.mark.slow
def test_float16_edges_train_like_float32(capsys):
    """Training with float16 edges reports its storage and reaches the float32 run's
    accuracy (digits, 10 updates of K = 10)."""
    reports = {}
    for edge in ("float16", "float32"):
        assert main(["train", "examples/digits_mlp.fc", "--dataset", "digits", "--updates", "10", "--steps-per-batch",
                     "10", "--batch-size", "64", "--edge-dtype", edge, "--json", "--no-progress"]) == 0
        reports[edge] = json.loads(capsys.readouterr().out)
    assert reports["float16"]["edge_dtype"] == "float16" and reports["float16"]["dtype"] == "float32"
    assert reports["float32"]["test_accuracy"] > 0.8
    assert abs(reports["float16"]["test_accuracy"] - reports["float32"]["test_accuracy"]) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("store", sorted(STORES))
def test_warm_start_checkpoints_keep_narrow_edges(store, tmp_path):
    """Under --warm-start the carried edges are 16-bit; a run interrupted after its first
    update and resumed from its checkpoint ends bit for bit where an uninterrupted run
    ends (bfloat16 edges come back from .npz as raw 2-byte values)."""
    import threading

    from feascomp.train import Interrupted, train

    ds = data.load("digits")
    solver = feascomp.compile("examples/digits_mlp.fc", batch_size=32, algorithm="dr", steps=3, warm_start=True,
                              edge_dtype=store)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        train(solver, ds, updates=3, eval_every=1, progress=False, checkpoint=str(tmp_path), stop=stop)
    resumed, _ = train(solver, ds, updates=3, eval_every=1, progress=False, checkpoint=str(tmp_path))
    whole, _ = train(solver, ds, updates=3, eval_every=1, progress=False)
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k])
