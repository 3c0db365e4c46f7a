"""Consumer lag and stall detection for the worker's input topics.

Every ``lag_interval_s`` the worker asks the broker for the end offset of each input
partition it holds and compares it with what it has *processed*: the offset it last
committed (Faust commits only what the agents acknowledged), or the partition's first offset
when it has committed nothing yet. The difference goes to ``pipeline_consumer_lag{topic}``
(the lag ``kafka-consumer-groups`` would show). A partition whose committed offset has not
moved for ``stall_after_s`` while records wait behind it is **stalled** — whether the fetch
stopped or fetched records never reach an agent (the Faust recovery race in
``pipeline.recovery`` looked exactly like that: fetch position at the end, nothing
processed). The worker logs which partitions, sets ``pipeline_consumer_stalled``, and
``/healthz`` answers 503, so a supervisor (systemd, a Kubernetes liveness probe) restarts
it. Nothing is restarted from inside.

The same timer notices a broker that **lost** records, and that stays unhealthy until the
worker is restarted (its tables and positions belong to data that is gone): an input
partition's end offset that went back, or is 0 below a processed position, or the group's
committed offset (asked from the broker, ``GroupOffsets``) that went back or vanished — an
in-memory broker restarted empty, a topic deleted and created again. The committed offsets are
remembered across rebalances, so a partition that comes back after the broker did is checked
too. (A committed offset beyond the reported end is not a sign of its own: Tansu under-reports
ends, docs/ARCHITECTURE.md, Broker.)

The bookkeeping (``ProgressTracker``) is pure; ``install`` is the thin timer around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from faust.exceptions import ConsumerNotStarted

from pipeline.broker import brokers_answer
from pipeline.bus import start_client
from pipeline.context import Context

log = logging.getLogger(__name__)

__all__ = ["Progress", "ProgressTracker", "install"]


@dataclass
class Progress:
    """One partition: processed (committed) offset, end offset, when the former last moved."""

    position: int
    end: int
    moved_at: float


class ProgressTracker:
    """Positions and end offsets of the partitions a worker holds, over time."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.partitions: dict[tuple[str, int], Progress] = {}
        #: Partitions whose records the broker lost (end went back, or empty below what was
        #: processed, or the group's committed offset went back or vanished): the topic was
        #: deleted and created again, or the broker restarted empty. Never cleared.
        self.lost: set[tuple[str, int]] = set()
        #: The highest offset the group ever committed per partition, kept across rebalances
        #: (whoever holds a partition, its committed offset only moves forward).
        self.committed_high: dict[tuple[str, int], int] = {}

    def observe(self, tp: tuple[str, int], position: int, end: int, now: float) -> None:
        """Record a reading; the clock restarts when the position moves or had caught up."""
        old = self.partitions.get(tp)
        # An end offset never goes back on a broker that keeps its data (Tansu under-reports
        # it, but monotonically, so only a drop or an empty partition behind us tells).
        if (old is not None and end < old.end) or (end == 0 and position > 0):
            self.lost.add(tp)
        if old is None or old.position != position or old.end == old.position:
            self.partitions[tp] = Progress(position, end, now)
        else:
            self.partitions[tp] = Progress(position, end, old.moved_at)

    def observe_committed(self, tp: tuple[str, int], committed: int | None) -> None:
        """Record the group's committed offset as the broker reports it (None: none)."""
        high = self.committed_high.get(tp, 0)
        if committed is None or committed < high:
            if high > 0:
                self.lost.add(tp)
            return
        self.committed_high[tp] = committed

    def committed_by_topic(self) -> dict[str, int]:
        """The highest committed offsets seen, summed per topic."""
        total: dict[str, int] = {}
        for (topic, _), offset in self.committed_high.items():
            total[topic] = total.get(topic, 0) + offset
        return total

    def keep_only(self, held: set[tuple[str, int]]) -> None:
        """Forget partitions this worker no longer holds (after a rebalance)."""
        for tp in set(self.partitions) - held:
            del self.partitions[tp]

    def lag_by_topic(self) -> dict[str, int]:
        """Records waiting behind the consumer, per topic."""
        lag: dict[str, int] = {}
        for (topic, _), p in self.partitions.items():
            lag[topic] = lag.get(topic, 0) + max(0, p.end - p.position)
        return lag

    def stalled(self, now: float) -> list[tuple[str, int]]:
        """Partitions with records waiting and a position that has not moved for too long."""
        return sorted(
            tp
            for tp, p in self.partitions.items()
            if p.end > p.position and now - p.moved_at >= self.stall_after_s
        )


