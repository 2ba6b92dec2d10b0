"""Plain JAX models: the jaxpr front end and the optax-style API."""
import hashlib
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import feascomp
from models import fit
from feascomp import data
from feascomp.cli import main


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def fc_solver():
    return feascomp.compile("examples/digits_mlp.fc", batch_size=64, steps=20)


def canonical(text: str) -> list[str]:
    """Feasibility IR lines with structural names: each non-const, non-param family is named
    by its kind and its producers (so the two front ends' different SSA names and op orders
    compare equal); the model name and initialiser attributes are dropped."""
    fams = {}
    edges = []
    for line in text.splitlines():
        m = re.match(r"\s*%(\w+) = (\w+)\((.*?)\)(.*) : (\S+\[.*\])", line)
        if m:
            fams[m.group(1)] = (m.group(2), m.group(3), re.sub(r'init = "\w+"(, )?', "", m.group(4)).replace("{}", "").strip(), m.group(5))
        m = re.match(r"\s*edge %(\w+) -> %(\w+)\.(\w+)\[(\d+):(\d+)\] (.*)", line)
        if m:
            edges.append(m.groups())
    names = {}

    def name(f):
        if f not in names:
            kind = fams[f][0]
            if kind in ("const", "param"):
                names[f] = f
            else:
                ins = sorted((p, int(a), name(s)) for s, d, p, a, b, _ in edges if d == f)
                # a digest of the producers' names, not the names spelled out: those nest, and
                # an unrolled RNN's would grow exponentially with its steps
                names[f] = f"{kind}#{hashlib.sha1(repr(ins).encode()).hexdigest()[:16]}"
        return names[f]

    out = [f"family {name(f)} {k} ({p}) {a} : {t}" for f, (k, p, a, t) in fams.items()]
    out += [f"edge {name(s)} -> {name(d)}.{p}[{a}:{b}] {rest}" for s, d, p, a, b, rest in edges]
    return sorted(out)


def mlp_at(p, x):
    return jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"]


def mlp_dot(p, x):
    return jnp.dot(jnp.maximum(jnp.dot(x, p["W1"]) + p["b1"], 0), p["W2"])


def mlp_einsum(p, x):
    h = jax.nn.relu(jnp.einsum("i,ij->j", x, p["W1"]) + p["b1"])
    return jnp.einsum("i,ij->j", h, p["W2"])


def mlp_maximum(p, x):
    return jnp.maximum(x @ p["W1"] + p["b1"], 0.0) @ p["W2"]


@jax.jit
def _inner(p, x):
    return jax.nn.relu(x @ p["W1"] + p["b1"])


def mlp_inner_jit(p, x):
    return _inner(p, x) @ p["W2"]


VARIANTS = [mlp_at, mlp_dot, mlp_einsum, mlp_maximum, mlp_inner_jit]


def test_same_feasibility_ir_as_the_fc_model(fc_solver, digits):
    p0 = fc_solver.init_params(0)
    js = feascomp.compile(mlp_at, p0, digits.x_train[0], batch_size=64, steps=20, loss_options={"lam": 5.0})
    assert canonical(js.dump("feasibility")) == canonical(fc_solver.dump("feasibility"))
    assert canonical(js.dump("plan")) == canonical(fc_solver.dump("plan"))


