"""The printers of every IR level (the parser is in text.py). They read the modules'
fields and import neither level, so both levels' ``__str__`` can use them."""
from __future__ import annotations

import json
import math
from typing import Any


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def fmt_attrs(attrs) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k} = {fmt_value(v)}" for k, v in attrs) + "}"


def print_tensor(m) -> str:
    lines = [f"tensor @{m.name} {{"]
    for op in m.ops:
        lhs = f"%{op.result} = " if op.result is not None else ""
        args = ", ".join(f"%{v}" for v in op.operands)
        ty = f" : {op.type}" if op.type is not None else ""
        lines.append(f"  {lhs}{op.opname}({args}){fmt_attrs(op.attrs)}{ty}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_feasibility(m, level: str | None = None) -> str:
    level = level or ("plan" if m.groups else "feasibility")
    lines = [f"{level} @{m.name}{fmt_attrs(m.attrs)} {{"]
    for f in m.families:
        ports = ", ".join(f"{p}: {n}" for p, n in f.ports)
        lines.append(f"  %{f.name} = {f.kind}({ports}){fmt_attrs(f.attrs)} : {f.type}")
    for e in m.edges:
        lines.append(
            f"  edge %{e.src} -> %{e.dst}.{e.port}[{e.start}:{e.stop}] {e.map.text(e.type.rank)} : {e.type}"
        )
    for g in m.groups:
        members = ", ".join(f"%{n}" for n in g.members)
        lines.append(f"  group @{g.name} {{colour = {g.colour}}} {g.kind}({members})")
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_plan(m) -> str:
    """The plan's text: the coloured feasibility IR, each family annotated (in comments,
    which the parser skips) with its colour, node count, scalar edges and state bytes, and
    each parameter with its copies per sample (out-edges per node per batch row)."""
    body = print_feasibility(m, "plan").splitlines()
    stats = {}
    for f in m.families:
        ins = sum(e.type.size for e in m.in_edges(f.name))
        outs = sum(e.type.size for e in m.out_edges(f.name))
        nbytes = sum(e.type.nbytes for e in m.in_edges(f.name))
        stats[f.name] = f"// colour {f.attr('colour')}, layer {f.attr('layer')}, {f.type.size} nodes, {ins} in-edges, {outs} out-edges, state {nbytes} B"
        if f.kind == "param" and f.type.size and m.attr("batch"):
            # Each update's parameter is the mean of its copies; this count is the factor
            # --outer-step PARAM=F would use to restore a gradient's sum (docs/experiments.md).
            copies = outs / (f.type.size * m.attr("batch"))
            stats[f.name] += f", copies per sample {copies:.4g}"
    out = []
    for line in body:
        s = line.strip()
        name = s[1:].split(" ", 1)[0] if s.startswith("%") else None
        out.append(f"{line}  {stats[name]}" if name in stats else line)
    total = sum(e.type.nbytes for e in m.edges)
    colours = sorted({f.attr("colour") for f in m.families})
    summary = [f"// {len(m.families)} families, {len(m.edges)} edge families, {sum(e.type.size for e in m.edges)} scalar edges, "
               f"state {total} B, {m.attr('identities', 0)} identity families inserted"]
    for c in colours:
        members = [f"%{f.name}" for f in m.families if f.attr("colour") == c]
        summary.append(f"// colour {c}{' (target; projected first)' if c == 0 else ''}: {', '.join(members)}")
    return "\n".join(summary + out) + "\n"
