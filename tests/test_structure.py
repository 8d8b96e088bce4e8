"""The runtime's structure as issue 18 left it: no import circle in perception/ or nodes/ (an import
inside a function counts; one only for type checking does not), and every node module declares its
ports, so a launch file can be checked against them before anything starts."""

import ast
import importlib
from pathlib import Path

from perception import REPO
from perception.graph import ANY_INPUTS, Port
from perception.topics import Topic

PACKAGES = ("perception", "nodes")


def module_names() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def runtime_imports(source: str) -> list[str]:
    """Modules `source` imports when it runs (at the top or inside functions), not under TYPE_CHECKING."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported in runtime_imports(path.read_text()):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            # Importing a.b.c runs the packages a and a.b first: a module outside them depends on them too.
            parts = imported.split(".") if imported else []
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_no_module_of_the_runtime_imports_itself_in_a_circle():
    graph = import_graph()
    assert len(graph) > 60 and "perception.launch.supervisor" in graph
    assert cycles(graph) == []


def test_the_circle_finder_sees_imports_inside_functions_and_skips_those_for_type_checking():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import b\n"
              "def f():\n    from c import d\n")
    assert "c.d" in runtime_imports(source) and "a" not in runtime_imports(source)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_node_module_declares_its_ports():
    for path in sorted((REPO / "nodes").glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"nodes.{path.stem}")
        assert module.INPUTS == ANY_INPUTS or all(
            isinstance(port, Port) and name.isidentifier() for name, port in module.INPUTS.items()), path.stem
        assert all(isinstance(topic, Topic) for topic in module.OUTPUTS), path.stem


def test_no_file_of_the_library_is_over_450_lines():
    """A file that long does several jobs: split it (issue 18)."""
    long = {str(p.relative_to(REPO)): n for p in (REPO / "perception").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_no_module_imports_another_modules_private_names():
    """A name starting with `_` is its module's own: a second user makes it public (named, documented)."""
    found = []
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                found += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)
