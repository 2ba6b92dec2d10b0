"""A primitive defined outside the package trains a model: no pass or backend changes."""
import pytest

import feascomp
from models import fit
from feascomp import data
from feascomp.primitives import Port, Primitive, register, unregister


def project_affine2(xp, opts, inputs, y0, w):
    """Graph of y = 2x: min (x - x0)^2 + w (2x - y0)^2 gives x = (x0 + 2 w y0) / (1 + 4 w)."""
    (x0,) = inputs
    x = (x0 + 2 * w * y0) / (1 + 4 * w)
    return (x,), 2 * x


@pytest.fixture
def double():
    prim = register(
        Primitive(
            name="double",
            ports=(Port("x", vector=False),),
            forward_rule=lambda xp, opts, x: 2 * x,
            project_rule=project_affine2,
            shape_rule=lambda lengths, opts: None,
            doc="y = 2x",
        )
    )
    yield prim
    unregister("double")


MODEL = """model ext
input  x  : f32[64]
param  W1 : f32[64, 32] = he_normal
param  b1 : f32[32]     = zeros
param  W2 : f32[32, 10] = he_normal
h = relu(x @ W1 + b1)
g = double(h)
output logits = g @ W2
loss cross_entropy(logits)
"""


def test_user_primitive_trains(double, tmp_path):
    path = tmp_path / "ext.fc"
    path.write_text(MODEL)
    solver = feascomp.compile(str(path), batch_size=64, steps=30)
    assert "double(x: 0)" in solver.dump("plan")
    ds = data.load("digits")
    params, state, info = fit(solver, ds, 25, seed=0)
    assert solver.accuracy(params, ds.x_test, ds.y_test) >= 0.80


def test_unregistered_name_is_a_located_error(tmp_path):
    path = tmp_path / "ext.fc"
    path.write_text(MODEL)
    with pytest.raises(feascomp.FeascompError, match="unknown function 'double'") as e:
        feascomp.compile(str(path))
    assert e.value.loc.line == 7 and e.value.loc.col == 5


def test_a_native_step_added_from_outside_is_used_and_gives_the_algorithms_iterates(monkeypatch):
    """docs/extending.md's "adding a native step": an algorithm type of its own (here a DR
    written again as a subclass, as a user's variant would be), its class order for the
    fused families (options.FUSE_ORDER) and its native step (materialized.FUSED_STEPS),
    all registered from outside; the solver then runs the native step, with the iterates of
    the algorithm's own formula (the same solver with fuse_kernels=False)."""
    import dataclasses

    import numpy as np

    from feascomp import algorithms, options
    from feascomp.backends import materialized

    @dataclasses.dataclass(frozen=True)
    class MyDR(algorithms.DouglasRachford):
        name = "mydr"

    used = []

    def native(prog, alg):
        step = materialized.FUSED_STEPS[algorithms.DouglasRachford](prog, alg)
        return None if step is None else (lambda xp, z, data: used.append(1) or step(xp, z, data))

    monkeypatch.setitem(algorithms.ALGORITHMS, "mydr", MyDR)
    monkeypatch.setitem(options.FUSE_ORDER, MyDR, lambda alg: (0, 1))
    monkeypatch.setitem(materialized.FUSED_STEPS, MyDR, native)
    ds = data.load("digits")
    x, y = ds.x_train[:16], ds.y_train[:16]
    out = {}
    for fuse in (True, False):
        s = feascomp.compile("examples/digits_mlp.fc", batch_size=16, steps=3, algorithm="mydr", dtype="float64",
                             fuse_kernels=fuse)
        assert type(s.algorithm) is MyDR and bool(s.program.fused) == fuse
        p, _, info = s.update(s.init(s.init_params(0)), x, y)
        out[fuse] = (p, np.asarray(info["residual"]))
    assert used  # traced through the native step
    for k in out[False][0]:
        np.testing.assert_allclose(np.asarray(out[True][0][k]), np.asarray(out[False][0][k]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-9, atol=1e-12)
