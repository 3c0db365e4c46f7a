"""RouterRecovery: the agents' queues are cleared, and every stream partition sought, before the
new stream partitions are fetched."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from pipeline.recovery import FENCE_KEY, NotReady, RouterRecovery

STREAM = TP("care.task-updates", 0)
COMMITTED = TP("care.task-updates", 1)
CHANGELOG = TP("care-router-cases-changelog", 0)


def _fake_app(calls: list[str]) -> SimpleNamespace:
    def record(name: str, result: Any = None) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            calls.append(name if not args else f"{name}{sorted(map(tuple, args[0]))}")
            return result

        return fake

    async def seek() -> None:
        calls.append("perform_seek")

    async def seek_one(tp: TP, offset: int) -> None:
        calls.append(f"seek {tp.topic}[{tp.partition}] {offset}")

    async def noop(*args: Any, **kwargs: Any) -> None:
        return None

    async def earliest(*tps: TP) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    consumer = SimpleNamespace(
        earliest_offsets=earliest,
        assignment=lambda: {STREAM, CHANGELOG, COMMITTED},
        resume_partitions=record("resume_partitions"),
        resume_flow=record("resume_flow"),
        perform_seek=seek,
        seek=seek_one,
        _committed_offset={TP("care.task-updates", 1): 7},
    )
    return SimpleNamespace(
        conf=SimpleNamespace(stream_recovery_delay=0.0, broker_request_timeout=5.0),
        consumer=consumer,
        consumer_generation_id=3,
        flow_control=SimpleNamespace(resume=record("clear_queues")),
        _fetcher=SimpleNamespace(maybe_start=noop),
        on_rebalance_complete=SimpleNamespace(send=noop),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=record("rebalance_end"),
    )


def _fake_tables() -> SimpleNamespace:
    return SimpleNamespace(
        values=lambda: [],
        changelog_topics={CHANGELOG.topic},
        on_actives_ready=lambda: None,
        on_standbys_ready=lambda: None,
    )


async def test_stream_partitions_resume_only_after_every_seek() -> None:
    calls: list[str] = []
    recovery = RouterRecovery(_fake_app(calls), _fake_tables())  # type: ignore[arg-type]
    await recovery.on_recovery_completed(generation_id=3)
    resume = f"resume_partitions{[tuple(STREAM), tuple(COMMITTED)]}"
    # The queues are cleared first; the seeks (the committed offsets, then the partition with
    # nothing committed to its start) come while the stream partitions are still paused, and
    # only then are they fetched: resumed before the seeks, the fetcher handed the agents
    # records that the seeks then fetched again (issue 11, start-up replay).
    assert calls == [
        "clear_queues",
        "perform_seek",
        "seek care.task-updates[0] 0",
        resume,  # only the stream partitions, not the changelog
        "resume_flow",
        "rebalance_end",
    ], calls
    assert recovery.completed.is_set()


async def test_a_partition_with_an_empty_answer_goes_back_no_further_than_the_floor() -> None:
    # The committed offset read back empty (mid-rebalance on Tansu), but the group is known to
    # have committed 40 here: reading from 0 would replay everything below it.
    calls: list[str] = []
    app = _fake_app(calls)
    app.consumer.floor = {STREAM: 40}
    recovery = RouterRecovery(app, _fake_tables())  # type: ignore[arg-type]
    await recovery.on_recovery_completed(generation_id=3)
    assert "seek care.task-updates[0] 40" in calls, calls


async def test_a_newer_rebalance_leaves_the_partitions_alone() -> None:
    calls: list[str] = []
    recovery = RouterRecovery(_fake_app(calls), _fake_tables())  # type: ignore[arg-type]
    await recovery.on_recovery_completed(generation_id=2)
    assert calls == [] and not recovery.completed.is_set()


async def test_restore_goes_up_to_the_fence_not_the_reported_end() -> None:
    # Tansu reports a changelog's end as the last batch's base offset + 1 (here 5 where the
    # partition really holds offsets 0..8): the fence written after it lands at 9, and the
    # restore must read up to it (Faust's highwater is the last offset to read).
    sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    async def send_and_wait(
        topic: str, key: bytes | None, value: bytes | None, partition: int | None, *_: Any
    ) -> Any:
        sent.append((topic, key, value, partition))
        return SimpleNamespace(offset=9 if partition == 0 else 0)

    async def highwaters(*tps: TP) -> dict[TP, int]:
        return {tp: 5 for tp in tps}

    app = _fake_app([])
    app.producer = SimpleNamespace(send_and_wait=send_and_wait)
    recovery = RouterRecovery(app, _fake_tables())  # type: ignore[arg-type]
    empty = TP(CHANGELOG.topic, 1)
    destination: Counter[TP] = Counter()
    await recovery._build_highwaters(
        SimpleNamespace(highwaters=highwaters), {CHANGELOG, empty}, destination, "active"
    )
    assert destination == {CHANGELOG: 9, empty: 4}  # never below the reported end
    assert sorted(sent) == [
        (CHANGELOG.topic, FENCE_KEY, None, 0),
        (CHANGELOG.topic, FENCE_KEY, None, 1),
    ]
    # the fence is a tombstone of a key no table writes (keys are raw text on the changelog)
    assert FENCE_KEY.decode().startswith("\x00")


def test_not_ready_counts_from_the_first_busy_probe_and_stops_when_ready() -> None:
    clock = NotReady()
    assert clock.observe(busy=False, now=5.0) == 0.0
    assert clock.observe(busy=True, now=10.0) == 0.0  # the clock starts here
    assert clock.observe(busy=True, now=310.0) == 300.0
    assert clock.observe(busy=False, now=311.0) == 0.0  # ready: stopped
    assert clock.observe(busy=True, now=400.0) == 0.0  # the next rebalance starts afresh
    assert clock.observe(busy=True, now=401.5) == 1.5
