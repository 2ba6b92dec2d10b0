"""Fuzzing the front ends: whatever the input, the only exception that may escape is a
located FeascompError (the CLI prints it; anything else would be a traceback).

- grammar-shaped models: statements built from the language's pieces (declarations,
  calls of known and unknown functions with keyword options of every literal kind,
  sums and products, output and loss), some then corrupted by a random edit; what
  parses is verified and run through the pass pipeline;
- random bytes as a model file;
- IR text of every level (the examples' dumps) with random edits, parsed and verified.

Example counts are fixed (2,300 in all); the run's seed is printed (tests/conftest.py).
"""
import os
import string

from hypothesis import event, given, settings
from hypothesis import strategies as st

from feascomp.errors import FeascompError
from feascomp.frontends.dsl import parse_file, parse_model
from feascomp.ir import FeasModule, parse_ir
from feascomp.ir.feasibility import verify as verify_feasibility
from feascomp.ir.tensor import verify as verify_tensor
from feascomp.passes import DEFAULT_PIPELINE, parse_pipeline, run_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
FUNCTIONS = ["relu", "leaky_relu", "sign", "quantize", "clip", "max", "min", "mul", "square", "identity", "affine",
             "average", "sum_relu", "conv2d", "max_pool", "global_max_pool", "reduce_max", "reshape", "flatten",
             "transpose", "concat", "slice", "embed", "tanh", "softmax"]
KEYWORDS = ["slope", "levels", "scale", "lo", "hi", "kernel", "stride", "padding", "size", "axes", "shape", "perm",
            "axis", "start", "stop", "step", "shift", "lambda", "margin", "method", "iterations", "bogus"]
NAMES = ["x", "W1", "b1", "W2", "h", "logits", "K", "E", "t", "u"]

names = st.sampled_from(NAMES)
dims = st.lists(st.integers(0, 12), min_size=0, max_size=4)
dtype = st.sampled_from(["f32", "f64", "i32", "f16"])
literal = st.one_of(st.integers(-3, 40).map(str), st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: f"{v:.3g}"),
                    st.sampled_from(['"same"', '"valid"', '"auto"', '"xla"', '"newton"', '"x"', "1e999", "-0.0"]),
                    st.lists(st.integers(-2, 6), max_size=4).map(lambda v: "[" + ", ".join(map(str, v)) + "]"))
kwarg = st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYWORDS), literal)


def expressions(depth):
    if depth == 0:
        return names
    sub = expressions(depth - 1)
    call = st.builds(lambda f, args, kws: f"{f}({', '.join(args + kws)})", st.sampled_from(FUNCTIONS),
                     st.lists(sub, min_size=0, max_size=3), st.lists(kwarg, max_size=2))
    binary = st.builds(lambda a, op, b: f"{a} {op} {b}", sub, st.sampled_from(["+", "@"]), sub)
    return st.one_of(sub, call, binary, sub.map(lambda e: f"({e})"))


