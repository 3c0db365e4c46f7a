"""Test modules never import each other: what they share comes from fixtures (tests/plugins).

A test module (``tests/**/test_*.py`` or a ``conftest.py``) may import a type from a plugin in
``tests/plugins`` under ``if TYPE_CHECKING:`` for its annotations, and nothing else from
``tests``. Values come through fixtures, as in quix-streams' ``tests/conftest.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

# Not yet moved to fixtures (issue 15). This list may only shrink: an entry that no longer
# occurs fails the test too.
KNOWN: set[tuple[str, str]] = set()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, typing_only: bool = False) -> list[tuple[str, bool]]:
    """(module, under TYPE_CHECKING) for every import in the tree; relative ones as '.mod'."""
    found: list[tuple[str, bool]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for inner in node.body:
                found += _imports(ast.Module(body=[inner], type_ignores=[]), typing_only=True)
            for inner in node.orelse:
                found += _imports(
                    ast.Module(body=[inner], type_ignores=[]), typing_only=typing_only
                )
        elif isinstance(node, ast.Import):
            found += [(alias.name, typing_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), typing_only))
        else:
            found += _imports(node, typing_only=typing_only)
    return found


def _test_modules() -> list[Path]:
    return sorted(
        p
        for p in TESTS.rglob("*.py")
        if (p.name.startswith("test_") or p.name == "conftest.py") and "plugins" not in p.parts
    )


def violations(path: Path) -> set[str]:
    """Modules of the test tree that ``path`` imports other than plugin types."""
    bad: set[str] = set()
    for module, typing_only in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        ours = module.startswith(".") or module == "tests" or module.startswith("tests.")
        if not ours:
            continue
        if typing_only and module.startswith("tests.plugins."):
            continue
        bad.add(module)
    return bad


def test_the_checker_sees_runtime_relative_and_type_only_imports() -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "import tests.unit.test_x\n"
        "from .helpers import f\n"
        "def g():\n    from tests.functional.helpers import h\n"
        "if TYPE_CHECKING:\n"
        "    from tests.plugins.stack import T\n"
        "    from tests.unit.test_y import Y\n"
    )
    found = _imports(ast.parse(src))
    assert ("tests.unit.test_x", False) in found and (".helpers", False) in found
    assert ("tests.functional.helpers", False) in found
    assert ("tests.plugins.stack", True) in found and ("tests.unit.test_y", True) in found


def test_no_test_module_imports_another_test_module() -> None:
    modules = _test_modules()
    assert len(modules) > 20  # the scan found the suite
    found = {
        (str(path.relative_to(TESTS)), module) for path in modules for module in violations(path)
    }
    assert found - KNOWN == set(), "import it through a fixture (tests/plugins) instead"
    assert KNOWN - found == set(), "fixed: remove it from KNOWN"
