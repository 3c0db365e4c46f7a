"""The layering rule of docs/ARCHITECTURE.md ("Layers"), checked on the source with ``ast``.

- No import cycle among ``pipeline`` modules. Imports inside functions count (a function-level
  import only hides a cycle); imports under ``if TYPE_CHECKING:`` do not (never run).
- A stage (every sub-package of ``pipeline`` except ``domain``: ingest, classify, route,
  notify, console, and any new one) never imports another stage.
- The domain and the Context import no stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pipeline

ROOT = Path(pipeline.__file__).resolve().parent
SHARED_PACKAGES = frozenset({"domain"})
#: Top-level modules the stages build on: they must not import a stage either.
SHARED_MODULES = frozenset({"context", "live_workflow"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path, name: str) -> set[str]:
    """Every module name an import statement of the file mentions (candidates, unresolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the ``pipeline`` modules it imports (``from pkg import mod`` resolves to mod)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for target in imported_names(path, name):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()):
        return None if parts[1] in SHARED_PACKAGES else parts[1]
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        own = stage_of(module)
        parts = module.split(".")
        shared = (len(parts) > 2 and parts[1] in SHARED_PACKAGES) or parts[-1] in SHARED_MODULES
        for target in sorted(targets):
            other = stage_of(target)
            if other is None:
                continue
            if own is not None and other != own:
                bad.append(f"stage {own}: {module} imports {target}")
            elif shared and own is None:
                bad.append(f"shared layer: {module} imports stage module {target}")
    return bad


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_stages_import_only_the_shared_layers() -> None:
    assert layer_violations(import_graph()) == []


# ------------------------------------------------ the checker itself finds what it should


def test_checker_sees_a_cycle_and_a_function_level_import(tmp_path: Path) -> None:
    graph = {
        "pipeline.a": {"pipeline.b"},
        "pipeline.b": {"pipeline.c"},
        "pipeline.c": {"pipeline.a"},
        "pipeline.d": {"pipeline.a"},
    }
    assert cycles(graph) == [["pipeline.a", "pipeline.b", "pipeline.c"]]
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pipeline.app import create_app\n"
        "def f():\n    from pipeline.route import agents\n"
    )
    names = imported_names(src, "pipeline.m")
    assert "pipeline.route.agents" in names
    assert "pipeline.app" not in names


@pytest.mark.parametrize(
    ("module", "target", "ok"),
    [
        ("pipeline.classify.agents", "pipeline.route.live", False),
        ("pipeline.classify.agents", "pipeline.domain.workflow", True),
        ("pipeline.classify.agents", "pipeline.classify.core", True),
        ("pipeline.domain.cases", "pipeline.route.sla", False),
        ("pipeline.context", "pipeline.notify.agents", False),
        ("pipeline.app", "pipeline.notify.agents", True),
    ],
)
def test_checker_applies_the_layer_rule(module: str, target: str, ok: bool) -> None:
    assert (layer_violations({module: {target}}) == []) is ok