type_text = st.builds(lambda d, ds: f"{d}[{', '.join(map(str, ds))}]", dtype, dims)
statement = st.one_of(
    st.builds(lambda n, t: f"input {n} : {t}", names, type_text),
    st.builds(lambda n, t, i: f"param {n} : {t}" + (f" = {i}" if i else ""), names, type_text,
              st.sampled_from(["", "zeros", "normal", "he_normal", "glorot"])),
    st.builds(lambda n, e: f"{n} = {e}", names, expressions(3)),
    st.builds(lambda n, e: f"output {n}" + (f" = {e}" if e else ""), names, st.one_of(st.just(""), expressions(2))),
    st.builds(lambda loss, a, kws: f"loss {loss}({', '.join([a] + kws)})",
              st.sampled_from(["cross_entropy", "margin", "mse", "hinge"]), names, st.lists(kwarg, max_size=2)),
    st.sampled_from(["model m", "# a comment", "", "model"]),
)
# a model that is close to valid (a dense net with a random layer), so the later stages run too
skeleton = st.builds(
    lambda n_in, hidden, mid, out: "\n".join([
        "model m", f"input x : f32[{n_in}]", f"param W1 : f32[{n_in}, {hidden}] = he_normal",
        f"param b1 : f32[{hidden}] = zeros", f"param W2 : f32[{hidden}, {out}] = he_normal",
        f"h = {mid}", "output logits = h @ W2", "loss cross_entropy(logits)"]) + "\n",
    st.integers(1, 6), st.integers(1, 6), st.sampled_from([
        "relu(x @ W1 + b1)", "leaky_relu(x @ W1 + b1, slope = 0.1)", "quantize(x @ W1 + b1, levels = 3)",
        "sign(x @ W1 + b1)", "clip(x @ W1, lo = -1.0, hi = 1.0)", "max(x @ W1, b1)", "relu(x @ W1) + b1",
        "mul(x @ W1, b1)", "square(x @ W1 + b1)", "relu(concat(x @ W1, b1, axis = 0))"]),
    st.integers(2, 5))


def edit(text: str, data) -> str:
    """One random edit: delete, insert or replace a span."""
    if not text:
        return text
    i = data.draw(st.integers(0, len(text) - 1))
    j = data.draw(st.integers(i, min(len(text), i + 8)))
    junk = data.draw(st.text(alphabet=string.printable + "é∑\u00a0", max_size=4))
    return text[:i] + data.draw(st.sampled_from(["", junk, text[i:j] * 2])) + text[j:]


def only_feascomp_errors(fn):
    """Run fn; a FeascompError (with a location or a message) is the only failure allowed."""
    try:
        return fn()
    except FeascompError as e:
        assert e.message, "an error without a message"
        return None


def parse_and_plan(text: str):
    """Parse a model; where it parses, run the pass pipeline on it."""
    module = only_feascomp_errors(lambda: parse_model(text, "fuzz.fc"))
    event(f"parsed: {module is not None}")
    if module is not None:
        plan = only_feascomp_errors(lambda: run_pipeline(module, parse_pipeline(DEFAULT_PIPELINE, batch=2)))
        event(f"planned: {plan is not None}")


@settings(max_examples=900)
@given(st.lists(statement, min_size=0, max_size=9), st.data())
def test_fuzz_grammar_shaped_models(lines, data):
    text = "\n".join(lines) + "\n"
    if data.draw(st.booleans()):
        text = edit(text, data)
    parse_and_plan(text)


@settings(max_examples=500)
@given(skeleton, st.data())
def test_fuzz_near_valid_models_through_the_passes(text, data):
    if data.draw(st.booleans()):
        text = edit(text, data)
    parse_and_plan(text)


@settings(max_examples=400)
@given(st.binary(max_size=300), st.sampled_from([b"", b"\xef\xbb\xbf", b"model m\n", b"input x : f32[4]\n"]))
def test_fuzz_random_bytes_as_a_model_file(tmp_path_factory, blob, prefix):
    path = tmp_path_factory.mktemp("fuzz") / "m.fc"
    path.write_bytes(prefix + blob)
    only_feascomp_errors(lambda: parse_file(str(path)))


GOLDEN = sorted(os.path.join(HERE, "golden", f) for f in os.listdir(os.path.join(HERE, "golden")) if f.endswith(".ir"))
IR_TEXTS = [open(p).read() for p in GOLDEN if os.path.getsize(p) < 20_000]


def parse_and_verify(text):
    module = parse_ir(text, "fuzz.ir")
    (verify_feasibility if isinstance(module, FeasModule) else verify_tensor)(module)
    return module


@settings(max_examples=500)
@given(st.sampled_from(IR_TEXTS), st.integers(1, 3), st.data())
def test_fuzz_ir_text(text, edits, data):
    for _ in range(edits):
        text = edit(text, data)
    only_feascomp_errors(lambda: parse_and_verify(text))
