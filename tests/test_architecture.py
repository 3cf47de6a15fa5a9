"""The shape of the package: no import cycles inside flowdiff/, and the stage boundaries the README names.

Imports are read from the source (module level and inside functions alike: a lazy import is still a
dependency), except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "flowdiff"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    # the names imported that are flowdiff modules (a package import counts as its __init__)
    return {m for m in found if m in modules and m != me and m != "flowdiff"}


def _graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        ("flowdiff.report", {"flowdiff.mail", "flowdiff.store"}),  # report knows nothing of SMTP
        ("flowdiff.mail", {"flowdiff.report", "flowdiff.store"}),  # mail nothing of jinja2
        ("flowdiff.rules", {"flowdiff.store"}),
        ("flowdiff.aggregate", {"flowdiff.store"}),  # aggregate and diff do no file I/O of their own
    ],
)
def test_stage_boundaries(module, must_not_import):
    """Through any chain of imports, not only directly (report -> archive -> store would count)."""
    assert not _reachable(_graph(), module) & must_not_import


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_reachable_follows_chains():
    assert _reachable({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}, "a") == {"b", "c"}


def test_only_the_cli_imports_click():
    offenders = [
        m
        for m, path in ((_module_name(p), p) for p in PKG.rglob("*.py"))
        if not m.startswith("flowdiff.cli") and "click" in _imports_any(path)
    ]
    assert offenders == []


def _imports_any(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_cli_sits_on_top():
    """The library never imports the CLI, and no command module imports the ``flowdiff.cli`` package:
    that package loads its command modules by name (``importlib``), an edge the graph above cannot see,
    so a command module importing it back would be a cycle the cycle test misses."""
    graph = _graph()
    library = [m for m in graph if not m.startswith("flowdiff.cli") and m != "flowdiff.__main__"]
    assert [m for m in library if any(d.startswith("flowdiff.cli") for d in graph[m])] == []
    commands = [m for m in graph if m.startswith("flowdiff.cli.")]
    assert commands and [m for m in commands if "flowdiff.cli" in graph[m]] == []
