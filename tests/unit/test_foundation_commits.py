"""The worker's consumer commits only offsets whose records the agents acknowledged.

Faust's own rules (faust-streaming 0.15.3) commit past unprocessed records in three ways; each
test below shows Faust's answer next to ours (issue 11: two inbound partitions committed to
their end without a record classified).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from pipeline.faust_app import _Consumer, committable, raise_floor

INBOUND = TP("care.inbound", 1)
STATE = TP("care.case-state", 0)


def _consumer(acked: list[int], committed: int | None, read_from: int | None = None) -> Any:
    """The bookkeeping a consumer holds for INBOUND (and no network)."""
    return SimpleNamespace(
        _acked=defaultdict(list, {INBOUND: list(acked)}),
        _acked_index=defaultdict(set, {INBOUND: set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {INBOUND: committed}),
        read_from={} if read_from is None else {INBOUND: read_from},
        _held_back={},
        floor={},
        held=None,
        app=SimpleNamespace(compacted_topics=frozenset({STATE.topic})),
        log=logging.getLogger("test"),
    )


def test_the_run_must_start_at_the_committed_offset() -> None:
    assert committable([5, 6, 7], 5) == (8, [])
    assert committable([5, 6, 8, 9], 5) == (7, [8, 9])
    assert committable([6, 7], 5) == (None, [6, 7])  # 5 not acknowledged
    assert committable([3, 4, 5, 6], 5) == (7, [])  # below 5: committed already
    assert committable([0, 1], None) == (None, [0, 1])  # start unknown: nothing


def test_offset_after_the_committed_one_is_not_skipped() -> None:
    # Committed 2 (the next record to process is 2); 3..5 acknowledged, 2 not.
    assert FaustConsumer._new_offset(_consumer([3, 4, 5], committed=2), INBOUND) == 6
    assert _Consumer._new_offset(_consumer([3, 4, 5], committed=2), INBOUND) is None
    c = _consumer([3, 4, 5], committed=2)
    _Consumer._new_offset(c, INBOUND)
    c._acked[INBOUND].append(2)  # once 2 is acknowledged the whole run commits
    assert _Consumer._new_offset(c, INBOUND) == 6


def test_nothing_committed_yet_commits_only_from_where_reading_began() -> None:
    # Nothing committed (Faust keeps None for 0); 40..58 acknowledged, 0..39 not.
    late = list(range(40, 59))
    assert FaustConsumer._new_offset(_consumer(late, committed=None), INBOUND) == 59
    assert _Consumer._new_offset(_consumer(late, None, read_from=0), INBOUND) is None
    assert _Consumer._new_offset(_consumer(late, None), INBOUND) is None  # start unknown
    assert _Consumer._new_offset(_consumer([0, 1, 2], None, read_from=0), INBOUND) == 3


def test_nothing_is_committed_below_what_the_group_committed_before() -> None:
    # The group committed 25 (read at an assignment, or committed here); a later reading
    # answered nothing (so reading began at the first offset) or a lower 18. Committing 10 or
    # 22 would move the group's committed offset back (issue 11: "broker lost records").
    floor = {INBOUND: 0}
    raise_floor(floor, {INBOUND: 25, STATE: None})
    raise_floor(floor, {INBOUND: 18})
    assert floor == {INBOUND: 25}
    replay = _consumer(list(range(10)), None, read_from=0)
    assert _Consumer._new_offset(replay, INBOUND) == 10  # without the floor
    replay = _consumer(list(range(10)), None, read_from=0)
    replay.floor = floor
    assert _Consumer._new_offset(replay, INBOUND) is None
    replay._acked[INBOUND].extend(range(10, 30))  # the replay reaches the floor and goes on
    assert _Consumer._new_offset(replay, INBOUND) == 30
    lower = _consumer([18, 19, 20, 21], committed=18)
    lower.floor = floor
    assert _Consumer._new_offset(lower, INBOUND) is None
    unknown = _consumer([25, 26], committed=None)  # where reading began is unknown: nothing
    unknown.floor = floor
    assert _Consumer._new_offset(unknown, INBOUND) is None


async def test_a_jump_in_fetched_offsets_is_not_counted_on_a_plain_topic() -> None:
    # The fetch handed the agents offset 2, then 58: Faust counts 3..57 as processed.
    faust_c = _consumer([2], committed=2)
    await FaustConsumer._add_gap(faust_c, INBOUND, 3, 58)
    faust_c._acked[INBOUND].append(58)
    assert FaustConsumer._new_offset(faust_c, INBOUND) == 59
    ours = _consumer([2], committed=2)
    await _Consumer._add_gap(ours, INBOUND, 3, 58)
    ours._acked[INBOUND].append(58)
    assert _Consumer._new_offset(ours, INBOUND) == 3
    # compaction leaves real gaps: counted there, as Faust does
    c = _consumer([], committed=None)
    c._acked[STATE] = [10]
    c._committed_offset[STATE] = 10
    await _Consumer._add_gap(c, STATE, 11, 20)
    c._acked[STATE].append(20)
    assert _Consumer._new_offset(c, STATE) == 21


async def test_after_an_agent_crashed_nothing_is_committed() -> None:
    # take_events acknowledges its whole buffer when the agent's loop dies, outputs or not,
    # and Faust commits on the task error.
    commits: list[str] = []

    async def commit() -> None:
        commits.append("commit")

    c = _consumer([0, 1, 2], committed=None, read_from=0)
    c.commit = commit
    await FaustConsumer.on_task_error(c, RuntimeError("output records not acknowledged"))
    assert commits == ["commit"]
    commits.clear()
    await _Consumer.on_task_error(c, RuntimeError("output records not acknowledged"))
    assert commits == [] and "output records not acknowledged" in c.held
    assert _Consumer._filter_committable_offsets(c, [INBOUND]) == {}
