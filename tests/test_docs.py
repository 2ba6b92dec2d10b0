"""The documentation's examples run as written."""
import re


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", open(path).read(), flags=re.S)


def test_python_api_example_runs():
    (block,) = [b for b in python_blocks("docs/python-api.md") if "solver.update" in b]
    exec(compile(block, "docs/python-api.md", "exec"), {})


def test_readme_commands_use_the_ci_script():
    readme = open("README.md").read()
    ci = open(".ci/run").read()
    test_cmd = [line for line in readme.splitlines() if "pytest" in line and line.startswith("python3")]
    assert len(test_cmd) == 1 and test_cmd[0] in ci
    assert "feascomp train examples/mnist_mlp.fc" in readme
