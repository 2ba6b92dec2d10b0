"""Every file in tests/invalid/ is one bad input and the message it must give.

A case is a split file (as LLVM's split-file reads them):

    # RUN: train %{m.fc} --dataset digits --updates 1
    # ERROR: %{m.fc}:6:10: error: matmul shapes do not agree
    #--- m.fc
    model m
    ...
    #--- p.npz (base64)
    UEsDBBQAAAAAAAAAIQ...

``RUN`` is the feascomp command line; ``%{name}`` stands for the path of the case's file
``name`` (written to a fresh folder, the working directory), ``%{tmp}`` for that folder
and ``%{examples}`` for the repository's examples/. ``ERROR`` is what the first line of stderr must start with, and
``EXIT`` the exit status (default 2). Every case must end with that status, that line
and no traceback. Add a case by adding a file; nothing else changes.
"""
import base64
import os
import re

import pytest

from feascomp.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = sorted(f for f in os.listdir(os.path.join(HERE, "invalid")) if f.endswith(".test"))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


def parse_case(text: str):
    header, files, current = {"RUN": None, "ERROR": None, "EXIT": "2"}, {}, None
    for line in text.splitlines(keepends=True):
        m = re.match(r"#--- (\S+)( \(base64\))?\s*$", line)
        if m:
            current = [m.group(1), bool(m.group(2)), []]
            files[m.group(1)] = current
            continue
        if current is not None:
            current[2].append(line)
            continue
        m = re.match(r"# (RUN|ERROR|EXIT): (.*)$", line.rstrip("\n"))
        if m:
            header[m.group(1)] = m.group(2)
    contents = {}
    for name, (_, b64, lines) in files.items():
        body = "".join(lines)
        contents[name] = base64.b64decode("".join(body.split())) if b64 else body.encode()
    return header, contents


def test_there_are_enough_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES)
def test_invalid_input(case, tmp_path, monkeypatch, capsys):
    with open(os.path.join(HERE, "invalid", case), encoding="utf-8") as fh:
        header, files = parse_case(fh.read())
    assert header["RUN"] and header["ERROR"], f"{case}: needs # RUN: and # ERROR: lines"
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)

    def expand(text):
        special = {"examples": EXAMPLES, "tmp": str(tmp_path)}
        return re.sub(r"%\{([^}]+)\}", lambda m: special.get(m.group(1)) or str(tmp_path / m.group(1)), text)

    argv = expand(header["RUN"]).split()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refusing an option
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == int(header["EXIT"]), f"exit {code}, stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    want = expand(header["ERROR"])
    first = lines[-1] if lines and lines[0].startswith("usage:") else (lines[0] if lines else "")
    assert first.startswith(want), f"expected a first line starting\n  {want}\ngot\n{err}"
