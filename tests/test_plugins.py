"""A pass from a third-party package appears in `feascomp passes` and runs in a pipeline.

The package (tests/plugin_pkg) is installed the way an installer lays it out -- the module
plus a .dist-info folder holding its entry points -- in a temporary site folder on
PYTHONPATH, so the test needs no download and leaves the environment untouched.
"""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(os.path.join(HERE, "plugin_pkg", "feascomp_test_plugin"), root / "feascomp_test_plugin")
    info = root / "feascomp_test_plugin-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: feascomp-test-plugin\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[feascomp.passes]\nannotate-degree = feascomp_test_plugin:AnnotateDegreePass\n")
    return str(root)


def feascomp(site, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, os.getcwd()]))
    return subprocess.run([sys.executable, "-m", "feascomp.cli", *args], capture_output=True, text=True, env=env)


def test_plugin_pass_is_listed_and_runs(site):
    r = feascomp(site, "passes")
    assert r.returncode == 0 and "annotate-degree" in r.stdout, r.stderr
    r = feascomp(site, "opt", "examples/digits_mlp.fc", "--batch-size", "2", "--passes", "scalarize,annotate-degree,fuse-sum-relu")
    assert r.returncode == 0, r.stderr
    assert '%W1 = param() {init = "he_normal", out_families = 1}' in r.stdout


def test_without_the_plugin_the_pass_is_unknown(site):
    r = feascomp(os.devnull, "opt", "examples/digits_mlp.fc", "--passes", "scalarize,annotate-degree")
    assert r.returncode == 2 and "unknown pass 'annotate-degree'" in r.stderr
