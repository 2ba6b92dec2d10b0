"""Every IR level prints to text and parses back to an equal object."""
import glob

import pytest

import feascomp
from feascomp.errors import FeascompError
from feascomp.ir import parse_ir
from feascomp.ir.text import print_feasibility, print_plan, print_tensor

EXAMPLES = sorted(glob.glob("examples/*.fc"))


@pytest.mark.parametrize("path", EXAMPLES)
@pytest.mark.parametrize("stage", ["tensor", "feasibility", "plan"])
def test_round_trip(path, stage):
    solver = feascomp.compile(path, batch_size=8)
    text = solver.dump(stage)
    module = parse_ir(text)
    assert module == solver.stages[stage]
    printers = {"tensor": print_tensor, "feasibility": lambda m: print_feasibility(m, "feasibility"), "plan": print_plan}
    assert printers[stage](module) == text


def test_examples_exist():
    assert "examples/mnist_mlp.fc" in EXAMPLES


def feas(body: str) -> str:
    return "feasibility @m {batch = 2} {\n" + body + "\n}\n"


GOOD = """  %x = const() : f32[2, 3]
  %s = sum(x: 3) : f32[2]
  %target = target(logits: 2) {kind = "cross_entropy", lam = 5.0} : f32[1]
  edge %x -> %s.x[0:3] bcast "ab->ab" : f32[2, 3]
  edge %s -> %target.logits[0:2] bcast "b->ab" : f32[1, 2]"""


def test_verifier_accepts_good_module():
    from feascomp.ir import feasibility

    feasibility.verify(parse_ir(feas(GOOD)))


@pytest.mark.parametrize(
    "mutation,fragment",
    [
        (("f32[2, 3]\n  %s", "f32[2, 4]\n  %s"), "map"),
        (("%x -> %s.x[0:3]", "%y -> %s.x[0:3]"), "undefined family"),
        (("sum(x: 3)", "sum(x: 4)"), "port x"),
        (("sum(x: 3)", "dot(x: 3)"), "ports"),
        (("sum(x: 3)", "frobnicate(x: 3)"), "unknown primitive"),
        (('kind = "cross_entropy"', 'kind = "hinge"'), "unknown loss"),
        (("%s.x[0:3]", "%s.y[0:3]"), "no port"),
    ],
)
def test_verifier_rejects(mutation, fragment):
    from feascomp.ir import feasibility

    old, new = mutation
    with pytest.raises(FeascompError, match=fragment):
        feasibility.verify(parse_ir(feas(GOOD.replace(old, new, 1))))


def test_parse_error_is_located():
    with pytest.raises(FeascompError) as e:
        parse_ir("tensor @m {\n  %x = input() : f32[3\n}\n", "m.ir")
    assert str(e.value).startswith("m.ir:3:1: error: IR syntax error")


def test_attribute_values_round_trip():
    text = 'tensor @m {\n  %x = input() {a = 1, b = -2.5e-07, c = "s\\"q", d = true, e = [1, 2.0, "x"]} : f32[3]\n}\n'
    m = parse_ir(text)
    assert dict(m.ops[0].attrs) == {"a": 1, "b": -2.5e-07, "c": 's"q', "d": True, "e": [1, 2.0, "x"]}
    assert str(m) == text
