"""The oracle catches a wrong formula: each algorithm's step, with one coefficient changed
in-process (its source edited and re-executed, then monkeypatched in), must make the jax
backend disagree with the NumPy scalar-graph oracle, which runs its own iterations
(backends/numpy_backend.py). Without the change they agree (the control).

The fused DR step (backends/fused.py ``dr_step``) writes DR's update again for
the edges outside its kernels; it is mutated the same way, with the kernels on. Under DR
and DM the model's first layer is folded and its copies factored (backends/factored.py),
whose own formulas are mutated too."""
import inspect
import sys
import textwrap

import numpy as np
import pytest

import feascomp
from feascomp import algorithms, kernels
from feascomp.backends import fused
from feascomp.backends.factored import FactoredCopies
from feascomp.frontends.dsl import parse_model
from models import mlp_source

TENSOR = parse_model(mlp_source([3, 4, 3], [True, True], readout=False))


def _case():
    rng = np.random.default_rng(7)
    params = {op.result: rng.normal(size=op.type.shape) for op in TENSOR.by_kind("param")}
    return params, rng.normal(size=(4, 3)), rng.integers(0, 3, size=4)


def _run(backend, algorithm, options, fuse):
    params, x, y = _case()
    solver = feascomp.compile(TENSOR, batch_size=4, algorithm=algorithm, steps=3, dtype="float64", backend=backend,
                              elide_inputs=False, fuse_kernels=fuse, **options)
    p, _, info = solver.update(solver.init(params), x, y)
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(info["residual"])


def _agree(algorithm, options, fuse=False) -> bool:
    pj, rj = _run("jax", algorithm, options, fuse)
    pn, rn = _run("numpy", algorithm, options, fuse)
    return all(np.allclose(pj[k], pn[k], rtol=1e-9, atol=1e-12) for k in pj) and np.allclose(rj, rn, rtol=1e-9, atol=1e-12)


def _mutate(monkeypatch, owner, method: str, old: str, new: str):
    """Replace ``old`` by ``new`` (exactly once) in the source of ``owner.method`` and
    install the result on ``owner`` for this test."""
    source = textwrap.dedent(inspect.getsource(getattr(owner, method)))
    assert source.count(old) == 1, f"{owner.__name__}.{method} no longer reads {old!r}: update this mutation"
    module = owner if inspect.ismodule(owner) else sys.modules[owner.__module__]
    namespace: dict = {}
    exec(compile(source.replace(old, new), inspect.getsourcefile(owner), "exec"), vars(module), namespace)
    monkeypatch.setattr(owner, method, namespace[method])


RELAXED = "combine(lambda p, x: 1.01 * p - 0.01 * x, {}, {})"
MUTATIONS = [
    # (algorithm, options, class, method, old text, new text)
    ("ap", {}, algorithms.CyclicProjections, "step", "first = project(0, z)",
     "first = " + RELAXED.format("project(0, z)", "z")),
    ("cp", {}, algorithms.CyclicProjections, "step", "cur = project(c, cur)",
     "cur = " + RELAXED.format("project(c, cur)", "cur")),
    ("dr", {}, algorithms.DouglasRachford, "step", "2 * p - x", "2.01 * p - x"),
    ("dr", {}, algorithms.DouglasRachford, "step", "x + 2 * r * (b - a)", "x + 2.01 * r * (b - a)"),
    ("dr", {"relaxation": 0.8}, algorithms.DouglasRachford, "step", "x + 2 * r * (b - a)", "x + 2 * r * (b - 0.99 * a)"),
    ("dm", {}, algorithms.DifferenceMap, "_parts", "p + (p - x) / b", "p + 1.01 * (p - x) / b"),
    ("dm", {}, algorithms.DifferenceMap, "step", "x + self.beta * (a - c)", "x + 1.01 * self.beta * (a - c)"),
    ("dm", {"beta": 0.7}, algorithms.DifferenceMap, "_parts", "p - (p - x) / b", "p - 1.01 * (p - x) / b"),
    ("dm", {"beta": 0.7}, algorithms.DifferenceMap, "_parts", "p + (p - x) / b", "p + (p - 1.01 * x) / b"),
    ("dm", {"beta": 0.7}, algorithms.DifferenceMap, "step", "x + self.beta * (a - c)", "x + self.beta * (a - 1.01 * c)"),
    # the folded first layer's copies, factored (backends/factored.py): its projection, its
    # producer's sum, its share of the step residual
    ("dr", {}, FactoredCopies, "project", "new[self.coef] = alpha - mu", "new[self.coef] = alpha - 1.01 * mu"),
    ("dm", {}, FactoredCopies, "transpose", "xp.asarray(self.count, c.dtype)", "xp.asarray(self.count * 1.01, c.dtype)"),
    ("dr", {}, FactoredCopies, "distance_sq", "+ 2 * xp.sum", "+ 2.01 * xp.sum"),
]


@pytest.mark.parametrize("algorithm,options", [("ap", {}), ("cp", {}), ("dr", {}), ("dr", {"relaxation": 0.8}),
                                               ("dm", {}), ("dm", {"beta": 0.7})])
def test_control_agrees(algorithm, options):
    assert _agree(algorithm, options)


@pytest.mark.parametrize("algorithm,options,owner,method,old,new", MUTATIONS,
                         ids=[f"{m[0]}{m[1] or ''}:{m[3]}:{m[4]}" for m in MUTATIONS])
def test_changed_coefficient_is_caught(monkeypatch, algorithm, options, owner, method, old, new):
    _mutate(monkeypatch, owner, method, old, new)
    assert not _agree(algorithm, options), "a changed coefficient passed the oracle comparison"


@pytest.mark.skipif(not kernels.load("dot_project"), reason="the native kernels do not build here")
def test_changed_coefficient_in_the_fused_step_is_caught(monkeypatch):
    assert _agree("dr", {}, fuse=True)
    _mutate(monkeypatch, fused, "dr_step", "new[k] = z[k] + 2 * r * (p1[k] - p0[k])",
            "new[k] = z[k] + 2.01 * r * (p1[k] - p0[k])")
    assert not _agree("dr", {}, fuse=True), "a changed coefficient in the fused DR step passed the oracle comparison"
