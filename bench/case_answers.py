"""A department's answer → the customer's: the case keeper's latency and rate on a real broker.

    python bench/case_answers.py [--n 6000] [--rate 20] [--seconds 10]
    PYTHONPATH=<tree> python bench/case_answers.py   # the same, another tree's worker

1. N Bitext English messages (bench/pipeline_throughput.py's texts, one customer each) go
   through one pipeline worker, started as that bench starts it (embedded broker unless
   KAFKA_BOOTSTRAP_SERVERS; replies really delivered, to the bench's outbox). The bench reads
   their sub-requests from every task topic and ``external`` once every message has its
   Outcome, leaving out the messages of a category of the workflow's mass incidents (that
   part of theirs is answered by the incident's resolution).
2. Latency at a fixed rate: --rate cases a second for --seconds. A case gets a ``resolved``
   TaskUpdate for each of its sub-requests, in one go; measured per case from its last update
   produced to its ``resolution`` Reply read on ``replies`` (the keeper applied every update,
   the answer is durable).
3. Flat out: the updates of all the other cases as fast as possible; answers per second until
   the last resolution Reply, and the worker's CPU (user + system) per answer.

What it measures is the case keeper's path (``CaseKeeper.run``: apply, send, the ack waits
before a batch is acknowledged), with the rest of the worker idle but for the answers'
deliveries and the SLA timer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer, ConsumerRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_throughput import WORKER, CpuTrace, make, pct, read_from_start, texts

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.domain.workflow import load_workflow
from pipeline.events import (
    ClassifiedMessage,
    Reply,
    ReplyKind,
    SubRequest,
    TaskStatus,
    TaskUpdate,
    utcnow,
)
from pipeline.outbox import Outbox
from pipeline.runtime import child_env, children, departments, wait_http

Cases = dict[str, list[SubRequest]]


async def route_messages(s: Settings, n: int, run: str) -> tuple[Cases, int]:
    """Produce ``n`` messages, one customer each; their cases' sub-requests once quiet, and
    how many messages were left out (a mass incident's category)."""
    pool = texts()
    msgs = [make(pool[(i * 7919) % len(pool)], i, run) for i in range(n)]
    msgs = [m.model_copy(update={"customer_id": f"ans-{run}-{i}"}) for i, m in enumerate(msgs)]
    ours = {m.message_id for m in msgs}
    decided: set[str] = set()
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for m in msgs:
            await producer.send(s.topic("inbound"), value=encode(m), key=m.customer_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    async with bus.reader(s, s.topic("outcomes")) as c:  # every message decided
        deadline = time.perf_counter() + 600
        while ours - decided and time.perf_counter() < deadline:
            batch = await c.getmany(timeout_ms=500)
            decided.update(r.key.decode() for rs in batch.values() for r in rs if r.key)
    # A message of a mass incident's category is answered (that part of it) by the
    # incident's resolution, not by its case's own updates: left out.
    mass = {c for p in load_workflow(s.rules_path).incidents for c in p.categories}
    decided_n = len(ours)
    for r in await bus.read_all(s, [s.topic("classifications")]):
        cm = ClassifiedMessage.model_validate_json(r.value or b"{}")
        if cm.message_id in ours and mass & {i.category for i in cm.intents}:
            ours.discard(cm.message_id)
    topics = [s.topic(f"tasks.{d}") for d in departments(s)] + [s.topic("external")]
    cases: Cases = {}
    async with bus.reader(s, *topics) as c:
        quiet_since = time.perf_counter()
        while time.perf_counter() - quiet_since < 3.0:  # read until quiet for 3 s
            batch = await c.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    sub = SubRequest.model_validate_json(r.value or b"{}")
                    if sub.message_id in ours:
                        cases.setdefault(sub.case_id, []).append(sub)
                        quiet_since = time.perf_counter()
    return cases, decided_n - len(ours)


def answers(case_id: str, subs: list[SubRequest]) -> list[TaskUpdate]:
    """A ``resolved`` update for each sub-request of a case."""
    return [
        TaskUpdate(
            update_id=f"bench-{sub.sub_request_id}",
            sub_request_id=sub.sub_request_id,
            case_id=case_id,
            status=TaskStatus.resolved,
            resolution="Done.",
            author="bench",
            source="department",
            at=utcnow(),
        )
        for sub in subs
    ]


async def answer_cases(s: Settings, cases: Cases, rate: float | None) -> dict[str, float]:
    """Send the cases' updates (``rate`` cases a second, or flat out); seconds from the first
    update to each case's resolution Reply read, and each case's latency from its last update."""
    want = set(cases)
    sent_at: dict[str, float] = {}
    answered: dict[str, float] = {}
    done = asyncio.Event()

    def take(r: ConsumerRecord[bytes, bytes], now: float) -> None:
        reply = Reply.model_validate_json(r.value or b"{}")
        if reply.kind is ReplyKind.resolution and reply.case_id in want:
            answered.setdefault(reply.case_id, now)
        if len(answered) == len(want):
            done.set()

    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=0, acks=1)
    await producer.start()
    task = asyncio.create_task(read_from_start(s, s.topic("replies"), done, take, poll_ms=100))
    await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    try:
        for i, (case_id, subs) in enumerate(cases.items()):
            if rate:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            for update in answers(case_id, subs):
                await producer.send(
                    s.topic("task-updates"), value=encode(update), key=case_id.encode()
                )
            sent_at[case_id] = time.perf_counter()
        await producer.flush()
        await asyncio.wait_for(done.wait(), timeout=300)
    finally:
        done.set()
        await task
        await producer.stop()
    lat = [answered[c] - sent_at[c] for c in answered]
    return {
        "cases": float(len(cases)),
        "seconds": max(answered.values()) - t0,
        "first": t0,
        "last": max(answered.values()),
        "p50": pct(lat, 50) * 1000,
        "p99": pct(lat, 99) * 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000, help="messages routed first")
    ap.add_argument("--rate", type=float, default=20.0, help="cases answered a second (paced)")
    ap.add_argument("--seconds", type=float, default=10.0, help="of the paced phase")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with broker_for(Settings()) as base:
        run = uuid.uuid4().hex[:6]
        s = base.model_copy(
            update={
                "topic_prefix": f"bench{run}.",
                "app_id": f"bench-answers-{run}",
                "web_port": free_port(),
            }
        )
        asyncio.run(bus.ensure_topics(s, departments=departments(s)))
        outbox = Outbox().start()
        counts = s.data_dir / "bench" / f"{s.app_id}-requests.json"
        counts.parent.mkdir(parents=True, exist_ok=True)
        with children() as group:
            env = child_env(
                s, **outbox.env(), BENCH_COUNTS=str(counts), PIPELINE_DELIVERY_RATE_LIMITS="{}"
            )
            proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
            group.procs.append(("worker", proc))
            wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 300, group)
            cases, left_out = asyncio.run(route_messages(s, args.n, run))
            paced_n = min(len(cases) // 2, int(args.rate * args.seconds))
            ids = list(cases)
            paced = {c: cases[c] for c in ids[:paced_n]}
            rest = {c: cases[c] for c in ids[paced_n:]}
            slow = asyncio.run(answer_cases(s, paced, args.rate))
            time.sleep(3.0)  # the paced phase's deliveries done
            with CpuTrace([proc.pid], every=0.02) as cpu:
                fast = asyncio.run(answer_cases(s, rest, None))
            used = cpu.at(fast["last"]) - cpu.at(fast["first"])
        outbox.stop()
    subs = statistics.mean(len(v) for v in cases.values())
    out = sys.stdout.write
    broker = "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "embedded Tansu"
    out(
        f"broker: {broker}; {args.n} messages routed ({left_out} left out: a mass incident's "
        f"category): {len(cases)} cases with sub-requests "
        f"({subs:.2f} sub-requests each, one update per sub-request)\n"
    )
    out(
        f"paced ({slow['cases']:.0f} cases at {args.rate:g} cases/s): last update → the "
        f"customer's answer p50 {slow['p50']:.0f} ms, p99 {slow['p99']:.0f} ms\n"
    )
    out(
        f"flat out ({fast['cases']:.0f} cases): {fast['cases'] / fast['seconds']:.0f} answers/s; "
        f"worker CPU {used / fast['cases'] * 1000:.2f} ms per answer; last update → answer "
        f"p50 {fast['p50']:.0f} ms, p99 {fast['p99']:.0f} ms\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
