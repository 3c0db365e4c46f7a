"""Stand-ins for Faust tables in the sweep and timer tests, and what they count.

A ``StoredTable`` is a dict with the table's ``name`` (what ``stage.sweep_table`` logs and
labels ``pipeline_unreadable_state_total`` with); ``unreadable(metrics, table)`` reads that
counter. Tests get them through the ``stored_table`` and ``unreadable`` fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from pipeline.metrics import Metrics


class StoredTable(dict[str, str]):
    """A table of JSON text values keyed by str, with its name."""

    def __init__(self, name: str, values: Mapping[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.name = name


def _unreadable(metrics: Metrics, table: str) -> float:
    value = metrics.registry.get_sample_value("pipeline_unreadable_state_total", {"table": table})
    return value or 0.0


@pytest.fixture
def stored_table() -> Callable[..., StoredTable]:
    """``stored_table(name, values=None)``: a named table stand-in."""
    return StoredTable


@pytest.fixture
def unreadable() -> Callable[[Metrics, str], float]:
    """``unreadable(metrics, table)``: the values of ``table`` counted unreadable so far."""
    return _unreadable
