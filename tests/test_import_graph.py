"""No circle of imports inside our packages: each module's imports (at the top, under TYPE_CHECKING and inside
functions alike) are read with `ast`, resolved to modules of the same package, and the graph is checked for
cycles. A circle is where a feature gets wedged in: the module that wants to import the other is the one to split."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoders", "providers", "webrtc", "visual_agent")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: str, modules: set[str]) -> set[str]:
    """The modules of `package` that `path` imports (a package's `__init__` counts as the package itself)."""
    name = module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate.split(".")[0] == package and candidate in modules and candidate != name:
                found.add(candidate)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from where it was entered)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_import_graph_has_no_cycle(package):
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports_of(f, package, modules) for f in files}
    # A package's `__init__` re-exports its modules; what imports the package itself is an edge to every module it
    # re-exports, so `__init__` is left out as a target (its own imports are the re-exports).
    graph = {m: {t for t in targets if t != package} for m, targets in graph.items()}
    assert cycles(graph) == []


def test_import_graph_finds_a_cycle():
    """The check itself can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
