"""The jaxpr front end: a plain JAX function ``fn(params, x)`` -> tensor IR.

The function is traced with ``jax.make_jaxpr`` on **one sample** (per-sample semantics, as
under ``jax.vmap``); the compiler adds the batch axis. Parameters may be any pytree; each
leaf becomes a ``param`` named after its path (``{"W1": ...}`` -> ``W1``,
``{"params": {"Dense_0": {"kernel": ...}}}`` -> ``params_Dense_0_kernel``).

Supported primitives (anything else is refused by name, with the user's source line):
dot_general (a vector or matrix times a matrix contracted on its first axis: ``x @ W``,
``jnp.dot``, ``jnp.einsum("i,ij->j")``), add / add_any, sub, mul and div by constants,
max (``max(x, 0)`` is relu; ``jax.nn.relu``'s custom_jvp_call is inlined), neg,
convert_element_type and copy (aliases), and nested jit / pjit / closed_call /
core_call bodies (inlined); reshape, squeeze, expand_dims, broadcast_in_dim, transpose,
slice, dynamic_slice, concatenate, reduce_max, reduce_window_max, conv_general_dilated;
gather as an embedding lookup when the input is integer token ids (``table[ids]``,
``jnp.take(table, ids, axis=0)``, ``flax.linen.Embed``, with jnp's negative-index wrap).
Types come from ``jax.extend.core``.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import FeascompError, Loc
from ..ir.tensor import Op, TensorModule, verify
from ..ir.types import TensorType

CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint"}
STRUCTURAL = {"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose", "slice", "dynamic_slice",
              "concatenate", "reduce_max", "conv_general_dilated", "reduce_window_max"}
SUPPORTED = sorted({"dot_general", "add", "add_any", "sub", "mul", "div", "max", "neg", "convert_element_type", "copy",
                    "copy_p", "gather", "scan"} | CALLS | STRUCTURAL)
DTYPE_NAMES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.int32): "i32",
               np.dtype(np.int64): "i32"}
INDEX_PRIMS = {"lt", "add", "select_n", "broadcast_in_dim", "reshape", "expand_dims", "squeeze", "convert_element_type",
               "copy", "copy_p", "gather"}


def param_names(params) -> tuple[list[str], object]:
    """Names for the leaves of a parameter pytree, and its treedef."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = []
    for path, _ in leaves:
        raw = "_".join(re.sub(r"[^A-Za-z0-9_]", "", str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))) for k in path)
        name = raw or "param"
        if name[0].isdigit():
            name = "p" + name
        while name in names:
            name += "_"
        names.append(name)
    return names, treedef


def _ttype(aval) -> TensorType:
    dt = DTYPE_NAMES.get(np.dtype(aval.dtype))
    if dt is None:
        raise FeascompError(f"values of dtype {aval.dtype} are not supported; use float32 or float64")
    return TensorType(dt, tuple(int(d) for d in aval.shape))


def _loc(eqn) -> Loc | None:
    try:
        from jax.extend.source_info_util import summarize

        text = summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - source info is best effort
        return None
    m = re.match(r"(.*):(\d+):(\d+)", text or "")
    if not m:
        return None
    file, line, col = m.group(1), int(m.group(2)), int(m.group(3)) + 1
    src = None
    try:
        with open(file) as fh:
            lines = fh.read().splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else None
    except OSError:
        pass
    return Loc(file, line, col, src)