class GroupOffsets:
    """The consumer group's committed offsets, as the broker has them (not as Faust does)."""

    def __init__(self, bootstrap_servers: str, group_id: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self._probe: AIOKafkaConsumer | None = None

    async def committed(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Committed offset per partition; None where the group has none."""
        if self._probe is None:
            # Never subscribes, so it never joins the group; it only reads its offsets.
            probe = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=self.group_id,
                enable_auto_commit=False,
            )
            await start_client(probe.start, probe.stop)
            self._probe = probe
        return {tp: await self._probe.committed(TopicPartition(*tp)) for tp in sorted(tps)}

    async def close(self) -> None:
        """Drop the connection (a new one is made on the next call)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.stop()


def install(ctx: Context) -> ProgressTracker:
    """A timer that measures the lag of the worker's input partitions and spots stalls."""
    app = ctx.app
    s = ctx.settings
    tracker = ProgressTracker(s.stall_after_s)

    failures = 0
    group = GroupOffsets(s.kafka_bootstrap_servers or "", str(app.conf.id))

    async def measure() -> None:
        nonlocal failures
        consumer = app.consumer
        changelogs = set(app.tables.changelog_topics)
        try:
            # A dead broker also empties the assignment (nothing to measure below), so ask
            # it directly first.
            if not await brokers_answer(s.kafka_bootstrap_servers or "", s.request_timeout_s):
                raise KafkaConnectionError(f"no broker answers at {s.kafka_bootstrap_servers}")
            held = {tp for tp in consumer.assignment() if tp.topic not in changelogs}
            ends: Mapping[Any, int] = {}
            positions: dict[Any, int | None] = {}
            if held:
                ends = await asyncio.wait_for(consumer.highwaters(*held), s.request_timeout_s)
                # Faust's own record of what it committed (faust-streaming is pinned); read
                # before the group's offsets below, so those are at least as new.
                committed = cast(Any, consumer)._committed_offset
                positions = {tp: committed.get(tp) for tp in held}
                never = [tp for tp, offset in positions.items() if offset is None]
                if never:
                    firsts = await asyncio.wait_for(
                        consumer.earliest_offsets(*never), s.request_timeout_s
                    )
                    positions.update({tp: firsts.get(tp) for tp in never})
            # The group's committed offsets, also of partitions held before (a broker that
            # restarted empty forgets them, whatever the assignment looks like now).
            asked = {(tp.topic, tp.partition) for tp in held} | set(tracker.committed_high)
            by_group = await asyncio.wait_for(group.committed(asked), s.request_timeout_s)
        except (TimeoutError, OSError, KafkaError, ConsumerNotStarted) as exc:
            # Not started yet, a rebalance in between, or the broker away: next tick. Twice in
            # a row (a topic gone, the broker unreachable) is unhealthy: /healthz says so.
            await group.close()
            failures += 1
            log.warning("consumer lag not measured (%d in a row): %r", failures, exc)
            if failures >= 2:
                ctx.status["consumer"] = f"broker not answering for input partitions: {exc!r}"
            return
        for gtp, offset in by_group.items():
            tracker.observe_committed(gtp, offset)
        for topic, total in tracker.committed_by_topic().items():
            ctx.metrics.consumer_committed.labels(topic=topic).set(total)
        failures = 0
        ctx.status.pop("consumer", None)
        now = time.monotonic()
        tracker.keep_only({(tp.topic, tp.partition) for tp in held})
        for tp in held:
            position = positions.get(tp)
            if position is not None and tp in ends:
                tracker.observe((tp.topic, tp.partition), position, ends[tp], now)
        for topic, lag in tracker.lag_by_topic().items():
            ctx.metrics.consumer_lag.labels(topic=topic).set(lag)
        if tracker.lost:
            ctx.status["consumer"] = "broker lost records of " + ", ".join(
                f"{t}[{p}]" for t, p in sorted(tracker.lost)
            )
            log.error("%s: restart this worker", ctx.status["consumer"])
        stalled = tracker.stalled(now)
        ctx.metrics.consumer_stalled.set(len(stalled))
        if stalled:
            ctx.status["stalled"] = [f"{t}[{p}]" for t, p in stalled]
            log.error(
                "consumer stalled for %.0f s with records waiting on %s: restart this worker",
                s.stall_after_s,
                ", ".join(ctx.status["stalled"]),
            )
        else:
            ctx.status.pop("stalled", None)

    async def close_group(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await group.close()

    app.on_before_shutdown.connect(cast(Any, close_group))
    app.timer(s.lag_interval_s)(measure)
    return tracker
