"""A replayed message decides as its first pass did, whatever state that pass left behind."""

from __future__ import annotations

from pipeline.config import DEFAULT_CONFIG_DIR, Settings
from pipeline.route.agents import find_case
from pipeline.route.core import route_message
from tests.plugins.route import NOW, default_workflow, seed_message

SETTINGS = Settings(rules_path=DEFAULT_CONFIG_DIR / "workflow.yaml")


def test_a_replay_does_not_continue_the_case_it_opened() -> None:
    cm = seed_message()
    first = route_message(cm, default_workflow(), now=NOW, settings=SETTINGS)
    assert first.case is not None and first.case.first_message_id == cm.message_id
    # After a rebalance the table already holds the case this message opened.
    open_case, _ = find_case(cm, [first.case], SETTINGS)
    assert open_case is None
    again = route_message(cm, default_workflow(), now=NOW, open_case=open_case, settings=SETTINGS)
    assert again.outcome.outcome == first.outcome.outcome
    assert again.outcome.case_id == first.outcome.case_id
    assert sorted(again.outcome.departments) == sorted(first.outcome.departments)
