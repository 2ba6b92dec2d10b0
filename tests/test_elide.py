"""AP without stored input edges (elide_inputs, the default under AP): the same iterates
and parameters as with them, a smaller edge state, and a step residual over the stored
edges that is never larger than the residual over every edge."""
import numpy as np
import pytest

import feascomp
from feascomp import data
from feascomp.backends.storage import ElidedInputs, FoldedInputs
from feascomp.passes import DEFAULT_PIPELINE, FUSED_PIPELINE

# (the RNN's per-step input rows are views of the input as the CNN's windows are; its
# compile, twice in float64, cost the suite 25 s)
MODELS = ["examples/digits_mlp.fc", "examples/digits_cnn.fc", "examples/digits_readout.fc", "examples/digits_residual.fc"]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


CASES = [(m, False) for m in MODELS] + [(m, True) for m in MODELS[:2]]  # weights: a dense and a conv input


@pytest.mark.slow
@pytest.mark.parametrize("model,weighted", CASES)
def test_elided_inputs_give_the_same_ap_iterates(model, weighted, digits):
    out = {}
    for elide in (True, False):
        pipeline = FUSED_PIPELINE if model.endswith("readout.fc") else DEFAULT_PIPELINE
        s = feascomp.compile(model, batch_size=8, algorithm="ap", steps=4, dtype="float64", weighted=weighted,
                             elide_inputs=elide, pipeline=pipeline)
        state = s.init(s.init_params(0))
        for i in range(2):
            p, state, info = s.update(state, digits.x_train[8 * i : 8 * i + 8], digits.y_train[8 * i : 8 * i + 8])
        out[elide] = (p, np.asarray(info["residual"]), s.state_bytes, bool(s.program.strategies(ElidedInputs)))
    assert out[True][3] and not out[False][3]
    assert out[True][2] < out[False][2]
    for k in out[False][0]:
        np.testing.assert_allclose(np.asarray(out[True][0][k]), np.asarray(out[False][0][k]), rtol=1e-12, atol=1e-13)
    assert np.all(out[True][1] <= out[False][1] * (1 + 1e-12)) and np.all(out[True][1] > 0)


@pytest.mark.parametrize("options", [dict(algorithm="dr"), dict(algorithm="cp"), dict(algorithm="dm"),
                                     dict(algorithm="ap", warm_start=True), dict(algorithm="ap", monitor=True),
                                     dict(algorithm="ap", elide_inputs=False)])
def test_inputs_are_stored_where_eliding_would_change_the_iterates(options):
    s = feascomp.compile("examples/digits_mlp.fc", batch_size=4, **options)
    # (DR and DM fold the input into its products instead: tests/test_fold.py)
    assert not [f for f in s.program.strategies(ElidedInputs).values() if not isinstance(f, FoldedInputs)]
