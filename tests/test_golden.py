"""Golden dumps of every example at every stage. Regenerate: python tests/update_golden.py"""
import os

import pytest

from feascomp.ir import parse_ir
from update_golden import golden_cases, render

CASES = list(golden_cases())


@pytest.mark.parametrize("path,stage,golden", CASES, ids=[os.path.basename(g) for _, _, g in CASES])
def test_dump_matches_golden(path, stage, golden):
    assert os.path.exists(golden), "missing golden file: run python tests/update_golden.py"
    expected = open(golden).read()
    assert render(path, stage) == expected, "dump changed: review, then run python tests/update_golden.py"
    parse_ir(expected)  # every golden text parses
