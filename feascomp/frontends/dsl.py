"""The .fc front end: parse a model file (grammar: model.lark) and build tensor IR.

    model mnist_mlp
    input  x  : f32[784]
    param  W1 : f32[784, 128] = he_normal
    param  b1 : f32[128]      = zeros
    param  W2 : f32[128, 10]  = he_normal
    h = relu(x @ W1 + b1)
    output logits = h @ W2
    loss cross_entropy(logits, lambda = 5.0)

Every error is a FeascompError located at file:line:col.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources

import lark

from ..errors import FeascompError, Loc, loc_in
from ..ir.tensor import Op, TensorModule, verify
from ..ir.types import DTYPES, TensorType

# DSL call name -> tensor op name. Adding an elementwise op here is all the front end needs.
FUNCTIONS = {"relu": "relu"}
# Layers and views: DSL name -> (number of operands or None for any, {keyword: default});
# a default of ... means the keyword is required. docs/language.md describes each.
STRUCTURAL = {
    "conv2d": (2, {"stride": 1, "padding": 0}),
    "max_pool": (1, {"size": ..., "stride": None}),
    "global_max_pool": (1, {}),
    "reduce_max": (1, {"axes": ...}),
    "reshape": (1, {"shape": ...}),
    "flatten": (1, {}),
    "transpose": (1, {"perm": ...}),
    "concat": (None, {"axis": -1}),
    "slice": (1, {"axis": 0, "start": 0, "stop": ..., "step": 1}),
    "embed": (2, {}),
}
# DSL keyword -> primitive option name (``lambda`` is reserved in Python).
OPTION_ALIASES = {"lambda": "lam"}
# How deeply expressions may nest (calls in calls, long chains of + or @): lowering walks
# them recursively, and a model this deep is a generated or broken file, not a network.
MAX_NESTING = 200


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files(__package__).joinpath("model.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def read_source(path: str) -> str:
    """Read a model file, turning every way it can be unreadable into a located error."""
    where = Loc(path)
    if not os.path.exists(path):
        raise FeascompError("no such file", where)
    if os.path.isdir(path):
        raise FeascompError("is a directory, not a model file", where)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise FeascompError(f"cannot read file: {e.strerror}", where) from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some Windows editors write
        data = data[3:]
    if b"\x00" in data:
        raise FeascompError("binary file (contains NUL bytes), not a model file", where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise FeascompError("file is not valid UTF-8", Loc(path, line, col)) from None
    if not text.strip():
        raise FeascompError("empty model file", Loc(path, 1, 1, ""))
    return text


def parse_file(path: str) -> TensorModule:
    return parse_model(read_source(path), path)


def parse_model(text: str, file: str = "<model>") -> TensorModule:
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    _check_nesting(tree, text, file)
    module = _Lower(text, file).module(tree)
    verify(module)
    return module


def _check_nesting(tree, text: str, file: str) -> None:
    """Refuse expressions nested deeper than MAX_NESTING (found without recursion)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            raise FeascompError(f"expression nested too deeply (more than {MAX_NESTING} levels of calls or operators)",
                                loc_in(file, text, getattr(meta, "line", 1), getattr(meta, "column", 1)))
        inner = depth + 1 if node.data in ("add", "matmul", "call") else depth
        stack.extend((c, inner) for c in node.children if isinstance(c, lark.Tree))


def _syntax_error(e, text, file) -> FeascompError:
    line, col = getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        lines = text.split("\n")
        here = lines[line - 1][col - 1 : col] if line <= len(lines) else ""
        msg = f"unexpected character {here!r}" if here else "unexpected character"
    elif isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            msg = "unexpected end of file"
        elif tok.type == "_NL":
            msg = "unexpected end of line"
        else:
            msg = f"unexpected {str(tok)!r}"
        expected = sorted(e.expected - {"_NL"})
        if expected and len(expected) <= 6:
            msg += f" (expected {', '.join(_pretty(t) for t in expected)})"
    else:
        msg = "syntax error"
    return FeascompError(f"syntax error: {msg}", loc_in(file, text, line, col))


def _pretty(term: str) -> str:
    names = {"NAME": "a name", "INT": "an integer", "SIGNED_NUMBER": "a number", "ESCAPED_STRING": "a string",
             "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "PLUS": "'+'",
             "LSQB": "'['", "RSQB": "']'", "__ANON_0": "'@'"}
    return names.get(term, term.lower())


