"""No function in the stage packages holds a whole stage (docs/ARCHITECTURE.md, "Layers").

A function over ``MAX_LINES`` lines (``def`` to its last line, docstring included) fails,
unless it is listed in ``ALLOWED`` by ``package/module.py:function`` with the reason.
Declarative tables (metrics, argparse builders) are what the list is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).resolve().parent
MAX_LINES = 80
STAGES = ("ingest", "classify", "route", "notify", "console")

#: ``package/module.py:function`` → why it may be longer.
ALLOWED: dict[str, str] = {}


def long_functions(root: Path = ROOT, limit: int = MAX_LINES) -> dict[str, int]:
    """``package/module.py:function`` → length, for every function of the stages over limit."""
    found: dict[str, int] = {}
    for stage in STAGES:
        for path in sorted((root / stage).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > limit:
                        found[f"{path.relative_to(root).as_posix()}:{node.name}"] = length
    return found


def test_no_function_holds_a_whole_stage() -> None:
    too_long = {k: n for k, n in long_functions().items() if k not in ALLOWED}
    assert too_long == {}, f"split these along their phases (max {MAX_LINES} lines): {too_long}"


def test_allowed_entries_are_still_needed() -> None:
    # An entry whose function got shorter (or went away) must leave the list.
    assert set(ALLOWED) <= set(long_functions()), set(ALLOWED) - set(long_functions())


def test_the_measure_counts_nested_functions(tmp_path: Path) -> None:
    stage = tmp_path / "route"
    stage.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(6))
    (stage / "m.py").write_text(f"def outer():\n    def inner():\n{body}\n    return inner\n")
    assert long_functions(tmp_path, limit=5) == {"route/m.py:outer": 9, "route/m.py:inner": 7}
