"""RouterRecovery: the agents' queues are cleared before the new stream partitions are fetched."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from pipeline.recovery import RouterRecovery

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

    consumer = SimpleNamespace(
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


async def test_queues_are_cleared_before_stream_partitions_resume() -> None:
    calls: list[str] = []
    recovery = RouterRecovery(_fake_app(calls), _fake_tables())  # type: ignore[arg-type]
    await recovery.on_recovery_completed(generation_id=3)
    resume = f"resume_partitions{[tuple(STREAM), tuple(COMMITTED)]}"
    assert resume in calls, calls  # only the stream partitions, not the changelog
    assert calls.index("clear_queues") < calls.index(resume) < calls.index("perform_seek")
    # the partition with nothing committed reads from its start; the other stays sought
    assert calls[calls.index("perform_seek") + 1 :] == [
        "seek care.task-updates[0] 0", "rebalance_end"
    ]
    assert calls.count("clear_queues") == 1, "cleared again after fetching resumed"
    assert recovery.completed.is_set()


async def test_a_newer_rebalance_leaves_the_partitions_alone() -> None:
    calls: list[str] = []
    recovery = RouterRecovery(_fake_app(calls), _fake_tables())  # type: ignore[arg-type]
    await recovery.on_recovery_completed(generation_id=2)
    assert calls == [] and not recovery.completed.is_set()
