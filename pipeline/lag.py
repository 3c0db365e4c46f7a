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
worker is restarted (its tables and positions belong to data that is gone). Only evidence that
the broker's *data* is gone counts: an input partition's end offset that went back, or is 0
below a processed or committed position (an in-memory broker restarted empty, a topic deleted
and created again), or the group's committed offsets (asked from the broker, ``GroupOffsets``)
vanished for the whole group at once (two partitions or more), or for a partition on two
readings in a row. The committed offsets and ends are remembered across rebalances, so a
partition that comes back after the broker did is checked too. A committed offset that merely
went back while the partition's records are still there is not a loss: a member committed
below an earlier commit (a late or stale commit: Tansu reuses generation numbers, so it is not
fenced; or one made from a low answer mid-rebalance, which ``faust_app._Consumer``'s floor now
prevents on our side), or the broker answered low. It is a WARNING and
``pipeline_consumer_commit_regressions_total``, and the tracker follows the broker's value. (A
committed offset beyond the reported end is not a sign of its own: Tansu under-reports ends,
docs/ARCHITECTURE.md, Broker.)

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

from pipeline.broker import MissedProbes, brokers_answer
from pipeline.bus import start_client
from pipeline.context import Context

log = logging.getLogger(__name__)

__all__ = ["CommitRegression", "Progress", "ProgressTracker", "install"]


@dataclass(frozen=True)
class CommitRegression:
    """A committed offset that went back while its partition's records were still there."""

    tp: tuple[str, int]
    before: int
    now: int
    end: int | None


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
        #: Partitions whose records the broker lost (see the module's docstring): the topic
        #: was deleted and created again, or the broker restarted empty. Never cleared.
        self.lost: set[tuple[str, int]] = set()
        #: The group's committed offset per partition as last read (kept across rebalances).
        self.group_committed: dict[tuple[str, int], int] = {}
        #: The highest end offset read per partition (kept across rebalances).
        self.end_high: dict[tuple[str, int], int] = {}
        #: Partitions whose committed offset was missing on the last reading.
        self.vanished: set[tuple[str, int]] = set()

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

    def observe_group(
        self,
        committed: Mapping[tuple[str, int], int | None],
        ends: Mapping[tuple[str, int], int],
    ) -> list[CommitRegression]:
        """Record one reading of the group's committed offsets (None: none) and the
        partitions' end offsets; returns the committed offsets that went back with the
        partition's records still there (not a loss: the caller warns)."""
        regressions: list[CommitRegression] = []
        vanished: set[tuple[str, int]] = set()
        for tp, offset in committed.items():
            before = self.group_committed.get(tp, 0)
            end = ends.get(tp)
            if end is not None:
                # Emptied or went back: the records are gone, whoever committed what.
                if end < self.end_high.get(tp, 0) or (end == 0 and before > 0):
                    self.lost.add(tp)
                self.end_high[tp] = max(end, self.end_high.get(tp, 0))
            if offset is None:
                if before > 0:
                    vanished.add(tp)
                continue
            if offset < before and tp not in self.lost:
                regressions.append(CommitRegression(tp, before, offset, end))
            self.group_committed[tp] = offset
        known = {tp for tp, offset in self.group_committed.items() if offset > 0}
        if len(vanished) > 1 and vanished >= known:
            self.lost |= vanished  # the whole group's offsets are gone at once
        else:
            self.lost |= vanished & self.vanished  # gone on two readings in a row
        self.vanished = vanished
        return regressions

    def committed_by_topic(self) -> dict[str, int]:
        """The group's committed offsets as last read, summed per topic."""
        total: dict[str, int] = {}
        for (topic, _), offset in self.group_committed.items():
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

    async def ends(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """End offset per partition (after ``committed``, which connects the probe)."""
        if self._probe is None or not tps:
            return {}
        ends = await self._probe.end_offsets([TopicPartition(*tp) for tp in sorted(tps)])
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

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

    failures = MissedProbes()
    group = GroupOffsets(s.kafka_bootstrap_servers or "", str(app.conf.id))

    async def measure() -> None:
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
            asked = {(tp.topic, tp.partition) for tp in held} | set(tracker.group_committed)
            by_group = await asyncio.wait_for(group.committed(asked), s.request_timeout_s)
            # Read after the committed offsets: an end is then at least as new as they are.
            group_ends = await asyncio.wait_for(group.ends(asked), s.request_timeout_s)
        except (TimeoutError, OSError, KafkaError, ConsumerNotStarted) as exc:
            # Not started yet, a rebalance in between, or the broker away: next tick. Twice in
            # a row (a topic gone, the broker unreachable) is unhealthy: /healthz says so.
            await group.close()
            unhealthy = failures.missed()
            log.warning("consumer lag not measured (%d in a row): %r", failures.in_a_row, exc)
            if unhealthy:
                ctx.status["consumer"] = f"broker not answering for input partitions: {exc!r}"
            return
        for r in tracker.observe_group(by_group, group_ends):
            ctx.metrics.consumer_commit_regressions.labels(topic=r.tp[0]).inc()
            log.warning(
                "the group's committed offset of %s[%d] went back from %d to %d with its "
                "records still there (end %s): a member committed below an earlier commit; "
                "not a loss",
                r.tp[0],
                r.tp[1],
                r.before,
                r.now,
                r.end,
            )
        for gtp in sorted(tracker.vanished - tracker.lost):
            log.warning("the group's committed offset of %s[%d] is missing", *gtp)
        for topic, total in tracker.committed_by_topic().items():
            ctx.metrics.consumer_committed.labels(topic=topic).set(total)
        failures.answered()
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
