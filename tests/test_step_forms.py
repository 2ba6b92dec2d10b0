"""Forms of one step that must not change its iterates: each generic projection's outputs
materialized once (fusion boundaries, ``Program.boundaries``: the lowering sets them on one device with
the native kernels built; several devices: tests/test_distributed.py) and a dot family's
forward value as one contraction (``analysis._contracted``)."""
import numpy as np
import pytest

import feascomp
from feascomp import kernels
from feascomp.backends import analysis
from feascomp.frontends.dsl import parse_model

CNN = """model c
input x : f32[36]
param K : f32[3, 3, 1, 3] = normal
param c : f32[3] = zeros
param W : f32[3, 4] = normal
img = reshape(x, shape = [6, 6, 1])
h = relu(conv2d(img, K, padding = 1) + c)
output logits = global_max_pool(h) @ W
loss cross_entropy(logits)
"""

needs_kernels = pytest.mark.skipif(not kernels.load("dot_project"), reason="no native kernels here")


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_keep_is_the_identity(dtype):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray((np.arange(24).reshape(2, 3, 4) % 3).astype(dtype))
    y = jax.jit(lambda v: kernels.keep(v * 2 if dtype != "bool" else ~v))(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x * 2 if dtype != "bool" else ~x))
    np.testing.assert_array_equal(np.asarray(jax.vmap(kernels.keep)(x)), np.asarray(x))


def _update(boundaries, algorithm, model, x, y, **options):
    s = feascomp.compile(parse_model(model), batch_size=len(x), steps=3, algorithm=algorithm, **options)
    s.program.boundaries = boundaries  # before the update is traced
    p, _, info = s.update(s.init(s.init_params(0)), x, y)
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"])


@needs_kernels
@pytest.mark.parametrize("algorithm", ["dr", "ap", "cp"])
def test_boundaries_do_not_change_the_iterates(algorithm):
    """The lowering materializes each projection's outputs (one device, kernels built); the
    update is the same as without: the same arithmetic, computed once (XLA may contract
    a fused form's multiply-adds differently: equal to rounding, in float64)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 36)), rng.integers(0, 4, 8)
    assert feascomp.compile(parse_model(CNN), batch_size=8, algorithm=algorithm).program.boundaries
    with_b, res_b = _update(True, algorithm, CNN, x, y, dtype="float64")
    without, res = _update(False, algorithm, CNN, x, y, dtype="float64")
    for k in with_b:
        np.testing.assert_allclose(with_b[k], without[k], rtol=1e-12, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(res_b, res, rtol=1e-12, atol=1e-14)


MODELS = [CNN, "examples/digits_mlp.fc", "examples/mnist_mlp4_readout.fc", "examples/digits_rnn.fc"]


@pytest.mark.parametrize("model", MODELS)
def test_contracted_forward_is_the_product_form(model, monkeypatch):
    """Every family's forward value: the dot families contracted (einsum of what their
    edges broadcast) equal the sum of products of the broadcast copies, in float64."""
    import jax
    import jax.numpy as jnp

    tensor = parse_model(model) if model.startswith("model") else model
    s = feascomp.compile(tensor, batch_size=3, dtype="float64", algorithm="ap")
    prog = s.program
    families = {f.name: f for f in prog.plan.families}
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v, jnp.float64) for k, v in s.init_params(1).items()}
        x = jnp.asarray(rng.normal(size=families[s.input_name].type.shape))
        data = prog.with_degrees(jnp, {s.input_name: x, "__labels__": jnp.zeros((3, 10))})
        contracted = prog.forward_values(jnp, params, data)
        assert any(analysis._contracted(jnp, prog.info[f], contracted, data) is not None
                   for f in families if families[f].kind == "dot")
        monkeypatch.setattr(analysis, "_contracted", lambda *args: None)
        product = prog.forward_values(jnp, params, data)
    for k in product:
        np.testing.assert_allclose(np.asarray(contracted[k]), np.asarray(product[k]), rtol=1e-12, atol=1e-12, err_msg=k)
