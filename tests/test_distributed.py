"""Scale-out through JAX's own runtime: the same parameters on 1, 2 and 4 devices (forced
CPU devices, in subprocesses), two processes joined by jax.distributed (gloo) against one
process with two devices, per-device state, and the refusals (docs/distributed.md)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import feascomp
from feascomp.backends import mesh as meshes
from feascomp.errors import FeascompError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP, READOUT, CNN = "examples/digits_mlp.fc", "examples/digits_readout.fc", "examples/digits_cnn.fc"


def _env(devices: int) -> dict:
    # XLA's backend optimisation off: the programs compared are compiled alike, and it
    # takes a third of the compile time off these tests (which are mostly compiles)
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": ROOT}


def _python(code: str, devices: int) -> list[str]:
    """``code`` run by Python in a process with ``devices`` forced devices: its output lines."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(devices), cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()


def _run_worker(tmp_path, configs: dict) -> dict:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distributed_worker.py"), str(tmp_path),
                          json.dumps(configs)], capture_output=True, text=True, env=_env(4), cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same(tmp_path, name: str, dtype: str, others=(2, 4)):
    """1 vs 2 vs 4 devices: float64 to rtol 1e-9, float32 to rtol 1e-4, each relative to
    the parameter's scale (zero-initialised biases move by rounding-sized amounts)."""
    rtol = 1e-9 if dtype == "float64" else 1e-4
    one = np.load(tmp_path / f"{name}-1.npz")
    for n in others:
        other = np.load(tmp_path / f"{name}-{n}.npz")
        for k in one.files:
            scale = max(float(np.max(np.abs(one[k]))), 1.0)
            np.testing.assert_allclose(other[k], one[k], rtol=rtol, atol=rtol * scale, err_msg=f"{name}, {n} devices, {k}")


ALGORITHMS = {  # DR fused and XLA's, AP materialized and collapsed, CP, DM
    "dr": {}, "dr-xla": {"fuse_kernels": False}, "ap": {"algorithm": "ap"},
    "ap-collapsed": {"algorithm": "ap", "lowering": "collapsed"}, "cp": {"algorithm": "cp"}, "dm": {"algorithm": "dm"},
}


@pytest.mark.slow
def test_one_two_four_devices_agree_on_the_mlp_in_float64(tmp_path):
    configs = {f"mlp-{a}": {"model": MLP, "dtype": "float64", **kw} for a, kw in ALGORITHMS.items()}
    # the model axis too: dense layers' units split over 2 devices (XLA's step)
    configs["mlp-model-axis"] = {"model": MLP, "dtype": "float64", "devices": [1, "data=2,model=2"]}
    report = _run_worker(tmp_path, configs)
    for name in ALGORITHMS:
        _same(tmp_path, f"mlp-{name}", "float64")
    _same(tmp_path, "mlp-model-axis", "float64", others=["data=2,model=2"])
    assert report["mlp-model-axis-data=2,model=2"]["mesh"] == {"data": 2, "model": 2}


@pytest.mark.slow
@pytest.mark.parametrize("model", [READOUT, CNN])
def test_one_and_four_devices_agree_in_float32(tmp_path, model):
    """The readout MLP and the CNN in float32, on 1 and 4 devices, under DR (fused and
    XLA's) and AP (materialized and collapsed) (the MLP's float32 run is
    the two-process test's, and its every algorithm is checked on 1, 2 and 4 devices in
    float64 above, to a tighter tolerance; 2 devices split the batch by the same code as 4,
    and the suite's time budget pays for one of them here)."""
    tag = os.path.basename(model)[:-3]
    # CP and DM run the same sharded program code as AP and DR (the float64 matrix checks
    # all six on 1, 2 and 4 devices); here the state layouts of the readout's and the
    # CNN's families under the fused, XLA and collapsed steps
    configs = {f"{tag}-{a}": {"model": model, "devices": [1, 4], **kw} for a, kw in ALGORITHMS.items()
               if a not in ("cp", "dm")}
    report = _run_worker(tmp_path, configs)
    for name in configs:
        _same(tmp_path, name, "float32", others=(4,))
    # over several devices XLA partitions the step and would gather a custom call's whole
    # batch onto each device: the lowering keeps max's projection in XLA's form and sets no
    # fusion boundaries there (backends/lowering.py), and uses both on one device
    from feascomp import kernels

    native = kernels.load("dot_project")
    for name in configs:
        one, four = report[f"{name}-1"], report[f"{name}-4"]
        assert one["boundaries"] == native and not four["boundaries"], name
        if model == CNN:
            assert one["max_kernels"] == ["auto"] and four["max_kernels"] == ["xla"], name


