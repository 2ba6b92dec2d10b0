"""Located, user-facing errors.

Every error a user can cause (a bad model file, bad IR text, an unsupported construct)
is a :class:`FeascompError` with a :class:`Loc`; the CLI prints it as

    file:line:col: error: message
        the offending line
        ^

and exits with status 2. Nothing else reaches the user as a traceback.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Loc:
    file: str
    line: int = 0  # 1-based; 0 = unknown
    col: int = 0  # 1-based; 0 = unknown
    source_line: str | None = None

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col or 1}"
        return self.file


class FeascompError(Exception):
    """An error in the user's input, with a location."""

    def __init__(self, message: str, loc: Loc | None = None, note: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.note = note

    def render(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        out = [f"{where}error: {self.message}"]
        if self.loc and self.loc.source_line is not None:
            line = self.loc.source_line.rstrip("\n").replace("\t", " ")
            out.append(f"    {line}")
            out.append("    " + " " * max(self.loc.col - 1, 0) + "^")
        if self.note:
            out.append(f"note: {self.note}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


def loc_in(file: str, text: str, line: int, col: int) -> Loc:
    """A Loc carrying the source line, for the caret display."""
    lines = text.split("\n")  # as the parsers count lines (str.splitlines also breaks at \f, \v, ...)
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return Loc(file, line, col, src)


def loc_from_traceback(exc: BaseException, file: str | None = None) -> Loc | None:
    """Where user code raised ``exc``: the deepest frame in ``file`` if given, else the
    deepest frame outside feascomp and installed packages (the user's own code)."""
    import os
    import traceback

    if isinstance(exc, SyntaxError) and exc.lineno and (file is None or os.path.abspath(exc.filename or "") == os.path.abspath(file)):
        return Loc(file or exc.filename, exc.lineno, exc.offset or 1, (exc.text or "").rstrip("\n"))
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def is_user(filename: str) -> bool:
        path = os.path.abspath(filename)
        if file is not None:
            return path == os.path.abspath(file)
        return not path.startswith(package) and "site-packages" not in path and not filename.startswith("<")

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user(f.filename)]
    if not frames:
        return Loc(file) if file else None
    f = frames[-1]
    return Loc(f.filename, f.lineno or 0, (getattr(f, "colno", None) or 0) + 1, f.line)
