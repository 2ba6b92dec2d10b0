"""The native dot-projection kernel (feascomp/kernels) against the reference projection:
the NumPy run of feascomp/primitives/dot.py, which the kernel mirrors step for step."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feascomp.primitives as P
from feascomp import kernels


def test_kernel_builds_here_and_is_cached_atomically():
    """This machine has a C++ compiler (CI's too): the kernel must build, into the cache,
    with no temporary file left behind."""
    assert kernels.load("dot_project"), kernels.status("dot_project")
    status = kernels.status("dot_project")
    path = status.split("built: ", 1)[1]
    assert os.path.exists(path)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp.so")]


def _jax_project(prim, a0, b0, z0, w, dtype):
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(dtype == np.float64):
        wj = w if np.isscalar(w) else jnp.asarray(w, dtype)
        (a, b), z = jax.jit(lambda a, b, z: prim.project((a, b), z, wj))(
            jnp.asarray(a0, dtype), jnp.asarray(b0, dtype), jnp.asarray(z0, dtype))
        return np.asarray(a), np.asarray(b), np.asarray(z)


@st.composite
def rows(draw):
    count = draw(st.integers(1, 40))
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    rng = np.random.default_rng(seed)
    a0 = rng.normal(size=(count, n)) * scale
    b0 = rng.normal(size=(count, n)) * scale
    z0 = rng.normal(size=count) * scale**2 * draw(st.sampled_from([0.3, 3.0, 100.0]))
    # degenerate rows: a0 = b0, a0 = -b0, zeros
    kind = rng.integers(0, 6, count)
    b0[kind == 0] = a0[kind == 0]
    b0[kind == 1] = -a0[kind == 1]
    a0[kind == 2] = 0
    b0[kind == 2] = 0
    w = draw(st.sampled_from(["one", "scalar", "nodes"]))
    w = 1.0 if w == "one" else 2.5 if w == "scalar" else rng.integers(1, 20, count).astype(float)
    return a0, b0, z0, w


@settings(max_examples=60, deadline=None)
@given(rows(), st.sampled_from([np.float32, np.float64]))
def test_kernel_equals_the_reference_projection(case, dtype):
    """Same output value, a point on the graph, and no farther from the input than the
    reference's (ties at a0 = ±b0 may pick another nearest point: compare distances)."""
    a0, b0, z0, w = (x.astype(dtype) if isinstance(x, np.ndarray) else x for x in case)
    dot = P.get("dot")
    a, b, z = _jax_project(dot, a0, b0, z0, w, dtype)
    (ra, rb), rz = dot.project((a0, b0), z0, w)
    eps = np.finfo(dtype).eps
    size = 1 + np.abs(z0) + np.sum(a0 * a0 + b0 * b0, -1)
    for x in (a, b, z):
        assert np.all(np.isfinite(x))
    np.testing.assert_allclose(z, rz, rtol=0, atol=None or float(np.max(64 * eps * size)))
    assert np.all(np.abs(np.sum(a * b, -1) - z) <= 64 * eps * size)
    wv = np.broadcast_to(w, z0.shape)
    d_kernel = np.sum((a - a0) ** 2 + (b - b0) ** 2, -1) + wv * (z - z0) ** 2
    d_ref = np.sum((ra - a0) ** 2 + (rb - b0) ** 2, -1) + wv * (rz - z0) ** 2
    assert np.all(d_kernel <= d_ref + 256 * eps * size * (1 + wv))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_on_many_rows_equals_xla(dtype):
    """Enough rows for several threads and a ragged last block: the same as XLA's form."""
    rng = np.random.default_rng(3)
    count, n = 5000 * 3 + 17, 16
    a0, b0 = rng.normal(size=(2, count, n)).astype(dtype)
    z0 = (rng.normal(size=count) * 3).astype(dtype)
    w = rng.integers(1, 9, count).astype(dtype)
    a, b, z = _jax_project(P.get("dot"), a0, b0, z0, w, dtype)
    xa, xb, xz = _jax_project(P.get("dot", kernel="xla"), a0, b0, z0, w, dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for u, v in ((a, xa), (b, xb), (z, xz)):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


def test_mul_runs_the_kernel_with_scalar_ports():
    """mul is dot with n = 1: the kernel on [..., 1] rows, against the reference.
    (Extreme and degenerate dot inputs on JAX arrays: tests/test_primitives.py.)"""
    rng = np.random.default_rng(4)
    a0, b0, z0 = rng.normal(size=(3, 6000)) * [[1], [1], [4]]
    w = rng.integers(1, 5, 6000).astype(float)
    a, b, z = _jax_project(P.get("mul"), a0, b0, z0, w, np.float64)
    xa, xb, xz = _jax_project(P.get("mul", kernel="xla"), a0, b0, z0, w, np.float64)
    (ra, rb), rz = P.get("mul").project((a0, b0), z0, w)
    for u, v, r in ((a, xa, ra), (b, xb, rb), (z, xz, rz)):
        np.testing.assert_allclose(u, r, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(v, r, rtol=1e-9, atol=1e-12)


def test_unknown_kernel_choice_is_an_error():
    import jax.numpy as jnp

    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="kernel must be one of 'auto', 'xla', got 'fast'"):
        P.get("dot", kernel="fast").project((x, x), jnp.ones(2))
    assert P.get("dot", kernel="fast").check({"a": 3, "b": 3}).startswith("kernel must be one of")
    assert P.get("mul", kernel="fast").check({}).startswith("kernel must be one of")


def test_kernel_under_vmap_and_leading_axes():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(2)
    a0, b0 = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
    z0 = rng.normal(size=(3, 7)).astype(np.float32)
    dot = P.get("dot")
    (a, b), z = dot.project((jnp.asarray(a0), jnp.asarray(b0)), jnp.asarray(z0))
    (va, vb), vz = jax.vmap(lambda x, y, t: dot.project((x, y), t))(jnp.asarray(a0), jnp.asarray(b0), jnp.asarray(z0))
    (ra, rb), rz = dot.project((a0, b0), z0)
    for u, v, r in ((a, va, ra), (b, vb, rb), (z, vz, rz)):
        np.testing.assert_allclose(np.asarray(u), r, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(v), r, rtol=1e-5, atol=1e-5)


def test_without_a_compiler_the_xla_form_is_used(tmp_path):
    """No compiler: load() says why, projections run XLA's form, and DR fuses nothing and
    trains with XLA's step (a fresh process, since a process loads the kernel once)."""
    code = (
        "import numpy as np, jax.numpy as jnp, feascomp.primitives as P\n"
        "from feascomp import kernels\n"
        "print(kernels.load('dot_project')); print(kernels.status('dot_project'))\n"
        "rng = np.random.default_rng(0); a0, b0 = rng.normal(size=(2, 20, 4)).astype(np.float32)\n"
        "z0 = rng.normal(size=20).astype(np.float32)\n"
        "(a, b), z = P.get('dot').project((jnp.asarray(a0), jnp.asarray(b0)), jnp.asarray(z0))\n"
        "(ra, rb), rz = P.get('dot').project((a0, b0), z0)\n"
        "print(float(np.max(np.abs(np.asarray(z) - rz))))\n"
        "import feascomp, feascomp.backends.fused\n"
        "s = feascomp.compile('examples/mnist_mlp.fc', batch_size=4, steps=2)\n"
        "p, st, info = s.update(s.init(s.init_params(0)), rng.random((4, 784)), rng.integers(0, 10, 4))\n"
        "print(len(s.program.strategies(feascomp.backends.fused.FusedSums)), bool(np.all(np.isfinite(np.asarray(info['residual'])))))\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "FEASCOMP_CACHE": str(tmp_path / "cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    loaded, status, err, fused = out.stdout.strip().splitlines()
    assert loaded == "False" and status.startswith("unavailable: no C++ compiler")
    assert float(err) < 1e-4
    assert fused == "0 True"
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.so"))


def test_lowered_steps_use_xlas_form():
    """Inside a training step the lowering asks dot for XLA's form (measured faster there:
    docs/performance.md); a model can still ask for the kernel explicitly."""
    import feascomp

    s = feascomp.compile("examples/digits_mlp.fc", batch_size=8, steps=1)
    dots = [i for i in s.program.info.values() if i.family.is_function and i.family.kind == "dot"]
    assert dots and all(i.prim.opts["kernel"] == "xla" for i in dots)


@st.composite
def max_rows(draw):
    """Rows for the max projection: every path of the kernel -- rows of at most TOP + 1
    values (sorted), active sets among the TOP + 1 largest (selected), larger ones (by
    iteration), y0 above the max -- with ties (integer values) and weights."""
    count = draw(st.integers(1, 30))
    n = draw(st.sampled_from([1, 2, 5, 9, 10, 33, 100]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x0 = rng.integers(-3, 4, size=(count, n)).astype(float) if draw(st.booleans()) else rng.normal(size=(count, n))
    top = np.max(x0, axis=-1)
    # y0 about the max (small active sets), far below it (large ones), above it (m = 1)
    y0 = top + rng.choice([-0.3, -5.0, 2.0], size=count) * rng.random(count)
    w = draw(st.sampled_from(["one", "scalar", "nodes"]))
    w = 1.0 if w == "one" else 0.7 if w == "scalar" else rng.integers(1, 20, count).astype(float)
    return x0, y0, w


@settings(max_examples=60, deadline=None)
@given(max_rows(), st.sampled_from([np.float32, np.float64]), st.sampled_from(["max", "min"]))
def test_max_kernel_equals_the_reference_projection(case, dtype, name):
    """The native max projection (min: of the negated rows) against the NumPy run of
    primitives/maxmin.py: the same output, the same active entries (ties: the first by
    index), on the graph."""
    import jax
    import jax.numpy as jnp

    x0, y0, w = case
    sign = 1 if name == "max" else -1
    x0, y0 = (sign * x0).astype(dtype), (sign * y0).astype(dtype)
    prim = P.get(name)
    (rx,), ry = prim.project((x0,), y0, w)
    with jax.enable_x64(dtype == np.float64):
        wj = w if np.isscalar(w) else jnp.asarray(w, dtype)
        (x,), y = jax.jit(lambda a, b: prim.project((a,), b, wj))(jnp.asarray(x0), jnp.asarray(y0))
        x, y = np.asarray(x), np.asarray(y)
    tol = 64 * np.finfo(dtype).eps * (1 + np.max(np.abs(x0)) + np.max(np.abs(y0)))
    np.testing.assert_allclose(y, ry, rtol=0, atol=tol)
    np.testing.assert_allclose(x, rx, rtol=0, atol=tol)
    reduce = np.max if name == "max" else np.min
    assert np.all(reduce(x, axis=-1) == y)


def test_max_kernel_on_many_rows_equals_xla():
    """A max-pool's shape (rows of 784, enough for every thread): the same as XLA's form."""
    rng = np.random.default_rng(5)
    x0 = rng.normal(size=(3000, 784)).astype(np.float32)
    y0 = (np.max(x0, axis=-1) + rng.normal(size=3000) * 0.5).astype(np.float32)
    y0[::7] -= 3.0  # some large active sets
    w = rng.integers(1, 5, 3000).astype(np.float32)
    import jax

    out = [jax.jit(lambda a, b, c, p=P.get("max", kernel=k): p.project((a,), b, c))(x0, y0, w) for k in ("auto", "xla")]
    (x, ), y = out[0]
    (xx, ), xy = out[1]
    np.testing.assert_allclose(np.asarray(y), np.asarray(xy), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x), np.asarray(xx), rtol=1e-5, atol=1e-5)
    assert P.get("max", kernel="fast").check({"x": 3}).startswith("kernel must be one of")
