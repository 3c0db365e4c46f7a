"""A worker's output path: CPU per record sent a batch per topic partition (``bus.Batches``)
against one ``AIOKafkaProducer.send`` per record, in the same process, alternated.

    cd /work/main && .venv/bin/python bench/output_batches.py [--n 3000] [--repeat 3]

Each run sends what ``--n`` pipeline messages produce before notify (bench/pipeline_throughput.py,
records per message): per message 8 outputs through ``Context.send`` (a classification of
~2 KB, a case snapshot of ~3 KB, an Outcome, case events, a reply, a sub-request ...) and 3
table changelog records through ``Context.write_changelog`` (dedup, customer cases, cases; 1-5
KB), keyed by 997 customers over 8 partitions, and ``Context.flush`` every 256 messages (a
classify batch). The broker is the embedded Tansu (or KAFKA_BOOTSTRAP_SERVERS), a process of
its own, so ``time.process_time`` of the timed runs is the sender's. "per record" is the
same Context with ``Publisher.batchable`` false (a producer it cannot batch on: every record
through ``AIOKafkaProducer.send``, as before issue 16's batches). Prints each one's least CPU
per record of the runs and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bus import Publisher, ensure_topics
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.events import Outcome, OutcomeKind, utcnow
from pipeline.metrics import Metrics
from pipeline.runtime import tune_gc

#: (topic, value bytes) of one message's outputs through ``Context.send``.
OUTPUTS = [
    ("classifications", 2000),
    ("case-state", 3000),
    ("outcomes", 250),
    ("case-events", 600),
    ("case-events", 600),
    ("replies", 800),
    ("tasks.payments", 1200),
    ("outcomes", 250),
]
#: (table changelog topic, value bytes) of one message's table writes.
CHANGELOGS = [("dedup-changelog", 1500), ("customer-cases-changelog", 5000), ("cases", 3000)]
BATCH = 256
CUSTOMERS = 997


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _outcome(size: int) -> Outcome:
    return Outcome(
        message_id=uuid.uuid4().hex,
        outcome=OutcomeKind.routed,
        stage="bench",
        reason="x" * max(size - 200, 0),
        decided_at=utcnow(),
    )


async def run(settings: Settings, n: int, batched: bool) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, records) of one run on a fresh Context and producer."""
    ctx = Context(settings=settings, metrics=Metrics(), app=None)
    ctx.own_outputs(fresh=True)
    if not batched:
        ctx.publisher = Publisher(settings)
        ctx.publisher.batchable = lambda: False  # type: ignore[method-assign]
    events = {size: _outcome(size) for _, size in OUTPUTS}
    values = {size: b"x" * size for _, size in CHANGELOGS}
    names = {t: settings.topic(t) for t, _ in CHANGELOGS}
    await ctx.send("outcomes", "warm-up", events[250])  # the producer started, its metadata
    producer = await ctx.output_publisher()._ensure()
    for t, _ in [*OUTPUTS, *CHANGELOGS]:
        await producer.partitions_for(settings.topic(t))
    await ctx.flush()
    records = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        customer = f"c{i % CUSTOMERS}"
        for topic, size in OUTPUTS:
            await ctx.send(topic, customer, events[size])
        for topic, size in CHANGELOGS:
            ctx.write_changelog(names[topic], customer, values[size])
        records += len(OUTPUTS) + len(CHANGELOGS)
        if (i + 1) % BATCH == 0:
            await ctx.flush()
    await ctx.flush()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await ctx.output_publisher().close()
    return cpu, wall, records


async def measure(settings: Settings, n: int, repeat: int) -> None:
    topics = {t for t, _ in [*OUTPUTS, *CHANGELOGS]}
    await ensure_topics(settings, [settings.topic(t) for t in topics])
    best: dict[str, tuple[float, float, int]] = {}
    for r in range(repeat):
        for name, batched in (("per record", False), ("batched", True)):
            cpu, wall, records = await run(settings, n, batched)
            out(
                f"run {r + 1} {name:>10}: {cpu / records * 1e6:6.1f} µs CPU per record, "
                f"{records / wall:8.0f} records/s ({records} records)\n"
            )
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, wall, records)
    one, batched = (best[k][0] / best[k][2] * 1e6 for k in ("per record", "batched"))
    out(
        f"least CPU per record: per record {one:.1f} µs, batched {batched:.1f} µs; "
        f"ratio batched/per record {batched / one:.2f}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="messages' records per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from pipeline.broker import broker_for

    base = Settings(topic_prefix=f"bench-out-{uuid.uuid4().hex[:6]}.", partitions=8)
    with broker_for(base) as settings:
        tune_gc()
        asyncio.run(measure(settings, args.n, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