def _literal(tok):
    if isinstance(tok, lark.Tree):  # intlist
        return [_literal(t) for t in tok.children if t is not None]
    if tok.type == "ESCAPED_STRING":
        return json.loads(tok)
    return float(tok) if any(c in tok for c in ".eE") else int(tok)


class Zero:
    """A value that is zero: a carry that starts at zero, at the steps where it still is."""

    def __init__(self, type: TensorType, carry: str):
        self.type, self.carry = type, carry


class Partial:
    """A concat along the last axis some of whose pieces are Zero: only a matmul reads it
    (on its other pieces and their rows of the matrix)."""

    def __init__(self, pieces: tuple, type: TensorType, carry: str):
        self.pieces, self.type, self.carry = pieces, type, carry


class _Lower:
    def __init__(self, text: str, file: str):
        self.text, self.file = text, file
        self.ops: list[Op] = []
        self.types: dict[str, TensorType] = {}
        self.decl: dict[str, Loc] = {}
        self.tmp = 0
        # recurrence (for blocks): names bound to another value (a carry, a step's value, a
        # value folded away: Zero, Partial); the loop being unrolled; names that live only
        # inside a for block (name -> the block's location)
        self.alias: dict[str, object] = {}
        self.loop: dict | None = None
        self.scoped: dict[str, Loc] = {}
        self.name = os.path.splitext(os.path.basename(file))[0] or "model"
        self.name = "".join(c if c.isalnum() or c == "_" else "_" for c in self.name)

    def loc(self, node) -> Loc:
        if isinstance(node, lark.Token):
            return loc_in(self.file, self.text, node.line, node.column)
        return loc_in(self.file, self.text, node.meta.line, node.meta.column)

    def err(self, msg, node, note=None):
        return FeascompError(msg, self.loc(node), note)

    def module(self, tree) -> TensorModule:
        for stmt in tree.children:
            if stmt is not None:
                getattr(self, stmt.data)(stmt)
        if not any(op.opname == "output" for op in self.ops):
            raise FeascompError("the model has no `output` statement", loc_in(self.file, self.text, 1, 1))
        if not any(op.opname == "loss" for op in self.ops):
            raise FeascompError("the model has no `loss` statement", loc_in(self.file, self.text, 1, 1))
        return TensorModule(self.name, tuple(self.ops))

    # statements -------------------------------------------------------------------------
    def model_decl(self, st):
        self.name = str(st.children[0])

    def _define(self, name_tok, ty: TensorType, op: Op):
        name = str(name_tok)
        final_carry = self.loop is not None and name in self.loop["carries"]  # its last step's value
        if name in self.types or (name in self.alias and not final_carry):
            prev = self.decl[name]
            raise self.err(f"{name!r} is already defined (at line {prev.line})", name_tok)
        self.types[name] = ty
        self.decl[name] = self.loc(name_tok)
        self.ops.append(op)

    def _type(self, node) -> TensorType:
        dt = str(node.children[0])
        if dt not in DTYPES:
            raise self.err(f"unknown element type {dt!r}; use one of {', '.join(DTYPES)}", node.children[0])
        dims = [d for d in node.children[1:] if d is not None]
        for d in dims:
            if int(d) <= 0:
                raise self.err("dimensions must be positive", d)
        return TensorType(dt, tuple(int(d) for d in dims))

    def input_decl(self, st):
        name, ty = st.children
        t = self._type(ty)
        self._define(name, t, Op("input", str(name), (), (), t, self.loc(st)))

    def param_decl(self, st):
        name, ty, init = (list(st.children) + [None])[:3]  # `= init` is optional
        t = self._type(ty)
        init_name = str(init) if init is not None else "zeros"
        from ..ir.tensor import INITIALIZERS

        if init_name not in INITIALIZERS:
            raise self.err(f"unknown initialiser {init_name!r}; use one of {', '.join(INITIALIZERS)}", init)
        self._define(name, t, Op("param", str(name), (), (("init", init_name),), t, self.loc(st)))

    def assign(self, st):
        name, expr = st.children
        if self.loop is not None:
            return self._step_assign(st)
        self._check_free(name)
        value = self.expr(expr, result=name)
        if value != str(name):  # folded to another value (a zero carry's terms dropped)
            self.alias[str(name)] = value
            self.decl[str(name)] = self.loc(name)

    def _check_free(self, name_tok):
        name = str(name_tok)
        if name in self.alias or name in self.types:
            raise self.err(f"{name!r} is already defined (at line {self.decl[name].line})", name_tok)

    # recurrence -----------------------------------------------------------------------------
    def for_block(self, st):
        """``for t in range(T) carry h : f32[H], acc = a0:`` ... ``end``: the body is lowered
        once per step (its names are the step's own: ``u`` of step 3 is ``u_t3``), carries
        pass from step to step (a typed carry without a value starts at zero, and the terms
        of a zero are dropped at the steps where it is zero), ``y[t] = v`` collects v along a
        new first axis. After the block the carries hold their last values and the
        collected names their stacks; the body's other names are gone."""
        var, rng, count, *rest = st.children
        carries = [c for c in rest if isinstance(c, lark.Tree) and c.data == "carry"]
        body = [c for c in rest if isinstance(c, lark.Tree) and c.data != "carry"]
        if self.loop is not None:
            raise self.err("for blocks do not nest; unroll the inner loop by hand or make it a carry", st)
        if str(rng) != "range":
            raise self.err(f"a for block runs over range(T), not {str(rng)}(...)", rng)
        if not isinstance(count, lark.Token) or count.type != "SIGNED_NUMBER" or not count.lstrip("+").isdigit() \
                or int(count) < 1:
            raise self.err("the number of steps T in range(T) must be a positive integer constant", count)
        steps = int(count)
        if str(var) in self.types or str(var) in self.alias:
            raise self.err(f"the loop variable {str(var)!r} is already defined (at line {self.decl[str(var)].line})", var)
        state: dict[str, object] = {}
        declared: dict[str, TensorType] = {}
        for c in carries:
            name, ty, init = c.children
            if str(name) in declared:
                raise self.err(f"carry {str(name)!r} is declared twice", name)
            self._check_free(name)
            t = self._type(ty) if ty is not None else None
            if init is None:
                if t is None:
                    raise self.err(f"carry {str(name)!r} needs a type (it then starts at zero: carry {name} : f32[16]) "
                                   f"or an initial value (carry {name} = h0)", name)
                state[str(name)] = Zero(t, str(name))
            else:
                value = self._lookup(init)
                vt = self._vtype(value)
                if t is not None and t != vt:
                    raise self.err(f"carry {str(name)!r} is declared {t} but starts as {str(init)!r} : {vt}", ty)
                state[str(name)] = value
            declared[str(name)] = self._vtype(state[str(name)])
            self.decl[str(name)] = self.loc(name)
        for b in body:
            if b.data not in ("assign", "collect"):
                raise self.err("a for block holds assignments (name = expr) and collections (name[t] = expr) only", b)
        assigned = {str(b.children[0]) for b in body if b.data == "assign"}
        collected: dict[str, list] = {}
        outer = dict(self.alias)
        for t in range(steps):
            self.loop = {"var": str(var), "t": t, "steps": steps, "carries": declared, "assigned": assigned,
                         "collected": collected}
            self.alias = {**outer, **state}
            local: set[str] = set()
            for b in body:
                if b.data == "assign":
                    name = str(b.children[0])
                    if name in local:
                        raise self.err(f"{name!r} is assigned twice in one step of the for block", b.children[0])
                    local.add(name)
                    self._step_assign(b)
                else:
                    self.collect(b)
            state = {c: self.alias[c] for c in declared}
            self.loop = None
        self.alias = {**outer, **state}
        for name in assigned - set(declared):
            self.scoped[name] = self.loc(st)
        for name, values in collected.items():
            rows = [self._emit("reshape", [v], st, attrs=(("shape", [1, *self._vtype(v).shape]),)) for v in values]
            where = self.decl.pop(name)
            self._emit("concat", rows, st, result=lark.Token("NAME", name, line=where.line, column=where.col),
                       attrs=(("axis", 0),))

    def _step_assign(self, st):
        name_tok, expr = st.children
        name, loop = str(name_tok), self.loop
        if name == loop["var"]:
            raise self.err(f"the loop variable {name!r} cannot be assigned", name_tok)
        if name not in loop["carries"] and (name in self.types or name in self.decl):
            raise self.err(f"{name!r} is already defined (at line {self.decl[name].line}); the names a for block "
                           "assigns are its own (or its carries)", name_tok)
        if isinstance(expr, lark.Token) or expr.data == "ref":
            value = self._lookup(expr if isinstance(expr, lark.Token) else expr.children[0])
        else:
            last = name in loop["carries"] and loop["t"] == loop["steps"] - 1  # a carry's last value: its name
            hint = lark.Token("NAME", name if last else f"{name}_t{loop['t']}", line=name_tok.line, column=name_tok.column)
            value = self.expr(expr, result=hint)
        if name in loop["carries"]:
            want, got = loop["carries"][name], self._vtype(value)
            if want != got:
                raise self.err(f"the carry {name!r} changes type: it is {want}, step {loop['t']} makes it {got}", name_tok)
        self.alias[name] = value

    def collect(self, st):
        name_tok, idx, expr = st.children
        name, loop = str(name_tok), self.loop
        if loop is None:
            raise self.err(f"{name}[{idx}] = ... collects a value per step: it belongs in a for block", st)
        if str(idx) != loop["var"]:
            raise self.err(f"a collection is indexed by the loop variable: {name}[{loop['var']}]", idx)
        if name in loop["carries"] or name in loop["assigned"] or \
                (name not in loop["collected"] and (name in self.types or name in self.alias or name in self.decl)):
            where = self.decl.get(name)
            raise self.err(f"{name!r} is already defined" + (f" (at line {where.line})" if where else "")
                           + "; a collected name must be new", name_tok)
        value = self.expr(expr)
        if isinstance(value, (Zero, Partial)):
            raise self.err(f"step {loop['t']} collects a value that is zero there (the carry {value.carry!r} starts at "
                           "zero); give the carry an initial value (carry h = h0)", expr)
        values = loop["collected"].setdefault(name, [])
        if values and self._vtype(values[0]) != self._vtype(value):
            raise self.err(f"{name}[{idx}] changes type: step 0 collects {self._vtype(values[0])}, step "
                           f"{loop['t']} {self._vtype(value)}", expr)
        values.append(value)
        self.decl.setdefault(name, self.loc(name_tok))

    def _vtype(self, value) -> TensorType:
        return value.type if isinstance(value, (Zero, Partial)) else self.types[value]

    def _lookup(self, tok):
        """The value a name stands for here: an alias (a carry, a step's value, a folded
        value), or the name itself."""
        name = str(tok)
        if name in self.alias:
            return self.alias[name]
        if name in self.types:
            return name
        loop = self.loop
        if loop is not None and name == loop["var"]:
            raise self.err(f"the loop variable {name!r} is a step index: use it to index a value (x[{name}])", tok)
        if loop is not None and name in loop["assigned"]:
            raise self.err(f"{name!r} is used before it is assigned in this step (each step has its own {name}); "
                           f"to read the previous step's, make it a carry", tok)
        if name in self.scoped:
            raise self.err(f"{name!r} exists only inside the for block at line {self.scoped[name].line} (each step has "
                           f"its own); carry it, or collect it ({name}[t] = ...), to use it after the block", tok)
        raise self.err(f"undefined name {name!r}", tok)

    def _index(self, node):
        """``x[t]`` (t the loop variable) or ``x[3]``: row t of x, its first axis dropped."""
        base, idx = node.children
        v = self.expr(base)
        if isinstance(idx, lark.Token) and idx.type == "INT":
            t = int(idx)
        elif self.loop is not None and str(idx) == self.loop["var"]:
            t = self.loop["t"]
        else:
            raise self.err(f"an index is an integer or the loop variable, not {str(idx)!r}", idx)
        vt = self._vtype(v)
        if vt.rank < 1 or not 0 <= t < vt.shape[0]:
            raise self.err(f"index {t} is outside the first axis of {vt}", idx)
        row = self._emit("slice", [v], node, attrs=(("axis", 0), ("start", t), ("stop", t + 1), ("step", 1)))
        return self._emit("reshape", [row], node, attrs=(("shape", list(vt.shape[1:]) or [1]),))

    # zeros: a carry that starts at zero, folded away ---------------------------------------
    def _fold(self, opname, operands, node, result, attrs):
        """``opname`` on operands some of which are zero (Zero) or concats holding zeros
        (Partial): the value without its zero terms -- relu and views of a zero are zero, a
        zero term of a sum is dropped, a zero times a matrix is zero, and a concat of a zero
        read by a matmul keeps the matmul on its other pieces and their rows of the matrix."""
        from ..ops import opdef

        ts = [self._vtype(v) for v in operands]
        t = opdef(opname).rule(Op(opname, None, (), tuple(attrs), None, None), ts)
        if isinstance(t, str):
            raise self.err(t, node)
        zero = next(v for v in operands if isinstance(v, (Zero, Partial)))
        if opname == "add":
            rest = [v for v in operands if not isinstance(v, Zero)]
            if not rest:
                return Zero(t, zero.carry)
            if len(rest) == 1 and not isinstance(rest[0], Partial) and self._vtype(rest[0]) == t:
                return rest[0]
        elif opname in ("relu", "reshape", "transpose", "slice") and isinstance(operands[0], Zero):
            return Zero(t, zero.carry)
        elif opname == "matmul" and any(isinstance(v, Zero) for v in operands):
            return Zero(t, zero.carry)
        elif opname == "matmul" and isinstance(operands[0], Partial) and isinstance(operands[1], str):
            part = operands[0]
            live = [(i, v) for i, v in enumerate(part.pieces) if not isinstance(v, Zero)]
            if [i for i, _ in live] == list(range(live[0][0], live[-1][0] + 1)):
                start = sum(self._vtype(v).shape[-1] for v in part.pieces[: live[0][0]])
                pieces = [v for _, v in live]
                width = sum(self._vtype(v).shape[-1] for v in pieces)
                lhs = pieces[0] if len(pieces) == 1 else self._emit("concat", pieces, node, attrs=(("axis", ts[0].rank - 1),))
                rows = operands[1]
                if width != ts[1].shape[0]:
                    rows = self._emit("slice", [rows], node, attrs=(("axis", 0), ("start", start), ("stop", start + width), ("step", 1)))
                return self._emit("matmul", [lhs, rows], node, result)
        elif opname == "concat" and not any(isinstance(v, Partial) for v in operands):
            if all(isinstance(v, Zero) for v in operands):
                return Zero(t, zero.carry)
            if dict(attrs).get("axis") == t.rank - 1:
                return Partial(tuple(operands), t, zero.carry)
        raise self.err(f"{opname} of a value that is zero at step {self.loop['t'] if self.loop else '?'} (the carry "
                       f"{zero.carry!r} starts at zero) is not folded: sums, relu, views, matmuls and a concat read by a "
                       f"matmul are; give the carry an initial value (carry {zero.carry} = h0)", node)

    def output_stmt(self, st):
        name, expr = (list(st.children) + [None])[:2]  # `output name` or `output name = expr`
        value = self.expr(expr, result=name) if expr is not None else self._lookup(name)
        if isinstance(value, (Zero, Partial)):
            raise self.err(f"the output is zero (the carry {value.carry!r} starts at zero and is never assigned)", name)
        self.ops.append(Op("output", None, (value,), (), None, self.loc(st)))

    def loss_stmt(self, st):
        kind, *args = st.children
        from ..primitives import get, names

        if str(kind) not in names("loss"):
            raise self.err(f"unknown loss {str(kind)!r}; available: {', '.join(names('loss'))}", kind)
        positional = [a for a in args if not (isinstance(a, lark.Tree) and a.data == "kwarg")]
        kwargs = [a for a in args if isinstance(a, lark.Tree) and a.data == "kwarg"]
        if len(positional) != 1:
            raise self.err(f"{kind} takes one positional argument (the logits), got {len(positional)}", kind)
        value = self.expr(positional[0])
        outs = [op.operands[0] for op in self.ops if op.opname == "output"]
        if not outs:
            raise self.err("the loss must come after the `output` statement", st)
        if value != outs[0]:
            raise self.err(f"the loss must be applied to the output {outs[0]!r}", positional[0])
        attrs = [("kind", str(kind))]
        for kw in kwargs:
            key, val = kw.children
            opt = OPTION_ALIASES.get(str(key), str(key))
            v = _literal(val)
            attrs.append((opt, float(v) if isinstance(v, int) and opt == "lam" else v))
            try:  # each option's name and type, at its keyword
                get(str(kind), **{opt: attrs[-1][1]})
            except ValueError as e:
                raise self.err(str(e), kw) from None
        try:
            prim = get(str(kind), **dict(attrs[1:]))
        except ValueError as e:
            raise self.err(str(e), kwargs[0] if kwargs else kind) from None
        if prim.opts.get("lam", 1.0) <= 0:
            raise self.err("lambda must be positive", kwargs[0] if kwargs else kind)
        self.ops.append(Op("loss", None, (value,), tuple(attrs), None, self.loc(st)))

    # expressions --------------------------------------------------------------------------
    def _fresh(self) -> str:
        while str(self.tmp) in self.types:
            self.tmp += 1
        name = str(self.tmp)
        self.tmp += 1
        return name

    def _emit(self, opname, operands, node, result=None, attrs=()) -> str:
        from ..ops import opdef

        if any(isinstance(v, (Zero, Partial)) for v in operands):
            return self._fold(opname, operands, node, result, attrs)
        ts = [self.types[v] for v in operands]
        op = Op(opname, None, tuple(operands), tuple(attrs), None, self.loc(node))
        t = opdef(opname).rule(op, ts)
        if isinstance(t, str):
            raise self.err(t, node)
        if result is None:
            name = self._fresh()
            self.types[name] = t
            self.decl[name] = self.loc(node)
            self.ops.append(Op(opname, name, tuple(operands), tuple(attrs), t, self.loc(node)))
            return name
        self._define(result, t, Op(opname, str(result), tuple(operands), tuple(attrs), t, self.loc(node)))
        return str(result)

    def expr(self, node, result=None) -> str:
        if isinstance(node, lark.Token) or node.data == "ref":
            tok = node if isinstance(node, lark.Token) else node.children[0]
            value = self._lookup(tok)
            if result is not None:
                raise self.err(f"`{result} = {tok}` only renames a value; use {str(tok)!r} directly", node)
            return value
        if node.data == "index":
            return self._index(node)
        if node.data in ("add", "matmul"):
            a = self.expr(node.children[0])
            b = self.expr(node.children[1])
            return self._emit(node.data, [a, b], node, result)
        if node.data == "call":
            from ..ops import primitive_op
            from ..primitives import names

            fn, *args = node.children
            args = [a for a in args if a is not None]
            name = str(fn)
            positional = [a for a in args if not (isinstance(a, lark.Tree) and a.data == "kwarg")]
            kwargs = [a for a in args if isinstance(a, lark.Tree) and a.data == "kwarg"]
            if name in STRUCTURAL:
                return self._structural(name, positional, kwargs, node, result)
            if name in FUNCTIONS:
                if kwargs or len(positional) != 1:
                    raise self.err(f"{fn} takes exactly one argument", fn)
                return self._emit(FUNCTIONS[name], [self.expr(positional[0])], node, result)
            if primitive_op(name) is None:
                available = sorted(set(FUNCTIONS) | set(STRUCTURAL) | set(names("function")))
                raise self.err(f"unknown function {name!r}; available: {', '.join(available)}", fn)
            operands = [self.expr(a) for a in positional]
            attrs = tuple((OPTION_ALIASES.get(str(k.children[0]), str(k.children[0])), _literal(k.children[1])) for k in kwargs)
            for kw, (key, value) in zip(kwargs, attrs):  # each option's name and type, at its keyword
                try:
                    primitive_op(name).with_options(**{key: value})
                except ValueError as e:
                    raise self.err(str(e), kw) from None
            return self._emit(name, operands, node, result, attrs)
        if node.data == "kwarg":
            raise self.err("a keyword argument is only allowed in a call", node)
        raise self.err(f"unsupported expression {node.data}", node)

    # layers and views -----------------------------------------------------------------------
    def _structural(self, name, positional, kwargs, node, result):
        arity, defaults = STRUCTURAL[name]
        fn = node.children[0]
        if arity is not None and len(positional) != arity:
            raise self.err(f"{name} takes {arity} positional argument(s), got {len(positional)}", fn)
        if arity is None and not positional:
            raise self.err(f"{name} needs at least one operand", fn)
        got, where = {}, {}
        for kw in kwargs:
            key = str(kw.children[0])
            if key not in defaults:
                known = ", ".join(defaults) or "none"
                raise self.err(f"{name} has no keyword {key!r} (keywords: {known})", kw)
            got[key], where[key] = _literal(kw.children[1]), kw.children[1]
        opts = {k: got.get(k, v) for k, v in defaults.items()}
        for k, v in opts.items():
            if v is ...:
                raise self.err(f"{name} needs the keyword {k!r}", fn)
        operands = [self.expr(a) for a in positional]
        ts = [self._vtype(v) for v in operands]

        def bad(key, msg):
            return self.err(msg, where.get(key, fn))

        def ints(key, n=None):
            v = opts[key]
            v = [v] if isinstance(v, int) and n else v
            if not isinstance(v, list) or not all(isinstance(a, int) for a in v):
                raise bad(key, f"{name}: {key} must be {'an integer or ' if n else ''}a list of integers")
            if n and len(v) == 1:
                v = v * n
            if n and len(v) != n:
                raise bad(key, f"{name}: {key} needs {n} integers, got {len(v)}")
            return v

        def axis(key, rank):
            v = opts[key]
            if not isinstance(v, int) or not -rank <= v < rank:
                raise bad(key, f"{name}: {key} must be an axis of a rank-{rank} value, got {v!r}")
            return v % rank

        if name == "conv2d":
            stride = ints("stride", 2)
            k = ts[1].shape[:2] if ts[1].rank == 4 else (1, 1)
            padding = self._padding(opts["padding"], k, stride, ts[0], where.get("padding", fn), name)
            return self._emit("conv2d", operands, node, result, (("stride", stride), ("padding", padding)))
        if name == "max_pool":
            size = ints("size", 2)
            stride = ints("stride", 2) if opts["stride"] is not None else size
            return self._emit("max_pool", operands, node, result, (("window", size), ("stride", stride)))
        if name == "global_max_pool":
            if ts[0].rank != 3:
                raise self.err(f"global_max_pool needs a [height, width, channels] value, got {ts[0]}", positional[0])
            return self._emit("reduce_max", operands, node, result, (("axes", [0, 1]),))
        if name == "reduce_max":
            axes = [a % ts[0].rank if -ts[0].rank <= a < ts[0].rank else a for a in ints("axes")]
            return self._emit("reduce_max", operands, node, result, (("axes", axes),))
        if name == "reshape":
            return self._emit("reshape", operands, node, result, (("shape", ints("shape")),))
        if name == "flatten":
            return self._emit("reshape", operands, node, result, (("shape", [ts[0].size]),))
        if name == "transpose":
            return self._emit("transpose", operands, node, result, (("perm", ints("perm")),))
        if name == "concat":
            return self._emit("concat", operands, node, result, (("axis", axis("axis", ts[0].rank)),))
        if name == "slice":
            ax = axis("axis", ts[0].rank)
            n = ts[0].shape[ax]
            bounds = []
            for key in ("start", "stop"):
                v = opts[key]
                if not isinstance(v, int):
                    raise bad(key, f"slice: {key} must be an integer")
                bounds.append(v + n if v < 0 else v)
            step = opts["step"]
            if not isinstance(step, int) or step < 1:
                raise bad("step", "slice: step must be a positive integer")
            return self._emit("slice", operands, node, result,
                              (("axis", ax), ("start", bounds[0]), ("stop", bounds[1]), ("step", step)))
        if name == "embed":
            return self._emit("embed", operands, node, result)
        raise AssertionError(name)

    def _padding(self, v, k, stride, x, where, name):
        """[top, bottom, left, right] from an integer, a list of 2 or 4, "valid" or "same"."""
        if v == "valid":
            return [0, 0, 0, 0]
        if v == "same":
            if x.rank != 3:
                return [0, 0, 0, 0]  # the type rule reports the input
            pads = []
            for size, kk, s in zip(x.shape[:2], k, stride):
                out = -(-size // s)
                total = max((out - 1) * s + kk - size, 0)
                pads += [total // 2, total - total // 2]
            return pads
        if isinstance(v, int):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(a, int) and a >= 0 for a in v) or len(v) not in (1, 2, 4):
            raise self.err(f'{name}: padding must be "same", "valid", or 1, 2 or 4 non-negative integers', where)
        if len(v) == 1:
            return v * 4
        if len(v) == 2:
            return [v[0], v[0], v[1], v[1]]
        return list(v)
