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
    fused families (options.FUSE_ORDER) and its native step (fused.NATIVE_STEPS),
    all registered from outside; the solver then runs the native step, with the iterates of
    the algorithm's own formula (the same solver with fuse_kernels=False)."""
    import dataclasses

    import numpy as np

    from feascomp import algorithms, options
    from feascomp.backends import fused
    from feascomp.backends.fused import FusedSums

    @dataclasses.dataclass(frozen=True)
    class MyDR(algorithms.DouglasRachford):
        name = "mydr"

    used = []

    def native(prog, alg):
        step = fused.NATIVE_STEPS[(algorithms.DouglasRachford, "materialized")](prog, alg)
        return None if step is None else (lambda xp, z, data: used.append(1) or step(xp, z, data))

    monkeypatch.setitem(algorithms.ALGORITHMS, "mydr", MyDR)
    monkeypatch.setitem(options.FUSE_ORDER, MyDR, lambda alg: (0, 1))
    monkeypatch.setitem(fused.NATIVE_STEPS, (MyDR, "materialized"), native)
    ds = data.load("digits")
    x, y = ds.x_train[:16], ds.y_train[:16]
    out = {}
    for fuse in (True, False):
        s = feascomp.compile("examples/digits_mlp.fc", batch_size=16, steps=3, algorithm="mydr", dtype="float64",
                             fuse_kernels=fuse)
        assert type(s.algorithm) is MyDR and bool(s.program.strategies(FusedSums)) == fuse
        p, _, info = s.update(s.init(s.init_params(0)), x, y)
        out[fuse] = (p, np.asarray(info["residual"]))
    assert used  # traced through the native step
    for k in out[False][0]:
        np.testing.assert_allclose(np.asarray(out[True][0][k]), np.asarray(out[False][0][k]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-9, atol=1e-12)


def test_a_lowering_added_from_outside_gives_the_materialized_iterates(monkeypatch):
    """docs/extending.md's "adding a lowering": a storage strategy of its own (every edge
    kept as two halves along its port axis, so every read, write, transpose, combination
    and distance goes through it) chosen for every family by a lowering registered from
    outside the package; AP, DR, CP and DM then give the materialized lowering's iterates,
    and the lowering's refusal is reported by the options."""
    import numpy as np
    import pytest

    from feascomp.backends.lowering import LOWERINGS, Lowering
    from feascomp.backends.storage import Storage
    from feascomp.errors import FeascompError

    class Halves(Storage):
        kind = "halves"

        def _cut(self, e):
            return e.type.shape[-1] // 2

        def keys(self):
            return [k for e in self.edges for k in (e.key + "#lo", e.key + "#hi")]

        def _store(self, e, value, z):
            z[e.key + "#lo"], z[e.key + "#hi"] = value[..., : self._cut(e)], value[..., self._cut(e) :]

        def init(self, xp, vals, data, z, spare=None):
            for e in self.edges:
                self._store(e, e.map.apply(xp, vals[e.src], e.type.shape, data), z)

        def read(self, xp, e, z, data):
            return xp.concatenate([z[e.key + "#lo"], z[e.key + "#hi"]], axis=-1)

        def transpose(self, xp, e, z, data):
            return e.map.transpose(xp, self.read(xp, e, z, data), self.analysis.info[e.src].family.type.shape, data)

        def write(self, xp, e, value, new, data, slot=0):
            self._store(e, e.map.apply(xp, value, e.type.shape, data), new)

        def put(self, xp, e, part, new):
            self._store(e, part, new)

    class HalvesLowering(Lowering):
        name = "halves"

        def refusals(self, algorithm, options, colours):
            return ["a cold start (no --warm-start)"] if options.warm_start else []

        def storage(self, analysis, info, resolved, slots):
            return Halves(analysis, info)

    monkeypatch.setitem(LOWERINGS, "halves", HalvesLowering())
    ds = data.load("digits")
    x, y = ds.x_train[:16], ds.y_train[:16]
    for algorithm in ("dr", "cp"):  # two colours with combinations and distances; CP's layers
        out = {}
        for lowering in ("materialized", "halves"):
            s = feascomp.compile("examples/digits_mlp.fc", batch_size=16, steps=2, algorithm=algorithm,
                                 dtype="float64", lowering=lowering, fuse_kernels=False, elide_inputs=False,
                                 fold_inputs=False)
            p, _, info = s.update(s.init(s.init_params(0)), x, y)
            out[lowering] = (p, np.asarray(info["residual"]), s.state_bytes)
        assert all(type(st).__name__ == "Halves" for st in s.program.storage.values())
        assert out["halves"][2] == out["materialized"][2]
        for k in out["materialized"][0]:
            np.testing.assert_allclose(out["halves"][0][k], out["materialized"][0][k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out["halves"][1], out["materialized"][1], rtol=1e-12)
    with pytest.raises(FeascompError, match="the halves lowering needs a cold start"):
        feascomp.compile("examples/digits_mlp.fc", batch_size=16, lowering="halves", warm_start=True)
