"""The fused DR step (materialized lowering, feascomp/kernels' dr kernels): the same iterates
as the algorithm's own step over ``project``, which stays the reference; and the kernels
themselves against a NumPy form built from the dot primitive's reference projection."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import mlp_source

import feascomp
from feascomp.backends.fused import FusedSums
import feascomp.primitives as P
from feascomp import kernels
from feascomp.frontends.dsl import parse_model

pytestmark = pytest.mark.skipif(not kernels.load("dot_project"), reason="the native kernels need a C++ compiler")


# --- the kernels against NumPy -------------------------------------------------------------
def _reflect_project(a0, b0, c0, w):
    return P.get("dot").project((a0, b0), c0, w)


def _case(rng, N, m, n, degenerate, reflected=True):
    """Random edges and sources; with ``degenerate`` (float64 only: nearest points there are
    not unique, so float32 rounding may pick another one) some nodes' reflected inputs have
    a0 = -b0 or a0 = b0 (the inputs 2 pa - za, 2 pb - zb if ``reflected``, else za, zb)."""
    za, zb = rng.normal(size=(2, N, m, n))
    pa, pb = rng.normal(size=(N, n)), rng.normal(size=(m, n))
    if degenerate and reflected:
        za[:, 0] = 2 * pa - (-(2 * pb[0] - zb[:, 0]))
        if m > 1:
            za[:, 1] = 2 * pa - (2 * pb[1] - zb[:, 1])
    elif degenerate:
        za[:, 0] = -zb[:, 0]
        if m > 1:
            za[:, 1] = zb[:, 1]
    c0 = rng.normal(size=(N, m)) * 3
    w = rng.integers(1, 6, size=(N, m)).astype(float)
    return za, zb, pa, pb, c0, w


def _close(got, want, dtype, degenerate, node_axes=2):
    """Equal to rounding; with degenerate nodes (columns 0 and 1, where the nearest point is
    not unique and, a rounding away, ill-conditioned: it moves by ~sqrt(eps)) those to 1e-6
    and every other node to rounding. ``node_axes``: leading [N, m] axes (0: a sum over them)."""
    tol = 1e-10 if dtype == np.float64 else 2e-4
    atol = lambda w: tol * (1 + np.abs(w).max())  # noqa: E731
    if not degenerate:
        np.testing.assert_allclose(got, want, rtol=tol, atol=atol(want))
        return
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * (1 + np.abs(want).max()))
    if node_axes == 2:
        np.testing.assert_allclose(got[:, 2:], want[:, 2:], rtol=tol, atol=atol(want))


def _jax(fn, dtype, *arrays):
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(dtype == np.float64):
        out = jax.jit(fn)(*(jnp.asarray(a, dtype) for a in arrays))
        return [np.asarray(o, np.float64) for o in out]


shapes = st.tuples(st.integers(1, 12), st.integers(1, 20), st.integers(1, 40), st.integers(1, 9), st.booleans(),
                   st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from([np.float32, np.float64]), st.sampled_from([0.5, 1.0, 0.2]))
def test_second_colour_kernel_equals_numpy(shape, dtype, r):
    """dot_dr_step: z + 2r (P_dot(2 P0 z - z) - P0 z) on a family whose edges copy pa along m
    and pb along N under P0; its output, squared move, and the new edges' sums."""
    N, m, n, groups, degenerate, seed = shape
    groups = min(groups, N)
    za, zb, pa, pb, c0, w = _case(np.random.default_rng(seed), N, m, n, degenerate and dtype == np.float64)
    (a, b), y = _reflect_project(2 * pa[:, None] - za, 2 * pb[None] - zb, c0, w)
    na, nb = za + 2 * r * (a - pa[:, None]), zb + 2 * r * (b - pb[None])
    moved = ((a - pa[:, None]) ** 2).sum(-1) + ((b - pb[None]) ** 2).sum(-1)
    out = _jax(lambda *x: kernels.dot_dr_step(*x, r, groups), dtype, za, zb, pa, pb, c0, w)
    degenerate = degenerate and dtype == np.float64
    for got, want in zip(out[:4], (na, nb, y, moved)):
        _close(got, want, dtype, degenerate)
    _close(out[4], na.sum(1), dtype, degenerate, node_axes=0)
    assert out[5].shape == (groups, m, n)
    _close(out[5].sum(0), nb.sum(0), dtype, degenerate, node_axes=0)


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from([np.float32, np.float64]), st.sampled_from([0.5, 1.0]))
def test_first_colour_kernels_equal_numpy(shape, dtype, r):
    """dot_dr_project then dot_dr_update: the dot's own projection first (its output, the
    reflected edges' sums), then z + 2r (v - P_dot z) once the producers' values v are known."""
    N, m, n, groups, degenerate, seed = shape
    groups = min(groups, N)
    rng = np.random.default_rng(seed)
    za, zb, va, vb, c0, w = _case(rng, N, m, n, degenerate and dtype == np.float64, reflected=False)
    (a, b), y = _reflect_project(za, zb, c0, w)
    got = _jax(lambda *x: kernels.dot_dr_project(*x, groups), dtype, za, zb, c0, w)
    degenerate = degenerate and dtype == np.float64
    _close(got[0], y, dtype, degenerate)
    _close(got[2], (2 * a - za).sum(1), dtype, degenerate, node_axes=0)
    _close(got[3].sum(0), (2 * b - zb).sum(0), dtype, degenerate, node_axes=0)
    new = _jax(lambda za, zb, cf, va, vb: kernels.dot_dr_update(za, zb, cf, va, vb, r), dtype, za, zb, got[1], va, vb)
    _close(new[0], za + 2 * r * (va[:, None] - a), dtype, degenerate)
    _close(new[1], zb + 2 * r * (vb[None] - b), dtype, degenerate)
    _close(new[2], ((va[:, None] - a) ** 2).sum(-1) + ((vb[None] - b) ** 2).sum(-1), dtype, degenerate)


