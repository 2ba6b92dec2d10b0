"""color: 2-colour the family graph so that each colour's projections run in parallel.

Families are adjacent when an edge family joins them. Since every scalar edge runs between
two families, a proper colouring of the (small) family graph colours the scalar graph.
Colour 0 holds the target and is projected first. Each family also gets a ``layer``: its
BFS distance from the target (the nearest one, in a sequence model with a target per
position), CP's ordered classes (in a bipartite graph each layer lies
within one colour class). A graph that is not bipartite is an error naming an odd cycle
(``insert-identities`` makes graphs bipartite).

    %h = sum_relu(x: 2) : f32[256, 128]   ==>   %h = sum_relu(x: 2) {colour = 0, layer = 2} : f32[256, 128]
"""
from __future__ import annotations

import dataclasses

import networkx as nx

from ..errors import FeascompError, Loc
from ..ir.feasibility import FeasModule


def family_graph(m: FeasModule) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(f.name for f in m.families)
    g.add_edges_from((e.src, e.dst) for e in m.edges)
    return g


def odd_cycle(g: nx.Graph) -> list[str]:
    """Some odd cycle of a non-bipartite graph (for the error message)."""
    for comp in nx.connected_components(g):
        sub = g.subgraph(comp)
        root = next(iter(comp))
        depth = nx.single_source_shortest_path_length(sub, root)
        tree = nx.bfs_tree(sub, root).to_undirected()
        for u, v in sub.edges():
            if depth[u] % 2 == depth[v] % 2:
                return nx.shortest_path(tree, u, v)
    return []


def greedy_colouring(g: nx.Graph, target: str) -> dict[str, int]:
    """A proper colouring with few colours: families in BFS order from the target, each
    taking the least colour its coloured neighbours do not use (the target gets 0)."""
    colour: dict[str, int] = {}
    for comp in sorted(nx.connected_components(g), key=lambda c: (target not in c, min(c))):
        root = target if target in comp else min(comp)
        for n in [root] + [v for _, v in nx.bfs_edges(g, root)]:
            used = {colour[u] for u in g[n] if u in colour}
            colour[n] = next(c for c in range(len(used) + 1) if c not in used)
    return colour


@dataclasses.dataclass(frozen=True)
class ColorPass:
    """2-colour the family graph; colour 0 holds the target. With ``general`` a graph that is
    not bipartite gets a greedy colouring with more colours (for CP; AP, DR and DM refuse it)."""

    name = "color"
    output_stage = "plan"
    input_level = "feasibility"
    general: bool = False

    def run(self, m: FeasModule) -> FeasModule:
        g = family_graph(m)
        targets = [f.name for f in m.families if f.kind == "target"]  # several: one per position
        target = targets[0]
        colour: dict[str, int] = {}
        layer: dict[str, int] = {}
        reach = {n: int(d) for n, d in nx.multi_source_dijkstra_path_length(g, set(targets)).items()}
        if not nx.is_bipartite(g):
            if not self.general:
                cycle = " - ".join(f"%{n}" for n in odd_cycle(g))
                raise FeascompError(
                    f"the family graph is not bipartite (odd cycle {cycle}); 2-colour algorithms need "
                    "identity families on it (insert-identities), or use color{general=true} with CP",
                    Loc(m.name),
                )
            colour = greedy_colouring(g, target)
        else:
            for comp in sorted(nx.connected_components(g), key=lambda c: target not in c):
                root = target if target in comp else min(comp)
                for n, d in nx.single_source_shortest_path_length(g.subgraph(comp), root).items():
                    colour[n] = d % 2
        depth = max(reach.values()) + 1
        for f in m.families:  # CP's classes: backward-BFS layers from the target (unreachable last,
            # a family with no edges -- token ids -- in the target's, as it projects nothing),
            # each intersected with the colour classes (the same thing when 2-coloured)
            layer[f.name] = reach.get(f.name, depth if g.degree(f.name) else 0)
        fams = tuple(
            dataclasses.replace(
                f, attrs=tuple((k, v) for k, v in f.attrs if k not in ("colour", "layer"))
                + (("colour", colour[f.name]), ("layer", layer[f.name]))
            )
            for f in m.families
        )
        return m.replace(families=fams)
