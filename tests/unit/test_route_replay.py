"""A replayed message decides as its first pass did, whatever state that pass left behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config import DEFAULT_CONFIG_DIR, Settings
from pipeline.route.agents import find_case
from pipeline.route.core import route_message

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit

SETTINGS = Settings(rules_path=DEFAULT_CONFIG_DIR / "workflow.yaml")


def test_a_replay_does_not_continue_the_case_it_opened(kit: RouteKit) -> None:
    cm = kit.seed_message()
    first = route_message(cm, kit.workflow, now=kit.now, settings=SETTINGS)
    assert first.case is not None and first.case.first_message_id == cm.message_id
    # After a rebalance the table already holds the case this message opened.
    open_case, _ = find_case(cm, [first.case], SETTINGS)
    assert open_case is None
    again = route_message(cm, kit.workflow, now=kit.now, open_case=open_case, settings=SETTINGS)
    assert again.outcome.outcome == first.outcome.outcome
    assert again.outcome.case_id == first.outcome.case_id
    assert sorted(again.outcome.departments) == sorted(first.outcome.departments)