def trace(fn, params, example_input, *, loss: str = "cross_entropy", loss_options: dict | None = None,
          in_axes="auto", name: str | None = None) -> tuple[TensorModule, list[str], object]:
    """Trace ``fn(params, x)`` to tensor IR. Returns (module, parameter names, treedef).

    ``in_axes``: ``None`` -- example_input is one sample; ``0`` -- it is a batch (leading
    axis); ``"auto"`` (default) -- call fn on it: a 1-D output means one sample, a 2-D output
    whose leading axis equals the input's means a batch (for a 1-D input, only if fn also
    takes one element of it: else it is a sequence model's [T, classes] logits of one
    sample of T token ids; a sequence of feature rows needs in_axes=None); if fn cannot take
    it at all but
    takes its first row, it is a batch for a per-sample fn.
    """
    import jax

    x = np.asarray(example_input)
    if in_axes == "auto":
        try:
            out = jax.eval_shape(fn, params, jax.ShapeDtypeStruct(x.shape, x.dtype))
        except Exception:  # noqa: BLE001 - a per-sample function handed a batch
            if x.ndim < 1:
                raise
            jax.eval_shape(fn, params, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
            out = None
        out_shape = getattr(out, "shape", None) if out is not None else ()
        if out_shape is None:
            raise FeascompError("the model function must return one array of logits")
        def takes_a_row():  # a batch-written model takes one of its samples too; a sequence model's
            try:              # [T, classes] logits per [T] sample do not come from a row of it
                jax.eval_shape(fn, params, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
                return True
            except Exception:  # noqa: BLE001 - any failure of the call on a row
                return False

        in_axes = 0 if out is None or (len(out_shape) == 2 and x.ndim >= 1 and out_shape[0] == x.shape[0]
                                       and (x.ndim > 1 or takes_a_row())) else None
    if in_axes == 0:
        x = x[0]
    elif in_axes is not None:
        raise FeascompError(f"in_axes must be None, 0 or 'auto', not {in_axes!r}")
    names, treedef = param_names(params)
    leaves = jax.tree_util.tree_leaves(params)
    def batch_of_one(p, v):
        return fn(p, v[None])[0]

    per_sample = fn
    if in_axes == 0:
        # A function written for batches is traced on one sample; if it cannot take one
        # (lax.conv_general_dilated needs a batch axis), on a batch of one: fn(p, x[None])[0].
        try:
            jax.eval_shape(fn, params, jax.ShapeDtypeStruct(x.shape, x.dtype))
        except Exception:  # noqa: BLE001 - any failure of the per-sample call
            per_sample = batch_of_one
    closed = jax.make_jaxpr(lambda leaves, x: per_sample(jax.tree_util.tree_unflatten(treedef, leaves), x))(leaves, x)
    builder = _Builder()
    env = {}
    jaxpr = closed.jaxpr
    for v, n, leaf in zip(jaxpr.invars[: len(leaves)], names, leaves):
        t = _ttype(v.aval)
        builder.ops.append(Op("param", n, (), (("init", "zeros"),), t))
        env[v] = n
    xin = jaxpr.invars[len(leaves)]
    builder.ops.append(Op("input", "x", (), (), _ttype(xin.aval)))
    env[xin] = _Index("x", tuple(xin.aval.shape)) if np.issubdtype(xin.aval.dtype, np.integer) else "x"
    builder.used = set(names) | {"x"}
    builder.input_shape = tuple(xin.aval.shape)
    for cv, cval in zip(jaxpr.constvars, closed.consts):
        env[cv] = _Const(np.asarray(cval))
    builder.inline(jaxpr, env)
    if len(jaxpr.outvars) != 1:
        raise FeascompError(f"the model function must return one array of logits, it returns {len(jaxpr.outvars)}")
    out = builder.read(env, jaxpr.outvars[0], None)
    if isinstance(out, _Const):
        raise FeascompError("the model's output does not depend on its input or parameters")
    oval = jaxpr.outvars[0].aval
    if len(oval.shape) == 2 and oval.shape[0] == 1:  # a batch-written model on a batch of one
        out = builder.emit("reshape", [out], oval.update(shape=oval.shape[1:]), None, (("shape", [oval.shape[1]]),))
    builder.ops.append(Op("output", None, (out,), (), None))
    builder.ops.append(Op("loss", None, (out,), (("kind", loss),) + tuple((loss_options or {}).items()), None))
    module = TensorModule(name or getattr(fn, "__name__", "model").replace("<", "").replace(">", "") or "model", tuple(builder.ops))
    verify(module)
    return module, names, treedef


class _Const:
    """A compile-time constant (a jaxpr literal or closed-over value)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def scalar(self):
        if self.value.size != 1:
            return None
        return float(self.value.reshape(()))


class _Partial:
    """A concatenate some of whose pieces are zero constants (a carry that starts as
    zeros): only ``x @ W`` reads it. ``pieces``: (value, aval) per operand."""

    def __init__(self, pieces, aval):
        self.pieces, self.aval = pieces, aval


class _Index:
    """Integer token ids derived from the integer input: the input itself (as ``shape``, a
    reshape of it), ``neg`` (ids < 0) or ``shift`` (ids + a constant) on the way to
    ``where(ids < 0, ids + rows, ids)`` -- jnp's wrap of negative indices, a no-op for the
    in-range ids the solver admits."""

    def __init__(self, name, shape, form="ids"):
        self.name, self.shape, self.form = name, tuple(shape), form


class _Builder:
    def __init__(self):
        self.ops: list[Op] = []
        self.types: dict[str, TensorType] = {}
        self.used: set[str] = set()
        self.counter = 0

    def fresh(self) -> str:
        while str(self.counter) in self.used:
            self.counter += 1
        self.used.add(str(self.counter))
        return str(self.counter)

    def read(self, env, v, eqn):
        from jax.extend.core import Literal

        if isinstance(v, Literal):
            return _Const(v.val)
        return env[v]

    def emit(self, opname, operands, aval, eqn, attrs=()) -> str:
        name = self.fresh()
        self.ops.append(Op(opname, name, tuple(operands), tuple(attrs), _ttype(aval), _loc(eqn)))
        return name

    def conv(self, eqn, ins, aval):
        """conv_general_dilated on a batch of one (the per-sample trace gives N = 1): brought
        to NHWC / HWIO by transposes, lowered to conv2d, brought back to the output layout."""
        p = eqn.params
        lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
        dn = p["dimension_numbers"]
        lspec, rspec, ospec = tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)
        if len(lspec) != 4:
            self.refuse(eqn, "conv_general_dilated is supported in 2-D only")
        if any(d != 1 for d in tuple(p["lhs_dilation"]) + tuple(p["rhs_dilation"])) or p["feature_group_count"] != 1 \
                or p["batch_group_count"] != 1:
            self.refuse(eqn, "conv_general_dilated is supported without dilation or feature/batch groups")
        if lhs.shape[lspec[0]] != 1:
            self.refuse(eqn, f"conv_general_dilated must see one sample (batch axis of length 1), got {lhs.shape}; "
                        "write the model per sample, or let feascomp trace it as fn(params, x[None])[0]")
        x, k = ins
        nhwc = (lspec[0], lspec[2], lspec[3], lspec[1])
        if nhwc != (0, 1, 2, 3):
            x = self.emit("transpose", [x], lhs.update(shape=tuple(lhs.shape[a] for a in nhwc)), eqn, (("perm", list(nhwc)),))
        h, w, c = (lhs.shape[a] for a in nhwc[1:])
        x = self.emit("reshape", [x], lhs.update(shape=(h, w, c)), eqn, (("shape", [h, w, c]),))
        hwio = (rspec[2], rspec[3], rspec[1], rspec[0])
        if hwio != (0, 1, 2, 3):
            k = self.emit("transpose", [k], rhs.update(shape=tuple(rhs.shape[a] for a in hwio)), eqn, (("perm", list(hwio)),))
        (pt, pb), (pl, pr) = p["padding"]
        if min(pt, pb, pl, pr) < 0:
            self.refuse(eqn, "conv_general_dilated with negative padding is not supported")
        co = rhs.shape[rspec[0]]
        ho, wo = aval.shape[ospec[2]], aval.shape[ospec[3]]
        y = self.emit("conv2d", [x, k], aval.update(shape=(ho, wo, co)), eqn,
                      (("stride", [int(a) for a in p["window_strides"]]), ("padding", [int(pt), int(pb), int(pl), int(pr)])))
        y = self.emit("reshape", [y], aval.update(shape=(1, ho, wo, co)), eqn, (("shape", [1, ho, wo, co]),))
        canon = (ospec[0], ospec[2], ospec[3], ospec[1])  # output axis of canonical N, H, W, C
        perm = [canon.index(d) for d in range(4)]
        if perm != [0, 1, 2, 3]:
            y = self.emit("transpose", [y], aval, eqn, (("perm", perm),))
        return y

    def pool(self, eqn, ins, aval):
        """reduce_window_max (windowed max-pool) over at most two axes, no padding or dilation:
        the pooled axes brought to the front, the rest merged into channels, max_pool."""
        p = eqn.params
        src = eqn.invars[0].aval
        win, strides = tuple(p["window_dimensions"]), tuple(p["window_strides"])
        if any(tuple(pad) != (0, 0) for pad in p["padding"]) or any(d != 1 for d in tuple(p["base_dilation"]) + tuple(p["window_dilation"])):
            self.refuse(eqn, "reduce_window_max (max-pooling) is supported without padding or dilation")
        pooled = [a for a in range(src.ndim) if (win[a], strides[a]) != (1, 1)]
        if len(pooled) > 2 or src.ndim < 2:
            self.refuse(eqn, "reduce_window_max is supported over at most two axes")
        pooled += [a for a in range(src.ndim) if a not in pooled][: 2 - len(pooled)]
        pooled = sorted(pooled)
        rest = [a for a in range(src.ndim) if a not in pooled]
        perm = pooled + rest
        v = ins[0]
        if perm != list(range(src.ndim)):
            v = self.emit("transpose", [v], src.update(shape=tuple(src.shape[a] for a in perm)), eqn, (("perm", perm),))
        h, w = (src.shape[a] for a in pooled)
        c = int(np.prod([src.shape[a] for a in rest])) if rest else 1
        v = self.emit("reshape", [v], src.update(shape=(h, w, c)), eqn, (("shape", [h, w, c]),))
        ho, wo = (aval.shape[a] for a in pooled)
        v = self.emit("max_pool", [v], aval.update(shape=(ho, wo, c)), eqn,
                      (("window", [int(win[a]) for a in pooled]), ("stride", [int(strides[a]) for a in pooled])))
        mid = (ho, wo) + tuple(src.shape[a] for a in rest)
        v = self.emit("reshape", [v], aval.update(shape=mid), eqn, (("shape", list(mid)),))
        back = [perm.index(a) for a in range(src.ndim)]
        if back != list(range(src.ndim)):
            v = self.emit("transpose", [v], aval, eqn, (("perm", back),))
        return v

    def scan(self, eqn, ins, env):
        """``lax.scan`` unrolled: the body inlined once per step, its carries passed on, each
        scanned input's row t read as ``slice`` + ``reshape`` (as the .fc language's
        ``x[t]``), each per-step output stacked along a new first axis (a concat of the
        steps' rows). A carry that starts as zeros (``jnp.zeros``) is folded away at the steps
        where it is still zero, as the .fc language's ``carry h : f32[H]`` is."""
        p = eqn.params
        if p.get("reverse"):
            self.refuse(eqn, "lax.scan with reverse=True is not supported")
        closed = p["jaxpr"]
        inner = getattr(closed, "jaxpr", closed)
        nc, nk, steps = int(p["num_consts"]), int(p["num_carry"]), int(p["length"])
        consts, carry, xs = ins[:nc], list(ins[nc : nc + nk]), ins[nc + nk :]
        if any(isinstance(x, _Index) for x in xs):
            self.refuse(eqn, "lax.scan over token ids is not supported; scan over their embedding rows (E[ids])")
        ys = []
        for t in range(steps):
            rows = [self.row(x, t, v.aval, eqn) for x, v in zip(xs, eqn.invars[nc + nk :])]
            sub = {cv: _Const(np.asarray(c)) for cv, c in zip(inner.constvars, getattr(closed, "consts", []))}
            sub.update(zip(inner.invars, list(consts) + carry + rows))
            self.inline(inner, sub)
            outs = [self.read(sub, o, eqn) for o in inner.outvars]
            carry = outs[:nk]
            ys.append(outs[nk:])
        for o, c in zip(eqn.outvars[:nk], carry):
            env[o] = c
        for k, o in enumerate(eqn.outvars[nk:]):
            steps_k = [y[k] for y in ys]
            if all(isinstance(y, _Const) for y in steps_k):
                env[o] = _Const(np.stack([y.value for y in steps_k]))
                continue
            if any(not isinstance(y, str) for y in steps_k):
                self.refuse(eqn, "a lax.scan output that is constant at some steps (a zero carry read out before it "
                            "is assigned) is not supported")
            row = o.aval.update(shape=(1,) + tuple(o.aval.shape[1:]))
            pieces = [self.emit("reshape", [y], row, eqn, (("shape", list(row.shape)),)) for y in steps_k]
            env[o] = self.emit("concat", pieces, o.aval, eqn, (("axis", 0),))

    def row(self, x, t, aval, eqn):
        """Row t of a scanned input (its first axis dropped)."""
        if isinstance(x, _Const):
            return _Const(x.value[t])
        one = aval.update(shape=(1,) + tuple(aval.shape[1:]))
        v = self.emit("slice", [x], one, eqn, (("axis", 0), ("start", t), ("stop", t + 1), ("step", 1)))
        rest = tuple(aval.shape[1:]) or (1,)
        return self.emit("reshape", [v], aval.update(shape=rest), eqn, (("shape", list(rest)),))

    def fold_zeros(self, eqn, prim, ins, aval):
        """An equation on a zero constant (a carry that starts as zeros) that folds away:
        a zero term of a sum is dropped, a zero times a matrix is zero, and a concat holding
        zeros stays a :class:`_Partial` until a matmul reads it (on its other pieces and
        their rows of the matrix). None: nothing to fold."""
        zero = [isinstance(a, _Const) and a.value.ndim > 0 and not a.value.any() for a in ins]
        if prim == "concatenate" and any(isinstance(a, _Partial) for a in ins):
            self.refuse(eqn, "a concatenate of a concatenate holding a zero carry is not supported")
        if prim == "concatenate" and any(zero):
            if any(isinstance(a, _Const) and not z for a, z in zip(ins, zero)):
                return None
            if int(eqn.params["dimension"]) != len(aval.shape) - 1:
                self.refuse(eqn, "a concatenate of a zero carry is supported along the last axis (read by x @ W)")
            return _Partial([(a, v.aval) for a, v in zip(ins, eqn.invars)], aval)
        if prim == "dot_general" and isinstance(ins[0], _Partial) and isinstance(ins[1], str):
            part = ins[0]
            live = [i for i, (a, _) in enumerate(part.pieces) if not isinstance(a, _Const)]
            if live != list(range(live[0], live[-1] + 1)):
                self.refuse(eqn, "a concatenate whose zero pieces (a zero carry) split its other pieces is not supported")
            start = sum(av.shape[-1] for _, av in part.pieces[: live[0]])
            pieces = [part.pieces[i] for i in live]
            width = sum(av.shape[-1] for _, av in pieces)
            lhs = pieces[0][0]
            if len(pieces) > 1:
                lhs = self.emit("concat", [a for a, _ in pieces], aval.update(shape=part.aval.shape[:-1] + (width,)), eqn,
                                (("axis", len(part.aval.shape) - 1),))
            w, wav = ins[1], eqn.invars[1].aval
            if width != wav.shape[0]:
                w = self.emit("slice", [w], wav.update(shape=(width,) + tuple(wav.shape[1:])), eqn,
                              (("axis", 0), ("start", start), ("stop", start + width), ("step", 1)))
            return self.emit("matmul", [lhs, w], aval, eqn)
        if any(isinstance(a, _Partial) for a in ins):
            self.refuse(eqn, f"{prim} of a concatenate holding a zero carry is not supported (only x @ W reads one)")
        if prim == "dot_general" and any(zero):
            return _Const(np.zeros(aval.shape, aval.dtype))
        if prim in ("add", "add_any") and any(zero):
            other = ins[1] if zero[0] else ins[0]
            if isinstance(other, str) and tuple(eqn.invars[1 if zero[0] else 0].aval.shape) == tuple(aval.shape):
                return other
        return None

    def refuse(self, eqn, why=None):
        what = why or f"JAX primitive {eqn.primitive.name!r} is not supported"
        raise FeascompError(what, _loc(eqn), note=f"supported: {', '.join(SUPPORTED)}")

    def inline(self, jaxpr, env):
        for eqn in jaxpr.eqns:
            prim = eqn.primitive.name
            ins = [self.read(env, v, eqn) for v in eqn.invars]
            outs = eqn.outvars
            if prim in CALLS:
                sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
                if sub is None:
                    self.refuse(eqn)
                inner = getattr(sub, "jaxpr", sub)
                consts = getattr(sub, "consts", [])
                sub_env = {}
                for cv, c in zip(inner.constvars, consts):
                    sub_env[cv] = _Const(np.asarray(c))
                for iv, val in zip(inner.invars, ins):
                    sub_env[iv] = val
                self.inline(inner, sub_env)
                for o, io in zip(outs, inner.outvars):
                    env[o] = self.read(sub_env, io, eqn)
                continue
            if prim == "scan":
                self.scan(eqn, ins, env)
                continue
            if len(outs) != 1:
                self.refuse(eqn)
            env[outs[0]] = self.lower(eqn, prim, ins, outs[0].aval)

    def index(self, eqn, prim, ins, aval):
        """An equation on token ids: the steps of an embedding lookup (``E[ids]``,
        ``jnp.take(E, ids, axis=0)``, ``flax.linen.Embed``), ending in a gather of the
        table's rows. Anything else computed from the ids is refused."""
        idx = [a for a in ins if isinstance(a, _Index)]
        i = idx[0]
        why = ("integer inputs are supported only as token ids of an embedding lookup (table[ids], "
               f"jnp.take(table, ids, axis=0)); got {prim}")
        if prim not in INDEX_PRIMS:
            self.refuse(eqn, why)
        if prim in ("convert_element_type", "copy", "copy_p") and i.form == "ids" and np.issubdtype(aval.dtype, np.integer):
            return i
        if prim == "lt" and i.form == "ids" and isinstance(ins[1], _Const) and ins[1].scalar() == 0:
            return _Index(i.name, i.shape, "neg")
        if prim == "add" and i.form == "ids" and any(isinstance(a, _Const) and a.scalar() is not None for a in ins):
            return _Index(i.name, i.shape, "shift")
        if prim == "select_n" and len(ins) == 3 and all(isinstance(a, _Index) for a in ins):
            pred, a, b = ins
            if pred.form == "neg" and a.form == "ids" and b.form == "shift" and len({pred.name, a.name, b.name}) == 1:
                return a
        if prim in ("broadcast_in_dim", "reshape", "expand_dims", "squeeze") and i.form == "ids" \
                and int(np.prod(aval.shape)) == int(np.prod(i.shape)):
            return _Index(i.name, aval.shape)
        if prim == "gather" and ins[1] is i and i.form == "ids" and isinstance(ins[0], str):
            table = eqn.invars[0].aval
            dn = eqn.params["dimension_numbers"]
            lead = i.shape[:-1]
            ok = (i.shape[-1:] == (1,) and tuple(dn.offset_dims) == tuple(range(len(lead), len(lead) + table.ndim - 1))
                  and tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
                  and not tuple(getattr(dn, "operand_batching_dims", ())) and tuple(eqn.params["slice_sizes"]) == (1,) + tuple(table.shape[1:]))
            if ok:
                x = self.input_shape
                rows = self.emit("embed", [i.name, ins[0]], aval.update(shape=x + tuple(table.shape[1:])), eqn)
                if x != lead:
                    rows = self.emit("reshape", [rows], aval, eqn, (("shape", list(aval.shape)),))
                return rows
            self.refuse(eqn, "gather is supported as an embedding lookup (rows of a table at token ids: table[ids], "
                        "jnp.take(table, ids, axis=0))")
        self.refuse(eqn, why)

    def lower(self, eqn, prim, ins, aval):
        if any(isinstance(a, _Index) for a in ins):
            return self.index(eqn, prim, ins, aval)
        consts = [isinstance(a, _Const) for a in ins]
        if all(consts) and ins:  # folded here (jnp.zeros, a zero carry through relu or a slice)
            try:
                return _Const(np.asarray(eqn.primitive.bind(*(a.value for a in ins), **eqn.params)))
            except Exception:  # noqa: BLE001 - a primitive that cannot run on constants here
                self.refuse(eqn, f"{prim} of constants only is not supported (fold it outside the model)")
        if any(consts) or any(isinstance(a, _Partial) for a in ins):
            folded = self.fold_zeros(eqn, prim, ins, aval)
            if folded is not None:
                return folded
        if prim in ("convert_element_type", "copy", "copy_p"):
            return ins[0]
        if prim == "dot_general":
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
            if any(consts) or lb or rb or tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or rhs.ndim != 2:
                self.refuse(eqn, "dot_general is supported as x @ W (contract x's last axis with W's first, W a matrix, "
                            f"no batch axes); got contracting {tuple(lc)}, {tuple(rc)} on {lhs.shape} and {rhs.shape}")
            return self.emit("matmul", ins, aval, eqn)
        if prim in ("add", "add_any", "sub"):
            if any(consts):
                c = (ins[0] if consts[0] else ins[1]).scalar()
                v = ins[1] if consts[0] else ins[0]
                if c is None:
                    self.refuse(eqn, f"{prim} with a non-scalar constant is not supported")
                if prim == "sub" and consts[0]:  # c - v
                    return self.emit("affine", [v], aval, eqn, (("scale", -1.0), ("shift", c)))
                return self.emit("affine", [v], aval, eqn, (("scale", 1.0), ("shift", -c if prim == "sub" else c)))
            a, b = ins
            if prim == "sub":
                b = self.emit("affine", [b], eqn.invars[1].aval, eqn, (("scale", -1.0), ("shift", 0.0)))
            return self.emit("add", [a, b], aval, eqn)
        if prim == "neg":
            return self.emit("affine", ins, aval, eqn, (("scale", -1.0), ("shift", 0.0)))
        if prim in ("mul", "div"):
            if not any(consts) or (prim == "div" and consts[0]):
                self.refuse(eqn, f"{prim} is supported only by a scalar constant (x * c, x / c)")
            c = (ins[0] if consts[0] else ins[1]).scalar()
            v = ins[1] if consts[0] else ins[0]
            if c is None or (prim == "div" and c == 0):
                self.refuse(eqn, f"{prim} by a non-scalar or zero constant is not supported")
            return self.emit("affine", [v], aval, eqn, (("scale", c if prim == "mul" else 1.0 / c), ("shift", 0.0)))
        if prim in STRUCTURAL and (consts[0] if prim == "dynamic_slice" else any(consts)):
            self.refuse(eqn, f"{prim} of a constant is not supported (fold it outside the model)")
        if prim in ("reshape", "squeeze", "expand_dims"):
            if prim == "reshape" and eqn.params.get("dimensions") is not None:
                self.refuse(eqn, "reshape with a dimension order is not supported")
            return self.emit("reshape", ins, aval, eqn, (("shape", list(aval.shape)),))
        if prim == "broadcast_in_dim":
            src = eqn.invars[0].aval
            dims = list(eqn.params["broadcast_dimensions"])
            if src.size == aval.size:  # only new length-1 axes: a reshape
                return self.emit("reshape", ins, aval, eqn, (("shape", list(aval.shape)),))
            return self.emit("broadcast", ins, aval, eqn, (("shape", list(aval.shape)), ("dims", dims)))
        if prim == "transpose":
            return self.emit("transpose", ins, aval, eqn, (("perm", list(eqn.params["permutation"])),))
        if prim == "slice":
            strides = eqn.params.get("strides") or (1,) * len(aval.shape)
            v = ins[0]
            shape = list(eqn.invars[0].aval.shape)
            for ax, (a, b, st) in enumerate(zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides)):
                if (a, b, st) != (0, shape[ax], 1):
                    shape[ax] = len(range(a, b, st))
                    v = self.emit("slice", [v], aval.update(shape=tuple(shape)), eqn,
                                  (("axis", ax), ("start", int(a)), ("stop", int(b)), ("step", int(st))))
            return v
        if prim == "dynamic_slice":
            starts = [a.scalar() if isinstance(a, _Const) else None for a in ins[1:]]
            if any(c is None for c in starts) or isinstance(ins[0], _Const):
                self.refuse(eqn, "dynamic_slice is supported with constant start indices only")
            v, shape = ins[0], list(eqn.invars[0].aval.shape)
            for ax, (a, n) in enumerate(zip(starts, eqn.params["slice_sizes"])):
                a = min(max(int(a), 0), shape[ax] - n)  # lax clamps starts into range
                if n != shape[ax]:
                    shape[ax] = n
                    v = self.emit("slice", [v], aval.update(shape=tuple(shape)), eqn,
                                  (("axis", ax), ("start", a), ("stop", a + n), ("step", 1)))
            return v
        if prim == "concatenate":
            return self.emit("concat", ins, aval, eqn, (("axis", int(eqn.params["dimension"])),))
        if prim == "reduce_max":
            return self.emit("reduce_max", ins, aval, eqn, (("axes", [int(a) for a in eqn.params["axes"]]),))
        if prim == "conv_general_dilated":
            return self.conv(eqn, ins, aval)
        if prim == "reduce_window_max":
            return self.pool(eqn, ins, aval)
        if prim == "max":
            if any(consts):
                c = (ins[0] if consts[0] else ins[1]).scalar()
                v = ins[1] if consts[0] else ins[0]
                if c != 0.0:
                    self.refuse(eqn, "max with a constant is supported only as max(x, 0) (relu)")
                return self.emit("relu", [v], aval, eqn)
            return self.emit("max", ins, aval, eqn)
        self.refuse(eqn)
