"""The NumPy oracle: the literal scalar computation graph of a small model, built from the
tensor IR by its own code -- one node per scalar operation, one variable per edge --
independent of ``scalarize``, the passes and the index maps. Projections loop over nodes
in Python. It exists to catch scalarization and index-map bugs: on small models the JAX
backend must produce the same iterates (tests/test_backends.py).

Only the primitives' own projection rules are shared (they are tested separately against
brute force). Fusion of a sum into a function of a sum, colouring (parity of the BFS
distance from the targets) and CP's layers (BFS over tensor values) are recomputed here on
the scalar graph.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import deque

import numpy as np

from ..errors import FeascompError
from ..ir.tensor import TensorModule
from ..ops import primitive_op
from ..primitives import get


@dataclasses.dataclass
class Node:
    kind: str  # const | param | target | primitive name
    key: tuple  # (value name, sample or None, element index)
    prim: object = None
    ports: dict = dataclasses.field(default_factory=dict)  # port -> list of edge ids in slot order
    vector: dict = dataclasses.field(default_factory=dict)  # port -> is a vector port
    out: list = dataclasses.field(default_factory=list)  # outgoing edge ids
    colour: int = -1
    layer: int = -1
    no_fuse: bool = False  # a concat's sum: takes no spliced sums (its inputs are placed slices)


class ScalarGraph:
    def __init__(self, tensor: TensorModule, batch: int, *, weighted: bool = False, loss_options: dict | None = None,
                 tokens: np.ndarray | None = None, fold: bool = False):
        self.tensor, self.batch, self.weighted = tensor, batch, weighted
        self.fold = fold  # a node with a port fed by constants alone projects with it held fixed
        self.tokens = tokens  # the batch's token ids, for a model with embed (its graph depends on them)
        self.nodes: list[Node] = []
        self.src: list[int] = []  # edge -> producer node
        self.dst: list[int] = []  # edge -> consumer node
        self.index: dict[tuple, int] = {}  # (value, sample|None, element) -> node
        self.types = tensor.types()
        self.params = [op.result for op in tensor.by_kind("param")]
        self.loss_options = loss_options or {}
        self.views: dict = {}
        self.zeros = 0
        self.like: dict[int, str] = {}  # constant-zero node -> the value it pads
        for op in tensor.ops:
            self._lower(op)
        self._fuse()
        self._colour()

    # construction ----------------------------------------------------------------------
    def _node(self, kind, key, prim=None) -> int:
        self.nodes.append(Node(kind, key, prim))
        nid = len(self.nodes) - 1
        self.index[key] = nid
        return nid

    def _edge(self, src: int, dst: int, port: str, vector: bool) -> None:
        e = len(self.src)
        self.src.append(src)
        self.dst.append(dst)
        self.nodes[src].out.append(e)
        self.nodes[dst].ports.setdefault(port, []).append(e)
        self.nodes[dst].vector[port] = vector

    def _producer(self, value: str, b: int, idx: tuple) -> int:
        """The node holding element idx of value (sample b), looking through views: reshape,
        transpose, slice and virtual concat make no nodes of their own."""
        op = self.views.get(value)
        if op is None:
            key = (value, None, idx) if value in self.params else (value, b, idx)
            return self.index[key]
        if op.opname == "reshape":
            flat = np.ravel_multi_index(idx, op.type.shape)
            return self._producer(op.operands[0], b, tuple(int(i) for i in np.unravel_index(flat, self.types[op.operands[0]].shape)))
        if op.opname == "transpose":
            src = [0] * len(idx)
            for k, p in enumerate(op.attr("perm")):
                src[p] = idx[k]
            return self._producer(op.operands[0], b, tuple(src))
        if op.opname == "broadcast":
            shape = self.types[op.operands[0]].shape
            return self._producer(op.operands[0], b, tuple(0 if shape[i] == 1 else idx[d] for i, d in enumerate(op.attr("dims"))))
        if op.opname == "embed":  # element (t..., d...) is row tokens[b, t...] of the table
            ids, table = op.operands
            r = self.types[ids].rank
            row = int(self.tokens[b][tuple(idx[:r])])
            return self._producer(table, b, (row,) + tuple(idx[r:]))
        if op.opname == "slice":
            ax = op.attr("axis")
            return self._producer(op.operands[0], b, idx[:ax] + (op.attr("start") + idx[ax] * op.attr("step"),) + idx[ax + 1:])
        # a virtual concat
        ax, pos = op.attr("axis"), idx[op.attr("axis")]
        for v in op.operands:
            n = self.types[v].shape[ax]
            if pos < n:
                return self._producer(v, b, idx[:ax] + (pos,) + idx[ax + 1:])
            pos -= n
        raise AssertionError(idx)

    def _zero(self, b, like: int) -> int:
        """A constant-zero node (padding, the rest of a placed concat operand). It belongs to
        the value it pads: CP projects it in that value's layer -- the least layer of its
        nodes, as the family graph's BFS gives the producer family -- because the materialized
        lowering writes padding with the producer's own edges."""
        self.zeros += 1
        nid = self._node("const", ("__zero__", b, (self.zeros,)))
        self.like[nid] = self.nodes[like].key[0]
        return nid

    def _virtual_concat(self, op) -> bool:
        uses = [u for u in self.tensor.ops if op.result in u.operands]
        return all(u.opname == "matmul" and u.operands[0] == op.result and u.operands[1] != op.result
                   and op.attr("axis") == op.type.rank - 1 for u in uses) or \
            (op.type.rank == 2 and op.attr("axis") == 0 and all(u.opname in ("output", "loss") for u in uses))

    @staticmethod
    def _bcast(idx: tuple, shape: tuple) -> tuple:
        """Index into an operand of ``shape`` broadcast (right-aligned) to idx's shape."""
        off = len(idx) - len(shape)
        return tuple(0 if shape[i] == 1 else idx[off + i] for i in range(len(shape)))

    def _lower(self, op):
        kind = op.opname
        if kind == "output":
            return
        if kind == "param":
            for idx in itertools.product(*map(range, op.type.shape)):
                self._node("param", (op.result, None, idx))
            return
        samples = range(self.batch)
        if kind == "input":
            if op.type.dtype == "i32":  # token ids: they choose edges, they are not nodes
                if self.tokens is None:
                    raise FeascompError("a model with token ids needs the batch's ids to build its scalar graph", op.loc)
                return
            for b in samples:
                for idx in itertools.product(*map(range, op.type.shape)):
                    self._node("const", (op.result, b, idx))
            return
        if kind == "loss":
            (v,) = op.operands
            opts = {k: val for k, val in op.attrs if k != "kind"}
            opts.update(self.loss_options)
            prim = get(op.attr("kind"), **opts)
            *positions, classes = self.types[v].shape  # [C], or [T, C]: a target node per position
            for b in samples:
                for pos in itertools.product(*map(range, positions)):
                    t = self._node("target", ("__target__", b, pos), prim)
                    for c in range(classes):
                        self._edge(self._producer(v, b, pos + (c,)), t, "logits", True)
            return
        if kind in ("reshape", "transpose", "slice", "broadcast", "embed") or (kind == "concat" and self._virtual_concat(op)):
            self.views[op.result] = op
            return
        ts = [self.types[v] for v in op.operands]
        for b in samples:
            for idx in itertools.product(*map(range, op.type.shape)):
                if kind == "concat":  # a sum node; the other operands' slots are zeros
                    n = self._node("sum", (op.result, b, idx), get("sum"))
                    self.nodes[n].no_fuse = True
                    ax, pos = op.attr("axis"), idx[op.attr("axis")]
                    for v, t in zip(op.operands, ts):
                        inside = 0 <= pos < t.shape[ax]
                        near = self._producer(v, b, idx[:ax] + (min(max(pos, 0), t.shape[ax] - 1),) + idx[ax + 1:])
                        src = near if inside else self._zero(b, near)
                        self._edge(src, n, "x", True)
                        pos -= t.shape[ax]
                    continue
                if kind == "conv2d":
                    x, w = op.operands
                    kh, kw, c, _ = ts[1].shape
                    (sh, sw), (top, _, left, _) = op.attr("stride"), op.attr("padding")
                    i, j, o = idx
                    n = self._node("dot", (op.result, b, idx), get("dot"))
                    h, wd = ts[0].shape[:2]
                    for di, dj, cc in itertools.product(range(kh), range(kw), range(c)):
                        r, q = i * sh + di - top, j * sw + dj - left
                        near = self._producer(x, b, (min(max(r, 0), h - 1), min(max(q, 0), wd - 1), cc))
                        inside = 0 <= r < h and 0 <= q < wd
                        self._edge(near if inside else self._zero(b, near), n, "a", True)
                    for di, dj, cc in itertools.product(range(kh), range(kw), range(c)):
                        self._edge(self._producer(w, b, (di, dj, cc, o)), n, "b", True)
                    continue
                if kind == "max_pool":
                    (kh, kw), (sh, sw) = op.attr("window"), op.attr("stride")
                    i, j, cc = idx
                    n = self._node("max", (op.result, b, idx), get("max"))
                    for di, dj in itertools.product(range(kh), range(kw)):
                        self._edge(self._producer(op.operands[0], b, (i * sh + di, j * sw + dj, cc)), n, "x", True)
                    continue
                if kind == "reduce_max":
                    axes = op.attr("axes")
                    shape = ts[0].shape
                    kept = [a for a in range(len(shape)) if a not in axes]
                    n = self._node("max", (op.result, b, idx), get("max"))
                    for red in itertools.product(*(range(shape[a]) for a in axes)):
                        full = [0] * len(shape)
                        for a, v in zip(kept, idx):
                            full[a] = v
                        for a, v in zip(axes, red):
                            full[a] = v
                        self._edge(self._producer(op.operands[0], b, tuple(full)), n, "x", True)
                    continue
                if kind == "matmul":
                    u, w = op.operands
                    n = self._node("dot", (op.result, b, idx), get("dot"))
                    *lead, j = idx
                    for k in range(ts[0].shape[-1]):
                        self._edge(self._producer(u, b, tuple(lead) + (k,)), n, "a", True)
                    for k in range(ts[0].shape[-1]):
                        self._edge(self._producer(w, b, (k, j)), n, "b", True)
                    continue
                if kind == "add":
                    prim, ports = get("sum"), None
                elif kind == "relu":
                    prim, ports = get("sum_relu"), None
                else:
                    base = primitive_op(kind)
                    if base is None:
                        raise FeascompError(f"the numpy backend does not know tensor op {kind!r}", op.loc)
                    prim = base.with_options(**dict(op.attrs)) if op.attrs else base
                    ports = None if (len(prim.ports) == 1 and prim.ports[0].vector) else [p.name for p in prim.ports]
                n = self._node(prim.name, (op.result, b, idx), prim)
                for i, (v, t) in enumerate(zip(op.operands, ts)):
                    src = self._producer(v, b, self._bcast(idx, t.shape))
                    if ports is None:
                        self._edge(src, n, "x", True)
                    else:
                        self._edge(src, n, ports[i], False)

    def _fuse(self):
        """A sum node with one consumer, a function of a sum (sum_relu, sum, ...), is spliced
        into the consumer's input slot it feeds."""
        dead = set()
        changed = True
        while changed:
            changed = False
            for nid, node in enumerate(self.nodes):
                if nid in dead or node.kind != "sum" or len(node.out) != 1:
                    continue
                e = node.out[0]
                r = self.nodes[self.dst[e]]
                if r.prim is None or not getattr(r.prim, "fuses_sum", False) or list(r.ports) != ["x"] or r.no_fuse:
                    continue
                slot = r.ports["x"].index(e)
                r.ports["x"] = r.ports["x"][:slot] + list(node.ports["x"]) + r.ports["x"][slot + 1:]
                for ie in node.ports["x"]:
                    self.dst[ie] = self.dst[e]
                dead.add(nid)
                self.dst[e] = -1
                changed = True
        # renumber: drop dead nodes and the merged edges
        keep_e = [e for e in range(len(self.src)) if self.dst[e] != -1]
        emap = {e: i for i, e in enumerate(keep_e)}
        keep_n = [i for i in range(len(self.nodes)) if i not in dead]
        nmap = {n: i for i, n in enumerate(keep_n)}
        self.src = [nmap[self.src[e]] for e in keep_e]
        self.dst = [nmap[self.dst[e]] for e in keep_e]
        nodes = []
        for i in keep_n:
            n = self.nodes[i]
            n.ports = {p: [emap[e] for e in es] for p, es in n.ports.items()}
            n.out = [emap[e] for e in n.out if e in emap]
            nodes.append(n)
        self.nodes = nodes
        self.index = {n.key: i for i, n in enumerate(nodes)}
        self.like = {nmap[z]: v for z, v in self.like.items()}
        self.E = len(self.src)

    def _colour(self):
        adj = [[] for _ in self.nodes]
        for s, d in zip(self.src, self.dst):
            adj[s].append(d)
            adj[d].append(s)
        dist = [-1] * len(self.nodes)
        queue = deque(i for i, n in enumerate(self.nodes) if n.kind == "target")
        for i in queue:
            dist[i] = 0
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        for i, n in enumerate(self.nodes):
            n.colour = (dist[i] if dist[i] >= 0 else max(dist) + 1) % 2
        # CP's layers: BFS over tensor values (the scalar graph with each value's nodes merged,
        # a padding zero counted with the value it pads), as the family graph's BFS gives a
        # family one layer even where some of its nodes are farther (unused entries)
        group = [self.like.get(i, n.key[0]) for i, n in enumerate(self.nodes)]
        vadj: dict[str, set] = {}
        for s, d in zip(self.src, self.dst):
            vadj.setdefault(group[s], set()).add(group[d])
            vadj.setdefault(group[d], set()).add(group[s])
        vdist = {"__target__": 0}
        queue = deque(["__target__"])
        while queue:
            u = queue.popleft()
            for v in vadj.get(u, ()):
                if v not in vdist:
                    vdist[v] = vdist[u] + 1
                    queue.append(v)
        far = max(vdist.values()) + 1
        for i, n in enumerate(self.nodes):  # a value with no edges at all: the target's layer (as the plan's)
            n.layer = vdist.get(group[i], far if group[i] in vadj else 0)
        for s, d in zip(self.src, self.dst):
            if self.nodes[s].colour == self.nodes[d].colour:
                raise FeascompError("the scalar graph is not bipartite")
        self.by_colour = [[i for i, n in enumerate(self.nodes) if n.colour == c] for c in (0, 1)]
        depth = max(n.layer for n in self.nodes) + 1
        self.by_layer = [[i for i, n in enumerate(self.nodes) if n.layer == d] for d in range(depth)]

    # evaluation ---------------------------------------------------------------------------
    def _inputs(self, node: Node, z):
        return [np.array([z[es]]) if node.vector[p] else np.array([z[es[0]]]) for p, es in node.ports.items()]

    def forward_edges(self, params: dict, x: np.ndarray, dtype) -> np.ndarray:
        val = np.zeros(len(self.nodes), dtype)
        z = np.zeros(self.E, dtype)
        order = self._topological()
        for i in order:
            n = self.nodes[i]
            name, b, idx = n.key
            if n.kind == "const":
                val[i] = 0 if name == "__zero__" else x[(b,) + idx]
            elif n.kind == "param":
                val[i] = params[name][idx]
            elif n.kind != "target":
                val[i] = n.prim.forward(*self._inputs(n, z))[0]
            for e in n.out:
                z[e] = val[i]
        return z

    def _topological(self):
        indeg = [len(set(itertools.chain(*n.ports.values()))) for n in self.nodes]
        ready = deque(i for i, d in enumerate(indeg) if d == 0)
        order = []
        while ready:
            u = ready.popleft()
            order.append(u)
            for e in self.nodes[u].out:
                v = self.dst[e]
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
        return order

    def project(self, members: list[int], z: np.ndarray, x: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        new = z.copy()
        for i in members:
            n = self.nodes[i]
            name, b, idx = n.key
            if n.kind == "const":
                new[n.out] = 0 if name == "__zero__" else x[(b,) + idx]
            elif n.kind == "param":
                if n.out:
                    new[n.out] = z[n.out].mean()
            elif n.kind == "target":
                es = n.ports["logits"]
                new[es] = n.prim.prox(z[es][None], onehot[(b,) + idx][None])[0]
            elif n.out:
                ybar = np.array([z[n.out].mean()])
                w = float(len(n.out)) if self.weighted else 1.0
                fixed = self._fixed(n)
                if fixed is not None:  # the constants' values, not their edges' (kept equal to them)
                    ins = [np.array([self._const(self.src[es[0]], x)]) if f and not n.vector[p] else
                           np.array([[self._const(self.src[e], x) for e in es]]) if f else v
                           for (p, es), f, v in zip(n.ports.items(), fixed, self._inputs(n, z))]
                    xs, y = n.prim.project_fixed(ins, fixed, ybar, w)
                else:
                    xs, y = n.prim.project(self._inputs(n, z), ybar, w)
                for (p, es), v in zip(n.ports.items(), xs):
                    new[es] = v[0]
                new[n.out] = y[0]
        return new

    def _fixed(self, n: Node):
        """Under folding, which of node n's ports are fed by constants alone, or None: no
        such port, or a primitive without a fixed-port projection."""
        if not self.fold or n.prim is None or n.prim.fixed_rule is None:
            return None
        fixed = tuple(all(self.nodes[self.src[e]].kind == "const" for e in es) for es in n.ports.values())
        return fixed if any(fixed) else None

    def _const(self, i: int, x: np.ndarray):
        name, b, idx = self.nodes[i].key
        return 0 if name == "__zero__" else x[(b,) + idx]

    def param_means(self, z: np.ndarray, previous: dict) -> dict:
        out = {k: np.array(v, copy=True) for k, v in previous.items()}
        for n in self.nodes:
            if n.kind == "param" and n.out:
                out[n.key[0]][n.key[2]] = z[n.out].mean()
        return out
