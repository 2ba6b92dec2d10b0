"""The parser of every IR level, and its printers (from printer.py): print(parse(print(m)))
== print(m), and parse(print(m)) == m (locations aside)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import lark

from ..errors import FeascompError, loc_in
from .feasibility import MAP_KINDS, STEP_KINDS, Edge, Family, FeasModule, Group, make_map
from .printer import fmt_attrs, fmt_value, print_feasibility, print_plan, print_tensor  # noqa: F401
from .tensor import Op, TensorModule
from .types import TensorType


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files(__package__).joinpath("ir.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


class _Build(lark.Transformer):
    def number(self, items):
        s = str(items[0])
        if s in ("inf", "+inf", "-inf", "nan"):
            return float(s)
        return float(s) if any(c in s for c in ".eE") else int(s)

    def string(self, items):
        return json.loads(items[0])

    def true(self, _):
        return True

    def false(self, _):
        return False

    def list(self, items):
        return [x for x in items if x is not None]

    def attr(self, items):
        return (str(items[0]), items[1])

    def attrdict(self, items):
        return tuple(x for x in items if x is not None)

    def type(self, items):
        return TensorType(str(items[0]), tuple(int(x) for x in items[1:] if x is not None))

    def operands(self, items):
        return list(items)

    def value_operand(self, items):
        return ("value", str(items[0])[1:])

    def port_operand(self, items):
        return ("port", (str(items[0]), int(items[1])))


def parse_ir(text: str, file: str = "<ir>") -> TensorModule | FeasModule:
    """Parse any IR level's text. Errors are FeascompErrors located in ``file``."""
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        line, col = getattr(e, "line", 0) or 0, getattr(e, "column", 0) or 0
        tok = getattr(e, "token", None)
        if tok is not None and getattr(tok, "type", None) == "$END":
            what = "unexpected end of file"
        elif tok is not None:
            what = f"unexpected {str(tok)!r}"
        elif isinstance(e, lark.exceptions.UnexpectedCharacters):
            what = f"unexpected character {e.char!r}"
        else:
            what = "unexpected input"
        raise FeascompError(f"IR syntax error: {what}", loc_in(file, text, line, col)) from None
    try:
        tree = _Build().transform(tree)
    except lark.exceptions.VisitError as e:  # a literal the builder cannot read (a string with a control character, ...)
        where = getattr(e.obj, "meta", e.obj)
        line, col = getattr(where, "line", 1) or 1, getattr(where, "column", 1) or 1
        raise FeascompError(f"IR syntax error: {e.orig_exc}", loc_in(file, text, line, col)) from None
    mod = tree.children[0]
    level, name, attrs = str(mod.children[0]), str(mod.children[1]), mod.children[2] or ()
    items = mod.children[3:]
    try:
        if level == "tensor":
            return _tensor_module(name, items, file, text)
        return _feas_module(name, attrs, items, file, text)
    except (ValueError, KeyError) as e:
        raise FeascompError(f"malformed IR: {e}", loc_in(file, text, 1, 1)) from None


def _loc(item, file, text):
    meta = getattr(item, "meta", None)
    if meta is None or getattr(meta, "empty", True):
        return None
    return loc_in(file, text, meta.line, meta.column)


def _tensor_module(name, items, file, text) -> TensorModule:
    ops = []
    for it in items:
        if it.data != "op":
            raise FeascompError("tensor IR holds only ops", _loc(it, file, text))
        result, opname, operands, attrs, ty = it.children
        vals = []
        for o in operands or ():
            if o[0] != "value":
                raise FeascompError("tensor ops take %values, not ports", _loc(it, file, text))
            vals.append(o[1])
        ops.append(
            Op(str(opname), str(result)[1:] if result else None, tuple(vals), attrs or (), ty, _loc(it, file, text))
        )
    return TensorModule(name, tuple(ops))


def _feas_module(name, attrs, items, file, text) -> FeasModule:
    fams, edges, groups = [], [], []
    for it in items:
        if it.data == "op":
            result, kind, operands, fattrs, ty = it.children
            ports = tuple(o[1] for o in operands or ())
            if result is None or ty is None or any(o[0] != "port" for o in operands or ()):
                raise FeascompError("a family reads `%name = kind(port: n, ...) {attrs} : type`", _loc(it, file, text))
            fams.append(Family(str(result)[1:], str(kind), ty, ports, fattrs or (), _loc(it, file, text)))
        elif it.data == "edge":
            src, dst, port, start, stop, *steps, mkind, spec, ty = it.children
            cls = MAP_KINDS.get(str(mkind))
            if cls is None:
                raise FeascompError(f"unknown edge map kind {str(mkind)!r}", _loc(it, file, text))
            chain = []
            for st in steps:
                skind, sattrs = st.children
                scls = STEP_KINDS.get(str(skind))
                if scls is None:
                    raise FeascompError(f"unknown edge map step {str(skind)!r}; known: {', '.join(STEP_KINDS)}", _loc(it, file, text))
                chain.append(scls.from_attrs(dict(sattrs or ())))
            emap = make_map(chain, cls.parse(json.loads(spec)))
            edges.append(Edge(str(src)[1:], str(dst)[1:], str(port), int(start), int(stop), emap, ty))
        else:
            gname, gattrs, kind, *members = it.children
            groups.append(Group(str(gname), int(dict(gattrs)["colour"]), str(kind), tuple(str(v)[1:] for v in members)))
    return FeasModule(name, tuple(fams), tuple(edges), attrs, tuple(groups))
