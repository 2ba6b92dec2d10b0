"""feascomp opt: pipelines, printing, timing, verification and reproducers."""
import pytest

from feascomp.cli import main
from feascomp.ir import parse_ir
from feascomp.passes import parse_pipeline, pipeline_text

NON_BIPARTITE = """input x : f32[4]
param W1 : f32[4, 3] = he_normal
param b1 : f32[3] = zeros
param W2 : f32[3, 2] = he_normal
h = max(x @ W1 + b1, b1)
output logits = h @ W2
loss cross_entropy(logits)
"""


def test_opt_emits_each_stage_and_it_parses_back(capsys):
    for stage, head in (("tensor", "tensor @"), ("feasibility", "feasibility @"), ("plan", "// ")):
        assert main(["opt", "examples/digits_mlp.fc", "--emit", stage, "--batch-size", "2"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(head)
        parse_ir(out)


def test_opt_runs_on_ir_text(tmp_path, capsys):
    assert main(["opt", "examples/digits_mlp.fc", "--emit", "feasibility", "--batch-size", "3"]) == 0
    ir = tmp_path / "m.ir"
    ir.write_text(capsys.readouterr().out)
    assert main(["opt", str(ir), "--passes", "color"]) == 0
    assert "lam = 5.0, colour = 0, layer = 0}" in capsys.readouterr().out  # the target: colour 0, layer 0


@pytest.mark.parametrize("text", ["scalarize{batch=7},fuse-sum-relu,color", "scalarize,color", "fuse-sum-relu"])
def test_pipeline_string_round_trips(text, capsys):
    assert pipeline_text(parse_pipeline(text)) == text
    if text.startswith("scalarize{"):
        main(["opt", "examples/digits_mlp.fc", "--passes", text, "--dump-pipeline"])
        assert capsys.readouterr().err.splitlines()[0] == text


def test_print_ir_after_flags_and_timing(capsys):
    assert main(["opt", "examples/digits_mlp.fc", "--batch-size", "2", "--print-ir-after-all", "--time-passes"]) == 0
    err = capsys.readouterr().err
    assert [l for l in err.splitlines() if "IR Dump After" in l] == [
        "// -----// IR Dump After scalarize //----- //", "// -----// IR Dump After fuse-sum-relu //----- //",
        "// -----// IR Dump After insert-identities //----- //", "// -----// IR Dump After color //----- //"]
    assert "Pass execution timing report" in err and "scalarize" in err
    # a pass that changes nothing is not printed with --print-ir-after-change
    assert main(["opt", "examples/digits_sign.fc", "--batch-size", "2", "--print-ir-after-change"]) == 0
    err = capsys.readouterr().err
    assert "After fuse-sum-relu" not in err and "After insert-identities" not in err and "After scalarize" in err


def test_failing_pass_writes_a_reproducer(tmp_path, capsys):
    model = tmp_path / "bad.fc"
    model.write_text(NON_BIPARTITE)
    no_identities = "scalarize,fuse-sum-relu,color"  # the default pipeline would insert one
    assert main(["opt", str(model), "--batch-size", "2", "--passes", no_identities, "--reproducer-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pass 'color' failed" in err and "not bipartite" in err
    repro = tmp_path / "feascomp-reproducer-color.ir"
    assert repro.exists() and f"re-run: feascomp opt {repro} --passes 'color'" in err
    assert main(["opt", str(repro), "--passes", "color", "--reproducer-dir", str(tmp_path)]) == 2
    assert "pass 'color' failed" in capsys.readouterr().err


def test_passes_lists_the_builtins(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert {"scalarize", "fuse-sum-relu", "insert-identities", "color"} <= {line.split()[0] for line in out.splitlines()}


def test_default_pipeline_makes_the_residual_model_bipartite(tmp_path, capsys):
    model = tmp_path / "res.fc"
    model.write_text(NON_BIPARTITE)
    assert main(["opt", str(model), "--batch-size", "2"]) == 0
    assert "1 identity families inserted" in capsys.readouterr().out
