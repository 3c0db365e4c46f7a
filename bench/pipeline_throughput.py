"""Full pipeline vs a bare Faust passthrough agent on the same broker, in one run.

    python bench/pipeline_throughput.py [--n 3000] [--rate 50] [--seconds 20]

1. Throughput: N InboundMessages are produced to the inbound topic as fast as possible; the
   time until the N-th Outcome appears gives msg/s. The same N records go through a bare
   Faust agent (inbound → outcomes, bytes copied) started the same way, as the baseline.
2. Latency at a fixed rate (measured first, on an idle worker): messages are produced at
   --rate msg/s for --seconds; each one's end-to-end latency is the time its Outcome was read
   minus the time it was produced.
Both workers are separate processes with the same fetch wait; the embedded broker is
started unless KAFKA_BOOTSTRAP_SERVERS is set. Prints figures and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import random
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.events import Channel, InboundMessage, derive_id, utcnow
from pipeline.outbox import Outbox
from pipeline.runtime import child_env, children, departments, wait_http

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "bitext_customer_support" / "bitext_20k_utterances.csv"
SAMPLES = ROOT / "pipeline" / "resources" / "samples" / "messages.jsonl"

PASSTHROUGH = """
import os, faust
from pipeline.app import RouterApp
from pipeline.config import Settings
s = Settings()
datadir = s.data_dir / "bench" / s.app_id
datadir.mkdir(parents=True, exist_ok=True)
app = RouterApp(s.app_id, broker=f"kafka://{s.kafka_bootstrap_servers}", store="memory://",
    datadir=str(datadir),
    web_enabled=False, producer_linger_ms=0, broker_session_timeout=s.session_timeout_s,
    broker_rebalance_timeout=s.session_timeout_s, broker_heartbeat_interval=1.0,
    topic_partitions=s.partitions, consumer_auto_offset_reset="earliest", autodiscover=False)
app.fetch_max_wait_ms = s.fetch_max_wait_ms
raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
src = app.topic(s.topic("inbound"), **raw)
dst = app.topic(s.topic("outcomes"), **raw)
@app.agent(src)
async def passthrough(stream):
    async for ev in stream.events():
        await dst.send(key=ev.key, value=ev.value)
faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
"""


def texts() -> list[str]:
    if DATA.exists():
        with DATA.open(encoding="utf-8-sig") as f:
            return [r["utterance"] for r in csv.DictReader(f)]
    import json

    return [json.loads(x)["text"] for x in SAMPLES.read_text().splitlines() if x.strip()]


def make(text: str, i: int, run: str) -> InboundMessage:
    cmid = f"{run}-{i}"
    return InboundMessage(
        message_id=derive_id("msg", "webchat", cmid),
        channel=Channel.webchat,
        channel_message_id=cmid,
        customer_id=f"bench-{run}-{i % 997}",
        text=text,
        language="en",
        language_confidence=0.9,
        received_at=utcnow(),
    )


async def produce_and_count(
    s: Settings, msgs: list[InboundMessage], rate: float | None
) -> tuple[float, list[float]]:
    """Produce msgs (at ``rate`` msg/s, or flat out); return (seconds, latencies)."""
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=0, acks=1)
    await producer.start()
    got = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal got
        want = {m.message_id.encode() for m in msgs}
        async with bus.reader(s, s.topic("outcomes")) as c:
            # Skip what earlier phases left on the topic.
            while not done.is_set():
                batch = await c.getmany(timeout_ms=200)
                now = time.perf_counter()
                for records in batch.values():
                    for r in records:
                        if r.key in want:
                            want.discard(r.key)
                            got += 1
                            if r.key in sent_at:
                                latencies.append(now - sent_at[r.key])
                if not want:
                    done.set()

    task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    try:
        for i, m in enumerate(msgs):
            if rate:
                target = t0 + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            key = m.message_id.encode()
            sent_at[key] = time.perf_counter()
            # Outcomes are keyed by message id; the passthrough copies the key, so key by it.
            await producer.send(s.topic("inbound"), value=encode(m), key=key)
        await producer.flush()
        await asyncio.wait_for(done.wait(), timeout=600)
    finally:
        done.set()
        await task
        await producer.stop()
    return time.perf_counter() - t0, latencies


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def run_phase(
    s: Settings, name: str, args: argparse.Namespace, pool: list[str]
) -> dict[str, float]:
    run = uuid.uuid4().hex[:6]
    s = s.model_copy(
        update={
            "topic_prefix": f"bench{run}.",
            "app_id": f"bench-{name}-{run}",
            "web_port": free_port(),
            "session_timeout_s": 6.0,
        }
    )
    asyncio.run(bus.ensure_topics(s, departments=departments(s)))
    outbox = Outbox().start()  # replies are really delivered (over HTTP), as in production
    env = child_env(s, **outbox.env())
    with children() as group:
        if name == "passthrough":
            import subprocess

            proc = subprocess.Popen([sys.executable, "-c", PASSTHROUGH], env=env)
            group.procs.append(("passthrough", proc))
        else:
            group.start("worker", ["worker"], env)
            wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 300, group)
        # warm-up: the consumer group must be joined before timing
        warm = [make(pool[i % len(pool)], i, run + "w") for i in range(20)]
        asyncio.run(produce_and_count(s, warm, None))
        # Latency first, on an idle worker: after the flat-out phase the worker still has
        # deliveries and case updates queued, which would be measured instead.
        n_rate = int(args.rate * args.seconds)
        paced = [make(pool[(i * 104729) % len(pool)], i, run + "p") for i in range(n_rate)]
        _, lat = asyncio.run(produce_and_count(s, paced, args.rate))
        msgs = [make(pool[(i * 7919) % len(pool)], i, run) for i in range(args.n)]
        secs, _ = asyncio.run(produce_and_count(s, msgs, None))
    outbox.stop()
    return {"msg_s": args.n / secs, "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pool = texts()
    random.Random(1).shuffle(pool)
    with broker_for(Settings()) as s:
        base = run_phase(s, "passthrough", args, pool)
        full = run_phase(s, "pipeline", args, pool)
    out = sys.stdout.write
    out(
        f"broker: {'external' if os.environ.get('KAFKA_BOOTSTRAP_SERVERS') else 'embedded Tansu'}"
        f", n={args.n}, paced {args.rate:g} msg/s for {args.seconds:g}s\n"
    )
    out(
        f"passthrough: {base['msg_s']:8.0f} msg/s   p50 {base['p50_ms']:6.0f} ms   "
        f"p99 {base['p99_ms']:6.0f} ms\n"
    )
    out(
        f"pipeline:    {full['msg_s']:8.0f} msg/s   p50 {full['p50_ms']:6.0f} ms   "
        f"p99 {full['p99_ms']:6.0f} ms\n"
    )
    out(f"ratio pipeline/passthrough throughput: {full['msg_s'] / base['msg_s']:.3f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