def test_same_iterates_as_the_fc_model(fc_solver, digits):
    p0 = fc_solver.init_params(0)
    js = feascomp.compile(mlp_at, p0, digits.x_train[:3], batch_size=64, steps=20, loss_options={"lam": 5.0})
    sf, sj = fc_solver.init(p0), js.init(p0)
    order = data.batches(len(digits.x_train), 64, np.random.default_rng(1))
    for _ in range(3):
        idx = next(order)
        pf, sf, _ = fc_solver.update(sf, digits.x_train[idx], digits.y_train[idx])
        pj, sj, _ = js.update(sj, digits.x_train[idx], digits.y_train[idx])
    for k in pf:
        np.testing.assert_allclose(np.asarray(pj[k]), np.asarray(pf[k]), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("fn", VARIANTS, ids=[f.__name__ for f in VARIANTS])
def test_every_spelling_trains(fn, fc_solver, digits):
    p0 = fc_solver.init_params(0)
    s = feascomp.compile(fn, p0, digits.x_train[0], batch_size=64, steps=50)
    params, state, _ = fit(s, digits, 25, seed=0, params=p0)
    assert set(params) == {"W1", "b1", "W2"}
    assert s.accuracy(params, digits.x_test, digits.y_test) >= 0.80


def test_pytree_parameters_round_trip(fc_solver, digits):
    p0 = fc_solver.init_params(0)
    nested = {"layers": [{"w": p0["W1"], "b": p0["b1"]}, {"w": p0["W2"]}]}

    def f(p, x):
        return jax.nn.relu(x @ p["layers"][0]["w"] + p["layers"][0]["b"]) @ p["layers"][1]["w"]

    s = feascomp.compile(f, nested, digits.x_train[0], batch_size=64, steps=5)
    params, state, _ = s.update(s.init(nested), digits.x_train[:64], np.eye(10)[digits.y_train[:64]])  # one-hot labels
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(nested)
    assert s.apply(params, digits.x_test).shape == (397, 10)
    assert "layers_0_w" in s.dump("tensor")


def test_batch_or_sample_example_input(fc_solver, digits):
    p0 = fc_solver.init_params(0)
    a = feascomp.compile(mlp_at, p0, digits.x_train[0], batch_size=8).dump("tensor")
    b = feascomp.compile(mlp_at, p0, digits.x_train[:8], batch_size=8).dump("tensor")
    c = feascomp.compile(mlp_at, p0, digits.x_train[:8], batch_size=8, in_axes=0).dump("tensor")
    assert a == b == c and "%x = input() : f32[64]" in a


def test_unsupported_primitive_is_refused_with_the_source_line(fc_solver, digits):
    def f(p, x):
        return jnp.tanh(x @ p["W1"]) @ p["W2"]

    with pytest.raises(feascomp.FeascompError) as e:
        feascomp.compile(f, fc_solver.init_params(0), digits.x_train[0])
    err = e.value
    assert "'tanh' is not supported" in err.message and "dot_general" in err.note
    assert err.loc.file == __file__ and "jnp.tanh" in err.loc.source_line


@pytest.mark.slow
def test_cli_trains_a_python_model(tmp_path, capsys):
    code = main(["train", "examples/digits_mlp_jax.py:mlp", "--dataset", "digits", "--batch-size", "64",
                 "--updates", "20", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["test_accuracy"] >= 0.80


def test_cli_refuses_bad_python_models(tmp_path, capsys):
    bad = tmp_path / "m.py"
    bad.write_text("import jax.numpy as jnp\n\ndef f(p, x):\n    return jnp.sin(x @ p['W'])\n\n"
                   "def init_params(seed):\n    import numpy as np\n    return {'W': np.zeros((64, 10), np.float32)}\n")
    assert main(["train", f"{bad}:f", "--dataset", "digits", "--updates", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4:" in err and "'sin' is not supported" in err and "Traceback" not in err
    broken = tmp_path / "b.py"
    broken.write_text("def f(p, x):\n    return x @@ p\n")
    assert main(["train", f"{broken}:f", "--dataset", "digits", "--updates", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:2:" in err and "SyntaxError" in err
    assert main(["train", f"{broken}:g", "--dataset", "digits"]) == 2


@pytest.mark.slow
def test_flax_linen_mlp_trains(digits):
    nn = pytest.importorskip("flax.linen")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10, use_bias=False)(nn.relu(nn.Dense(32)(x)))

    model = MLP()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(64))
    s = feascomp.compile(model.apply, params, digits.x_train[0], batch_size=64, steps=50)
    params, state, _ = fit(s, digits, 25, seed=0, params=params)
    assert s.accuracy(params, digits.x_test, digits.y_test) >= 0.80


@pytest.mark.slow
def test_flax_nnx_mlp_trains(digits):
    """An nnx module: split into a graph definition and its Param state; the state is the
    parameter pytree, merged back inside the function feascomp traces."""
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(64, 32, rngs=rngs)
            self.l2 = nnx.Linear(32, 10, use_bias=False, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    model = MLP(nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    s = feascomp.compile(apply, state, digits.x_train[0], batch_size=64, steps=50)
    assert "%l1_kernel_value = param()" in s.dump("tensor")
    params, _, _ = fit(s, digits, 25, seed=0, params=state)
    assert type(params) is type(state)
    nnx.update(model, params)  # the trained state goes back into the module
    acc = float(np.mean(np.argmax(np.asarray(model(digits.x_test)), -1) == digits.y_test))
    assert acc == pytest.approx(s.accuracy(params, digits.x_test, digits.y_test))
    assert acc >= 0.80


def test_exception_in_the_users_function_is_located(fc_solver, digits):
    def f(p, x):
        return x @ p["W9"]  # no such parameter

    with pytest.raises(feascomp.FeascompError) as e:
        feascomp.compile(f, fc_solver.init_params(0), digits.x_train[0])
    err = e.value
    assert "tracing the model function failed: KeyError" in err.message
    assert err.loc.file == __file__ and 'p["W9"]' in err.loc.source_line


# layers and views ------------------------------------------------------------------------------
def _views(p, x):
    img = x.reshape(8, 8)
    a = jnp.concatenate([img[:, :4], jnp.transpose(img)[:, 4:]], axis=1)  # slice, transpose, concatenate
    b = jax.lax.dynamic_slice(a, (2, 0), (4, 8)).reshape(-1)  # dynamic_slice with constant starts
    c = jnp.expand_dims(b, 0).squeeze(0)
    return jax.nn.relu(c @ p["W"] + p["b"][None, :][0]) @ p["V"]


def _cnn_nhwc(p, x):
    img = x.reshape(1, 8, 8, 1)
    h = jax.lax.conv_general_dilated(img, p["K"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + p["c"])
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return (h.reshape(1, -1) @ p["W"])[0]


def _cnn_nchw_batched(p, x):  # written for batches: traced as fn(p, x[None])[0]
    img = x.reshape(-1, 1, 8, 8)
    h = jax.lax.conv_general_dilated(img, p["K"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    h = jax.nn.relu(h + p["c"][None, :, None, None])
    return jnp.max(h, axis=(2, 3)) @ p["W"]


LAYER_MODELS = {
    "views": (_views, {"W": (32, 6), "b": (6,), "V": (6, 10)}),
    "cnn_nhwc": (_cnn_nhwc, {"K": (3, 3, 1, 4), "c": (4,), "W": (16, 10)}),
    "cnn_nchw_batched": (_cnn_nchw_batched, {"K": (4, 1, 3, 3), "c": (4,), "W": (4, 10)}),
}


@pytest.mark.parametrize("name", list(LAYER_MODELS))
def test_layer_primitives_compile_and_evaluate_like_jax(name, digits):
    fn, shapes = LAYER_MODELS[name]
    rng = np.random.default_rng(0)
    p = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    x = digits.x_train[:8]
    solver = feascomp.compile(fn, p, x, batch_size=8, steps=2)
    want = np.asarray(jax.vmap(lambda v: fn(p, v))(x)) if name != "cnn_nchw_batched" else np.asarray(fn(p, x))
    np.testing.assert_allclose(np.asarray(solver.apply(p, x)), want, rtol=1e-4, atol=1e-4)
    params, state, info = solver.update(solver.init(p), x, digits.y_train[:8])
    assert np.isfinite(np.asarray(info["residual"])).all()


@pytest.mark.slow
def test_jax_cnn_is_the_fc_cnn(digits):
    """A CNN written with lax.conv_general_dilated (NCHW, OIHW, batched) and a global max
    is the same feasibility problem as examples/digits_cnn.fc (HWC, HWIO): the same
    outputs and, in float64, the same iterates over two updates with the kernels
    transposed (so it trains as that model does: tests/test_layers.py trains it)."""
    def cnn(p, x):
        img = x.reshape(-1, 1, 8, 8)
        dn = ("NCHW", "OIHW", "NCHW")
        h = jax.nn.relu(jax.lax.conv_general_dilated(img, p["K1"], (1, 1), "SAME", dimension_numbers=dn)
                        + p["c1"][None, :, None, None])
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["K2"], (1, 1), "SAME", dimension_numbers=dn)
                        + p["c2"][None, :, None, None])
        return jnp.max(h, axis=(2, 3)) @ p["W"]

    fc = feascomp.compile("examples/digits_cnn.fc", batch_size=16, steps=3, dtype="float64")
    pf = fc.init_params(0)
    oihw = lambda k: k.transpose(3, 2, 0, 1)  # noqa: E731  (HWIO -> OIHW)
    pj = {"K1": oihw(pf["K1"]), "c1": pf["c1"], "K2": oihw(pf["K2"]), "c2": pf["c2"], "W": pf["W"]}
    js = feascomp.compile(cnn, pj, digits.x_train[:16], batch_size=16, steps=3, dtype="float64")
    assert "conv2d" in js.dump("tensor") and "reduce_max" in js.dump("tensor")
    x = digits.x_train[:16]
    np.testing.assert_allclose(np.asarray(js.apply(pj, x)), np.asarray(fc.apply(pf, x)), rtol=1e-12, atol=1e-12)
    sf, sj = fc.init(pf), js.init(pj)
    for i in range(2):
        batch = digits.x_train[16 * i : 16 * (i + 1)], digits.y_train[16 * i : 16 * (i + 1)]
        a, sf, info_f = fc.update(sf, *batch)
        b, sj, info_j = js.update(sj, *batch)
        np.testing.assert_allclose(info_j["residual"], info_f["residual"], rtol=1e-10)
    for k in ("K1", "K2"):
        np.testing.assert_allclose(np.asarray(b[k]).transpose(2, 3, 1, 0), np.asarray(a[k]), rtol=1e-10, atol=1e-12)
    for k in ("c1", "c2", "W"):
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn,message", [
    (lambda p, x: jax.lax.conv_general_dilated(x.reshape(1, 8, 8, 1), p["K"], (1, 1), "SAME", rhs_dilation=(2, 2),
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")).max(axis=(1, 2))[0] @ p["W"],
     "without dilation"),
    (lambda p, x: jax.lax.reduce_window(x.reshape(8, 8, 1) @ p["K"][0, 0], -jnp.inf, jax.lax.max, (3, 3, 1), (1, 1, 1),
                                        "SAME").max(axis=(0, 1)) @ p["W"],
     "without padding"),
], ids=["conv dilation", "padded max-pool"])
def test_unsupported_layer_options_are_refused(fn, message, digits):
    p = {"K": np.ones((3, 3, 1, 4), np.float32), "W": np.ones((4, 10), np.float32)}
    with pytest.raises(feascomp.FeascompError) as e:
        feascomp.compile(fn, p, digits.x_train[0])
    assert message in e.value.message and e.value.loc is not None and e.value.loc.file == __file__


# embedding lookups (gather) ---------------------------------------------------------------------
def _embed_index(p, x):
    return jax.nn.relu(p["E"][x].reshape(-1) @ p["W1"] + p["b1"]) @ p["W2"]


def _embed_take_batched(p, x):  # written for batches
    e = jnp.take(p["E"], x, axis=0).reshape(x.shape[0], -1)
    return jax.nn.relu(e @ p["W1"] + p["b1"]) @ p["W2"]


@pytest.fixture(scope="module")
def tokens():
    return data.load("digits_tokens")


@pytest.mark.parametrize("fn", [_embed_index, _embed_take_batched], ids=["E[x]", "jnp.take batched"])
def test_embedding_lookup_compiles_to_the_fc_models_ir(fn, tokens):
    """Same plan as the .fc model (the batch-written spelling adds reshapes of the batch of one);
    same iterates in float64."""
    fc = feascomp.compile("examples/digits_embed.fc", batch_size=64, steps=5, dtype="float64")
    p0 = fc.init_params(0)
    example = tokens.x_train[0] if fn is _embed_index else tokens.x_train[:64]
    js = feascomp.compile(fn, p0, example, batch_size=64, steps=5, loss_options={"lam": 5.0}, dtype="float64")
    assert "embed(%x, %E)" in js.dump("tensor")
    if fn is _embed_index:
        assert canonical(js.dump("plan")) == canonical(fc.dump("plan"))
    x, y = tokens.x_train[:64], tokens.y_train[:64]
    np.testing.assert_allclose(np.asarray(js.apply(p0, x)), np.asarray(jax.vmap(lambda v: _embed_index({k: jnp.asarray(a) for k, a in p0.items()}, v))(x)),
                               rtol=1e-5, atol=1e-5)
    pf, _, _ = fc.update(fc.init(p0), x, y)
    pj, _, _ = js.update(js.init(p0), x, y)
    for k in pf:
        np.testing.assert_allclose(np.asarray(pj[k]), np.asarray(pf[k]), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_flax_linen_embed_trains(tokens):
    nn = pytest.importorskip("flax.linen")

    class Bag(nn.Module):
        @nn.compact
        def __call__(self, x):
            e = nn.Embed(17, 4)(x).reshape(-1)
            return nn.Dense(10, use_bias=False)(nn.relu(nn.Dense(32)(e)))

    model = Bag()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(64, jnp.int32))
    s = feascomp.compile(model.apply, params, tokens.x_train[0], batch_size=64, steps=50, loss_options={"lam": 5.0})
    assert "embed(%x, %params_Embed_0_embedding)" in s.dump("tensor")
    params, _, _ = fit(s, tokens, 30, seed=0, params=params)
    acc = s.accuracy(params, tokens.x_test, tokens.y_test)
    print(f"flax Embed test accuracy {acc:.3f}")
    assert acc >= 0.70


@pytest.mark.parametrize("fn", [
    lambda p, x: (x.astype(jnp.float32) @ p["W"]),
    lambda p, x: p["E"][x * 2].reshape(-1) @ p["W"],
    lambda p, x: p["E"][:, x].reshape(-1) @ p["W"],
], ids=["ids as floats", "arithmetic on ids", "gather along another axis"])
def test_other_uses_of_integer_inputs_are_refused(fn, tokens):
    p = {"E": np.ones((17, 4), np.float32), "W": np.ones((64, 10), np.float32)}
    with pytest.raises(feascomp.FeascompError) as e:
        feascomp.compile(fn, p, tokens.x_train[0])
    assert e.value.loc is not None and e.value.loc.file == __file__


# lax.scan: a cell over T steps, unrolled -------------------------------------------------------
def _char_rnn(p, x):
    """The paper's character RNN cell (examples/shakespeare_rnn.fc) as lax.scan."""
    hidden = p["W"].shape[1] - p["E"].shape[0]

    def cell(h, e_t):
        u = jnp.concatenate([e_t, h]) @ p["W"] + p["b"]
        return jax.nn.relu(u[:hidden]), u[hidden:]

    _, logits = jax.lax.scan(cell, jnp.zeros(hidden), p["E"][x])
    return logits


def _digits_rnn(p, x):
    """examples/digits_rnn.fc as lax.scan: two carries starting at zero, summed logits."""
    def cell(carry, row):
        h, logits = carry
        u = row @ p["Wx"] + h @ p["Wh"] + p["b"]
        return (jax.nn.relu(u[:16]), logits + u[16:]), None

    (_, logits), _ = jax.lax.scan(cell, (jnp.zeros(16), jnp.zeros(10)), x.reshape(8, 8))
    return logits


@pytest.mark.parametrize("fn, example, sample", [(_char_rnn, "examples/shakespeare_rnn.fc", np.zeros(32, np.int32)),
                                                (_digits_rnn, "examples/digits_rnn.fc", np.zeros(64, np.float32))],
                         ids=["char-rnn", "digits-rnn"])
def test_lax_scan_compiles_to_the_for_block_plan(fn, example, sample):
    """A lax.scan over the cell unrolls into the plan of the .fc model's for block (a zero
    initial carry folded alike), and its forward pass is the JAX function's."""
    fc = feascomp.compile(example, batch_size=2)
    p0 = fc.init_params(0)
    js = feascomp.compile(fn, p0, sample, batch_size=2, loss_options={"lam": 5.0})
    assert canonical(js.dump("plan")) == canonical(fc.dump("plan"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, size=(2, 32)).astype(np.int32) if sample.dtype == np.int32 else rng.random((2, 64), np.float32)
    want = jax.vmap(lambda v: fn({k: jnp.asarray(a) for k, a in p0.items()}, v))(x)
    np.testing.assert_allclose(np.asarray(js.apply(p0, x)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_lax_scan_refusals_are_located():
    def backwards(p, x):
        def cell(h, row):
            h = jax.nn.relu(row @ p["W"] + h)
            return h, h

        return jax.lax.scan(cell, jnp.zeros(3), x.reshape(2, 2), reverse=True)[1]

    with pytest.raises(feascomp.FeascompError, match="reverse=True") as e:
        feascomp.compile(backwards, {"W": np.ones((2, 3), np.float32)}, np.zeros(4, np.float32), batch_size=2)
    assert e.value.loc is not None and e.value.loc.file == __file__

