"""The package's shape: no import circles, counting imports inside functions and under
TYPE_CHECKING (a circle is a circle however it is hidden)."""
import ast
import os

import networkx as nx

import feascomp

PACKAGE = os.path.dirname(feascomp.__file__)


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = "feascomp." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> nx.DiGraph:
    """Module -> module it imports (relative or absolute, anywhere in the file); ``from
    pkg import sub`` counts as an import of the submodule."""
    modules = _modules()
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules] or [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            g.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return g


def test_no_import_circles():
    g = import_graph()
    assert len(g) > 40 and g.has_edge("feascomp.ir.text", "feascomp.ir.tensor")  # the graph is read at all
    circles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not circles, circles
