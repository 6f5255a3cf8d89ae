"""The package's shape: no import cycle among runtime imports, the core never imports the dashboard
or the CLI, and no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streammachine"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports when it is imported (module level, not under
    TYPE_CHECKING; imports inside functions run later and cannot make a cycle at import)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    out = set()
    for target in found:
        # `from . import x` names a module or an attribute; keep what is a module of ours.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _runtime_imports(p, modules) for p in paths}


def _parents(name: str) -> list[str]:
    # Importing a.b.c first imports a and a.b: a package's __init__ is an edge too.
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_no_import_cycle_among_runtime_imports() -> None:
    graph = _graph()
    for name in list(graph):
        graph[name] |= {p for p in _parents(name) if p in graph and p != name}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                # A package importing its own submodules (its __init__) is how packages work.
                if not node.startswith(nxt + "."):
                    cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_never_imports_the_dashboard_or_the_cli() -> None:
    outer = ("streammachine.dashboard", "streammachine.cli", "streammachine.mcp")
    wrong = {}
    for name, imports in _graph().items():
        if name.startswith(outer) or name in ("streammachine.__main__", "streammachine.mcp_server"):
            continue
        bad = sorted(i for i in imports if i.startswith(outer))
        if bad:
            wrong[name] = bad
    assert not wrong, wrong


def test_no_module_over_500_lines() -> None:
    # Not split yet: the OHLC aggregator and kernel (see the issue note).
    pending = {"ohlc/aggregator.py", "ohlc/kernel.py"}
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
        and str(p.relative_to(PACKAGE)) not in pending
    }
    assert not long, long
