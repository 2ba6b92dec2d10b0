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