# --- the folded kernels (port a the input, held fixed) against the fixed-port projection ---
def _fixed_project(x, b0, c0, w):
    """The dot's projection with port a held at x [N, n] (primitives/dot.py, fixed_dot)."""
    (_, b), y = P.get("dot").project_fixed((np.broadcast_to(x[:, None], b0.shape), b0), (True, False), c0, w)
    return b, y


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from([np.float32, np.float64]), st.sampled_from([0.5, 1.0, 0.2]))
def test_folded_second_colour_kernel_equals_numpy(shape, dtype, r):
    """dot_dr_step_fixed: zb + 2r (P(2 pb - zb) - pb) with the a-rows held at x."""
    N, m, n, groups, _, seed = shape
    groups = min(groups, N)
    _, zb, x, pb, c0, w = _case(np.random.default_rng(seed), N, m, n, False)
    b, y = _fixed_project(x, 2 * pb[None] - zb, c0, w)
    nb = zb + 2 * r * (b - pb[None])
    out = _jax(lambda *a: kernels.dot_dr_step_fixed(*a, r, groups), dtype, zb, x, pb, c0, w)
    for got, want in zip(out[:3], (nb, y, ((b - pb[None]) ** 2).sum(-1))):
        _close(got, want, dtype, False)
    assert out[3].shape == (groups, m, n)
    _close(out[3].sum(0), nb.sum(0), dtype, False, node_axes=0)


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from([np.float32, np.float64]), st.sampled_from([0.5, 1.0]), st.booleans())
def test_folded_first_colour_kernels_equal_numpy(shape, dtype, r, reflect):
    """dot_dr_project_fixed (the reflected or projected edges' sums), then
    dot_dr_update_fixed: zb + 2r (vb - P zb)."""
    N, m, n, groups, _, seed = shape
    groups = min(groups, N)
    _, zb, x, vb, c0, w = _case(np.random.default_rng(seed), N, m, n, False)
    b, y = _fixed_project(x, zb, c0, w)
    got = _jax(lambda *a: kernels.dot_dr_project_fixed(*a, groups, reflect=reflect), dtype, zb, x, c0, w)
    _close(got[0], y, dtype, False)
    _close(got[2].sum(0), ((2 * b - zb) if reflect else b).sum(0), dtype, False, node_axes=0)
    new = _jax(lambda zb, mu, x, vb: kernels.dot_dr_update_fixed(zb, mu, x, vb, r), dtype, zb, got[1], x, vb)
    _close(new[0], zb + 2 * r * (vb[None] - b), dtype, False)
    _close(new[1], ((vb[None] - b) ** 2).sum(-1), dtype, False)


# --- the fused step against the algorithm's step -------------------------------------------
def _update(source, fuse, batch, x, y, updates=1, algorithm="dr", **kw):
    solver = feascomp.compile(parse_model(source), batch_size=batch, algorithm=algorithm, dtype="float64",
                              fuse_kernels=fuse, **kw)
    state = solver.init(solver.init_params(1))
    infos = []
    for _ in range(updates):
        params, state, info = solver.update(state, x, y)
        infos.append(info)
    return solver, {k: np.asarray(v) for k, v in params.items()}, infos


models = st.tuples(
    st.lists(st.integers(1, 6), min_size=1, max_size=3),  # hidden widths
    st.integers(2, 4),  # classes
    st.integers(1, 5),  # batch
    st.booleans(),  # readout: the dots fall in the first colour
    st.sampled_from([("dr", 0.5), ("dr", 1.0), ("dr", 0.3), ("dm", None)]),  # algorithm, DR's relaxation
    st.booleans(),  # weighted
    st.booleans(),  # the first layer's copies factored (backends/factored.py) or fused (FoldedSums)
    st.integers(0, 2**31 - 1),
)


