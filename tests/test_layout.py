"""The package's shape (DESIGN.md "Layout"): no import cycle among runtime imports (at module level
and inside functions), the core never imports the outer rooms (dashboard/, cli/, mcp/, admin/;
only the runner in process/ and the entry points wire them together), and no module over 400
lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streammachine"
MAX_LINES = 400
OUTER = ("streammachine.dashboard", "streammachine.cli", "streammachine.mcp", "streammachine.admin")
# The runner and the entry points, which wire the outer rooms together.
RUNNERS = (
    "streammachine.process",
    "streammachine.testing",
    "streammachine.__main__",
    "streammachine.mcp_server",
)
# `App.start` is the one documented lazy call from the library into the runner's process code.
LAZY_EDGES = {("streammachine.lifecycle", "streammachine.process.runner")}


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
    """The package modules `path` imports when it runs: at module level and inside functions,
    not under `if TYPE_CHECKING:`."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
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
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out = set()
    for target in found:
        # `from . import x` names a module or an attribute; keep what is a module of ours.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name and (name, target) not in LAZY_EDGES:
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
                # A submodule's edge to its own package (whose __init__ imports it) is how
                # packages work, not a cycle.
                if not (node.startswith(nxt + ".") or nxt.startswith(node + ".")):
                    cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_never_imports_the_outer_rooms() -> None:
    wrong = {}
    for name, imports in _graph().items():
        if name.startswith(OUTER) or name.startswith(RUNNERS):
            continue
        bad = sorted(i for i in imports if i.startswith(OUTER))
        if bad:
            wrong[name] = bad
    assert not wrong, wrong


def test_no_module_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_subpackages_say_their_job() -> None:
    # Each room's __init__ says what lives there and imports nothing (importing one module of a
    # room must not load the others).
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.parent.name}/__init__.py has no docstring"
