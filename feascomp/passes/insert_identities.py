"""insert-identities: make the family graph bipartite with the fewest identity families.

Subdividing an edge family u -> v with an identity family I (u -> I -> v) lets u and v
share a colour, so the fewest identities is the fewest edge families left monochromatic
by a 2-colouring -- minimised exactly by enumerating colourings (vectorised, the target's
colour fixed) when the graph has at most ``exact_limit`` families, and by BFS parity plus
single-family flips beyond that. A bipartite graph is returned unchanged (MLP, readout MLP
and CNN after fuse-sum-relu).

    %h2 = sum_relu(x: 3) : f32[64, 32]            %h1_id0 = identity(x: 0) : f32[64, 32]
    edge %h1 -> %h2.x[2:3] bcast "ab->abc"   ==>  edge %h1 -> %h1_id0.x[0:1] bcast "ab->ab" : f32[64, 32]
                                                  edge %h1_id0 -> %h2.x[2:3] bcast "ab->abc" ...

The identity lives on the producer's index space (one per producer node), so it adds one
small edge family; the module records the count as ``identities``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..ir.feasibility import BroadcastMap, Edge, Family, FeasModule


def best_colouring(names: list[str], pairs: list[tuple[str, str]], fixed: str, exact_limit: int) -> dict[str, int]:
    """A 2-colouring with ``fixed`` at 0 minimising the number of monochromatic pairs."""
    others = [n for n in names if n != fixed]
    if len(others) <= exact_limit:
        codes = np.arange(2 ** len(others), dtype=np.int64)
        bit = {fixed: np.zeros_like(codes)}
        for k, n in enumerate(others):
            bit[n] = (codes >> k) & 1
        bad = np.zeros_like(codes)
        for u, v in pairs:
            bad += bit[u] == bit[v]
        best = int(np.argmin(bad))
        return {n: int(bit[n][best]) for n in names}
    # heuristic: BFS parity from the fixed family, then flip single families while it helps
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(names)
    g.add_edges_from(pairs)
    colour = {n: d % 2 for n, d in nx.single_source_shortest_path_length(g, fixed).items()}
    colour.update({n: 0 for n in names if n not in colour})

    def cost(c):
        return sum(c[u] == c[v] for u, v in pairs)

    improved = True
    while improved:
        improved = False
        for n in others:
            before = cost(colour)
            colour[n] ^= 1
            if cost(colour) < before:
                improved = True
            else:
                colour[n] ^= 1
    return colour


@dataclasses.dataclass(frozen=True)
class InsertIdentitiesPass:
    """Make the family graph bipartite with the fewest identity families."""

    name = "insert-identities"
    output_stage = "feasibility"
    input_level = "feasibility"
    exact_limit: int = 18

    def run(self, m: FeasModule) -> FeasModule:
        import networkx as nx

        from .color import family_graph

        if nx.is_bipartite(family_graph(m)):
            return m
        names = [f.name for f in m.families]
        target = next(f.name for f in m.families if f.kind == "target")
        colour = best_colouring(names, [(e.src, e.dst) for e in m.edges], target, self.exact_limit)
        fams, edges = list(m.families), []
        taken = set(names)
        count = 0
        for e in m.edges:
            if colour[e.src] != colour[e.dst]:
                edges.append(e)
                continue
            src = m.family(e.src)
            name = f"{e.src}_id{count}"
            while name in taken:
                name += "_"
            taken.add(name)
            fams.append(Family(name, "identity", src.type, (("x", 0),), (), src.loc))
            edges.append(Edge(e.src, name, "x", 0, 1, BroadcastMap(tuple(range(src.type.rank))), src.type))
            edges.append(dataclasses.replace(e, src=name))
            count += 1
        attrs = tuple(a for a in m.attrs if a[0] != "identities") + (("identities", count),)
        return m.replace(families=tuple(fams), edges=tuple(edges), attrs=attrs)