@pytest.mark.slow
def test_a_batch_too_big_for_one_devices_budget_runs_on_four(tmp_path):
    """The CNN's state at batch 128 exceeds a --max-memory that one device's share fits:
    refused on one device, run on four, each holding a quarter of the state (plus the
    parameters); the estimate is per device, and so is what the arrays measure."""
    code = (
        "import json, feascomp\n"
        "from feascomp.errors import FeascompError\n"
        "kw = dict(batch_size=128, steps=2, algorithm='dr', fuse_kernels=False, warm_start=True)\n"
        "one = feascomp.compile('examples/digits_cnn.fc', devices=1, **kw)\n"
        "budget = one.memory.peak - one.memory.edge_state // 2\n"
        "try:\n"
        "    feascomp.compile('examples/digits_cnn.fc', devices=1, max_memory=budget, **kw).compile_update()\n"
        "    refused = False\n"
        "except FeascompError as e:\n"
        "    refused = 'needs an estimated' in e.message\n"
        "four = feascomp.compile('examples/digits_cnn.fc', devices=4, max_memory=budget, **kw)\n"
        "print(json.dumps({'refused': refused, 'budget': budget, 'peak4': four.memory.peak,"
        " 'total': one.state_bytes, 'device4': four.device_state_bytes}))\n"
    )
    r = json.loads(_python(code, 4)[-1])
    assert r["refused"] and r["peak4"] <= r["budget"]
    assert r["device4"] <= r["total"] / 4 + 1
    report = _run_worker(tmp_path, {"cnn": {"model": CNN, "batch_size": 128, "algorithm": "dr", "fuse_kernels": False,
                                            "warm_start": True, "devices": [4]}})
    quarter = report["cnn-4"]  # what one device's arrays hold of the carried state
    assert quarter["state_bytes"] == r["total"]
    assert quarter["measured_device_state_bytes"] <= quarter["state_bytes"] / 4 + quarter["param_bytes"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN = ["-m", "feascomp.cli", "train", MLP, "--dataset", "digits", "--updates", "5", "--batch-size", "16",
         "--steps-per-batch", "3", "--eval-every", "0", "--no-progress", "--json"]


def _processes(extra: list[list[str]], timeout: int = 300):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *TRAIN, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                               str(len(extra)), "--process-id", str(i), "--init-timeout", "60", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(1), cwd=ROOT)
             for i, args in enumerate(extra)]
    return [(p.wait(timeout=timeout), p.stdout.read(), p.stderr.read()) for p in procs]


def test_two_processes_give_two_devices_parameters(tmp_path):
    """Two processes on this machine, joined by jax.distributed over gloo, each holding its
    half of every batch, against one process with two devices: the same parameters
    (float32, rtol 1e-4); only process 0 writes them."""
    two = tmp_path / "two.npz"
    done = _processes([["--save", str(two)], ["--save", str(tmp_path / "never.npz")]])
    for rc, out, err in done:
        assert rc == 0, err[-3000:]
    report = json.loads(done[0][1].strip().splitlines()[-1])
    assert report["processes"] == 2 and report["devices"] == 2 and report["mesh"] == {"data": 2}
    assert not (tmp_path / "never.npz").exists()
    one = tmp_path / "one.npz"
    out = subprocess.run([sys.executable, *TRAIN, "--devices", "2", "--save", str(one)], capture_output=True, text=True,
                         env=_env(2), cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = np.load(two), np.load(one)
    for k in b.files:
        if b[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b[k]).max())))


def test_processes_that_disagree_are_refused():
    done = _processes([[], ["--steps-per-batch", "4"]])
    for rc, out, err in done:
        assert rc == 2, err[-3000:]
        assert "were given another model, plan or options than process 0" in err


def test_an_unreachable_coordinator_is_an_error_not_a_hang():
    out = subprocess.run([sys.executable, *TRAIN, "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes",
                          "2", "--process-id", "1", "--init-timeout", "3"], capture_output=True, text=True, env=_env(1),
                         cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "joining the multi-process run failed within 3 s" in out.stderr and "Traceback" not in out.stderr


def test_refusals_in_one_process():
    with pytest.raises(FeascompError, match="needs 4 devices; JAX sees 1"):
        feascomp.compile(MLP, batch_size=16, devices=4)
    with pytest.raises(FeascompError, match="numpy backend runs on one device"):
        feascomp.compile(MLP, batch_size=16, devices=2, backend="numpy")
    with pytest.raises(FeascompError, match="adam runs on one device"):
        feascomp.compile(MLP, batch_size=16, devices=2, algorithm="adam")
    with pytest.raises(FeascompError, match="disagree"):
        feascomp.compile(MLP, batch_size=16, devices=2, mesh="data=4")
    for bad in ("data", "data=0", "gpu=2", "data=2,data=2", "model=x"):
        with pytest.raises(FeascompError):
            meshes.normalize(bad)
    assert meshes.parse("model=2,data=2") == (("data", 2), ("model", 2))
    assert meshes.normalize({"model": 2}) == (("data", 1), ("model", 2))


def test_refusals_that_need_devices():
    code = (
        "import feascomp\n"
        "from feascomp.errors import FeascompError\n"
        "for kw in (dict(batch_size=10, devices=4), dict(batch_size=16, mesh='data=2,model=4'),\n"
        "           dict(batch_size=16, mesh='data=1,model=3')):\n"
        "    try:\n"
        "        feascomp.compile('examples/digits_mlp.fc', **kw)\n"
        "        print('accepted', kw)\n"
        "    except FeascompError as e:\n"
        "        print('refused', e.message)\n"
    )
    lines = _python(code, 4)
    assert "--batch-size 10 is not divisible by the mesh's data axis (4 devices)" in lines[0]
    assert "needs 8 devices; JAX sees 4" in lines[1]
    assert "model axis (3 devices) divides no dense layer's units" in lines[2]
