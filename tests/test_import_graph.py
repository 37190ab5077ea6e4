"""The project's modules import each other without cycles (library code reads top-down)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("repdiag", "train")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions too
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def _cycles(graph):
    seen, stack, found = set(), [], []

    def visit(m):
        if m in stack:
            found.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    return found


def test_no_import_cycles():
    graph = _graph()
    assert "repdiag.importers" in graph["repdiag.checkpoint"]  # the graph sees real edges
    assert _cycles(graph) == []


def test_the_library_never_imports_the_trainer():
    graph = _graph()
    offenders = {m: sorted(t for t in ts if t.startswith("train")) for m, ts in graph.items()
                 if m.startswith("repdiag")}
    assert {m: t for m, t in offenders.items() if t} == {}