@pytest.mark.slow
@settings(max_examples=5, deadline=None)  # the suite's time budget
@given(models)
def test_fused_step_gives_the_algorithms_iterates(case):
    """DR, and DM with beta = 1 (DR with r = 1/2 and the classes swapped)."""
    hidden, classes, batch, readout, (algorithm, r), weighted, factor, seed = case
    widths = [3] + hidden + [classes]
    source = mlp_source(widths, [True] * len(hidden), readout=readout)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(batch, 3)), rng.integers(0, classes, batch)
    kw = dict(steps=4, weighted=weighted, algorithm=algorithm, factor_copies=factor, **({"relaxation": r} if r else {}))
    # two updates: the second writes its forward pass into the first's buffers
    fused, pf, inf = _update(source, True, batch, x, y, updates=2, **kw)
    plain, pp, inp = _update(source, False, batch, x, y, updates=2, **kw)
    assert fused.program.strategies(FusedSums) and not plain.program.strategies(FusedSums)
    for k in pp:
        np.testing.assert_allclose(pf[k], pp[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for a, b in zip(inf, inp):
        np.testing.assert_allclose(a["residual"], b["residual"], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["rnn-dr", "cnn-dm"])
def test_concat_fed_and_conv_layers_take_the_native_step(case):
    """rnn: a recurrent cell's dense layer reads concat(e[t], h) @ W, so each port has
    several edges (an embedding's rows, h; W's row slices), some through view steps, which
    the kernels see joined (DR, r = 0.8). cnn: a conv family's nodes [N, Ho, Wo, Co] are
    the kernels' N*Ho*Wo rows, its patches and reshaped kernel the two ports (DM, beta =
    1). Both give the XLA step's iterates, with every dot family fused."""
    if case == "rnn-dr":
        from test_rnn import sequence_source

        model, batch = parse_model(sequence_source(3, 2, 3, 4, embed=True)), 4
        rng = np.random.default_rng(1)
        x, y = rng.integers(0, 5, size=(4, 3)), rng.integers(0, 4, size=(4, 3))
        kw = dict(algorithm="dr", relaxation=0.8)
    else:
        from feascomp import data

        model, batch = "examples/digits_cnn.fc", 4
        digits = data.load("digits")
        x, y = digits.x_train[:4], digits.y_train[:4]
        kw = dict(algorithm="dm")
    out = {}
    for fuse in (True, False):
        solver = feascomp.compile(model, batch_size=batch, steps=3, dtype="float64", fuse_kernels=fuse,
                                  factor_copies=False, **kw)  # the conv's copies as edges, fused
        state = solver.init(solver.init_params(1))
        infos = []
        for _ in range(2):
            params, state, info = solver.update(state, x, y)
            infos.append(info)
        out[fuse] = solver, {k: np.asarray(v) for k, v in params.items()}, infos
    (fused, pf, inf), (plain, pp, inp) = out[True], out[False]
    dots = [f.name for f in fused.plan.families if f.kind == "dot"]
    strategies = fused.program.strategies(FusedSums)
    assert sorted(strategies) == sorted(dots) and not plain.program.strategies(FusedSums)
    if case == "rnn-dr":
        assert any(len(s.rows) == 2 for s in strategies.values())
    else:
        assert any(len(s.lead) == 3 for s in strategies.values())  # [N, Ho, Wo] rows
    for k in pp:
        np.testing.assert_allclose(pf[k], pp[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for a, b in zip(inf, inp):
        np.testing.assert_allclose(a["residual"], b["residual"], rtol=1e-9, atol=1e-12)


def test_cold_start_updates_reuse_the_edge_buffers():
    """A cold-start update writes its forward-pass edges of the fused families into the
    previous update's buffers (donated) instead of new memory."""
    source = mlp_source([6, 5, 3], [True], dtype="f32")
    rng = np.random.default_rng(0)
    solver = feascomp.compile(parse_model(source), batch_size=4, algorithm="dr", steps=2)
    state = solver.init(solver.init_params(0))
    pointers = []
    for _ in range(3):
        _, state, _ = solver.update(state, rng.normal(size=(4, 6)), rng.integers(0, 3, 4))
        pointers.append({k: v.unsafe_buffer_pointer() for k, v in state.buffers.items()})  # carried in the state
    assert pointers[0] and pointers[1] == pointers[2] == pointers[0]


@pytest.mark.slow
@pytest.mark.parametrize("readout", [False, True])
def test_fused_step_with_warm_start_and_monitoring(readout):
    """The carried sums survive across updates (warm start), and per-family distances (which
    project the shadow by the plain code) are the same."""
    source = mlp_source([4, 5, 3, 3], [True, False], readout=readout)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    kw = dict(steps=2, warm_start=True, monitor=True)
    _, pf, inf = _update(source, True, 6, x, y, updates=2, **kw)
    _, pp, inp = _update(source, False, 6, x, y, updates=2, **kw)
    for k in pp:
        np.testing.assert_allclose(pf[k], pp[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for a, b in zip(inf, inp):
        np.testing.assert_allclose(a["residual"], b["residual"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a["family_residual"], b["family_residual"], rtol=1e-8, atol=1e-11)


def test_which_families_fuse():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mlp = os.path.join(root, "examples", "mnist_mlp.fc")
    readout = os.path.join(root, "examples", "mnist_mlp4_readout.fc")
    # the folded first layer's copies factored by default (backends/factored.py), else fused
    s = feascomp.compile(mlp, batch_size=8, steps=1)
    assert {n: f.first for n, f in s.program.strategies(FusedSums).items()} == {"logits": False}
    s = feascomp.compile(mlp, batch_size=8, steps=1, factor_copies=False)
    assert {n: f.first for n, f in s.program.strategies(FusedSums).items()} == {"0": False, "logits": False}
    s = feascomp.compile(readout, batch_size=8, steps=1, factor_copies=False)
    assert len(s.program.strategies(FusedSums)) == 8 and all(f.first for f in s.program.strategies(FusedSums).values())
    s = feascomp.compile(mlp, batch_size=8, steps=1, algorithm="dm", factor_copies=False)  # beta = 1: DR's, swapped
    assert {n: f.first for n, f in s.program.strategies(FusedSums).items()} == {"0": True, "logits": True}
    for kw in (dict(algorithm="ap"), dict(algorithm="dm", beta=0.7), dict(fuse_kernels=False),
               dict(lowering="collapsed")):
        assert not feascomp.compile(mlp, batch_size=8, steps=1, **kw).program.strategies(FusedSums), kw
    # a plan whose dot asks for XLA's form (option kernel = "xla") keeps it out
    import dataclasses

    from feascomp.backends.lowering import LOWERINGS

    s = feascomp.compile(mlp, batch_size=8, steps=1, factor_copies=False)
    families = tuple(dataclasses.replace(f, attrs=f.attrs + (("kernel", "xla"),)) if f.name == "logits" else f
                     for f in s.plan.families)
    program = LOWERINGS["materialized"].lower(dataclasses.replace(s.plan, families=families), s.resolved, s.options)
    assert set(program.strategies(FusedSums)) == {"0"}


@pytest.mark.parametrize("fixed", [False, True])
def test_chained_first_passes_return_the_edges_unchanged(fixed):
    """The first passes' ``edges=True`` form (aliased, chained into the update inside a
    step) passes the edges through and computes what the plain form does; conv-shaped
    edges [B, H, W, m, n] are taken as they are stored."""
    rng = np.random.default_rng(3)
    za, zb = rng.normal(size=(2, 2, 3, 4, 5, 6))
    x, c0, w = rng.normal(size=(24, 6)), rng.normal(size=(24, 5)), rng.integers(1, 4, size=(24, 5)).astype(float)
    if fixed:
        plain = _jax(lambda zb, x, c0, w: kernels.dot_dr_project_fixed(zb, x, c0, w, 4), np.float64, zb, x, c0, w)
        chain = _jax(lambda zb, x, c0, w: kernels.dot_dr_project_fixed(zb, x, c0, w, 4, edges=True), np.float64,
                     zb, x, c0, w)
        edges, rest = chain[:1], chain[1:]
        np.testing.assert_array_equal(edges[0], zb)
    else:
        plain = _jax(lambda za, zb, c0, w: kernels.dot_dr_project(za, zb, c0, w, 4), np.float64, za, zb, c0, w)
        chain = _jax(lambda za, zb, c0, w: kernels.dot_dr_project(za, zb, c0, w, 4, edges=True), np.float64,
                     za, zb, c0, w)
        edges, rest = chain[:2], chain[2:]
        np.testing.assert_array_equal(edges[0], za)
        np.testing.assert_array_equal(edges[1], zb)
    for a, b in zip(rest, plain):
        np.testing.assert_array_equal(a, b)
    # the 5-D edges are the kernels' 24 rows: the same as the 3-D view
    flat = _jax(lambda zb, x, c0, w: kernels.dot_dr_project_fixed(zb, x, c0, w, 4), np.float64,
                zb.reshape(24, 5, 6), x, c0, w) if fixed else \
        _jax(lambda za, zb, c0, w: kernels.dot_dr_project(za, zb, c0, w, 4), np.float64, za.reshape(24, 5, 6),
             zb.reshape(24, 5, 6), c0, w)
    for a, b in zip(flat, plain):
        np.testing.assert_array_equal(a, b)
