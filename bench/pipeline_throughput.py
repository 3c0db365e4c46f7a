"""Full pipeline vs a bare Faust passthrough agent on the same broker, in one run.

    python bench/pipeline_throughput.py [--n 3000] [--rate 50] [--seconds 20] [--workers 1]
                                        [--rounds 1]

1. Throughput: N InboundMessages are produced to the inbound topic as fast as possible; the
   time until the N-th Outcome appears gives msg/s. The same N records go through a bare
   Faust agent (inbound → outcomes, bytes copied) started the same way, as the baseline.
2. Latency at a fixed rate (measured first, on an idle worker): messages are produced at
   --rate msg/s for --seconds; each one's end-to-end latency is the time its Outcome was read
   minus the time it was produced.
3. Fan-out latency (pipeline only): --fanout Russian messages like the seed example, each
   with a store complaint and a loyalty request, spread over the six stores so that no mass
   incident forms (threshold 5 per store), at 2 msg/s. Measured per message: produce → the
   internal SubRequest on tasks.loyalty-it, and produce → the director's e-mail received by the
   SMTP sink (the external sub-request really delivered).
Both workers are separate processes on the same app class, ``faust_app.RouterApp`` (its
fetch wait, commit rules and record hand-over: the pipeline's framework is the baseline's).
``--workers N``: N processes per phase in one consumer group, for both phases; CPU, memory
and requests are then summed over the N; with N > 1 each pipeline worker also keeps standby
copies of the others' tables (``PIPELINE_TABLE_STANDBY_REPLICAS``, 1 unless set). The
embedded broker is started unless KAFKA_BOOTSTRAP_SERVERS is set. Prints figures and the
ratios, and each worker's resident memory (VmRSS/VmHWM from /proc) before and after the
flat-out phase, and the records per message: every record on the run's topics and the
worker's table changelogs once the worker is quiet, divided by the messages produced to
inbound in all phases.
Also per message: the produce requests each worker sent (all phases, and in the flat-out
phase until the worker is quiet: at a fixed rate each message's outputs go alone) and, in
the flat-out phase up to the N-th Outcome, its fetch requests and CPU time (user + system;
the embedded broker's too: it shares the machine's cores with the worker);
requests are counted in the worker by a wrapper of aiokafka's sender and fetcher
(``COUNTER``). CPU time holds on a shared, noisy machine where the msg/s ratio does not.

``--rounds K``: the flat-out phase K times per phase, each with fresh customers and once the
worker is quiet again; the figures of the flat-out phase are the medians of the K rounds (each
round's msg/s is printed too). A phase takes a few seconds, so one slow second of a shared
machine moved the ratio by a tenth between runs of the same code. Both phases' workers are up
together, and their rounds alternate (passthrough, pipeline, passthrough...): run one after
the other, a host whose speed changed between the phases moved the ratio (the pipeline's CPU
per message spread by 1.8× over rounds of one tree, the broker's with it). The worker not
being timed is idle meanwhile (its fetch polls; the pipeline's timers). Each pair of rounds
(passthrough round i, pipeline round i) also gets its own ratio, and their median is printed:
a drift slower than a pair cancels out of it.

The N-th Outcome is not the end of the pipeline's work: the customers' replies are delivered
after it (and the case keeper applies the cases' states). So the pipeline's flat-out phase is
also measured to its last delivery (HTTP webhook or SMTP, into the bench's outbox): msg/s and
worker CPU per message with every reply delivered, and that rate against the passthrough's.
The bench's local channels are not rate limited (``PIPELINE_DELIVERY_RATE_LIMITS={}``): with
the production defaults (webhook 20/s) the replies of the flat-out phase would trickle out
for minutes after it, and the paced phase's (0.93 per message at 50 msg/s) pile up.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.events import Channel, InboundMessage, SubRequest, derive_id, utcnow
from pipeline.outbox import Outbox, OutboxItem
from pipeline.runtime import child_env, children, departments, wait_http

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "bitext_customer_support" / "bitext_20k_utterances.csv"
SAMPLES = ROOT / "pipeline" / "resources" / "samples" / "messages.jsonl"

# Prepended to each worker's script: counts the produce and fetch requests aiokafka sends
# (every producer and consumer of the process) and writes them to $BENCH_COUNTS twice a second.
COUNTER = """
import json, os, threading, time
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.producer.sender import Sender
_counts = {"produce": 0, "fetch": 0}
_send = Sender._send_produce_req
_fetch = Fetcher._proc_fetch_request
async def _counted_send(self, node_id, batches):
    _counts["produce"] += 1
    return await _send(self, node_id, batches)
async def _counted_fetch(self, *args):
    _counts["fetch"] += 1
    return await _fetch(self, *args)
Sender._send_produce_req = _counted_send
Fetcher._proc_fetch_request = _counted_fetch
def _dump(path=os.environ["BENCH_COUNTS"]):
    while True:
        with open(path + ".tmp", "w") as f:
            json.dump(_counts, f)
        os.replace(path + ".tmp", path)
        time.sleep(0.5)
threading.Thread(target=_dump, daemon=True).start()
"""

WORKER = (
    COUNTER
    + """
import runpy, sys
sys.argv = ["pipeline.cli", "worker"]
runpy.run_module("pipeline.cli", run_name="__main__", alter_sys=True)
"""
)

PASSTHROUGH = (
    COUNTER
    + """
import os, faust
from pipeline.faust_app import RouterApp
from pipeline.config import Settings
from pipeline.runtime import use_event_loop
s = Settings()
use_event_loop(s.event_loop)  # the pipeline worker's loop, for a fair baseline
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
worker = faust.Worker(app, loglevel="WARNING", quiet=True)
worker.spinner = None  # as the pipeline worker: no terminal escapes in the output
worker.execute_from_commandline()
"""
)


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


async def read_from_start(
    s: Settings,
    topic: str,
    done: asyncio.Event,
    take: Callable[[ConsumerRecord[bytes, bytes], float], None],
    poll_ms: int = 200,
) -> None:
    """Read ``topic`` from its start until ``done`` is set: ``take(record, read_at)`` for each
    record (``read_at``: ``time.perf_counter()`` when its batch was read)."""
    async with bus.reader(s, topic) as c:
        while not done.is_set():
            batch = await c.getmany(timeout_ms=poll_ms)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    take(r, now)


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

    want = {m.message_id.encode() for m in msgs}

    def take(r: ConsumerRecord[bytes, bytes], now: float) -> None:
        nonlocal got
        if r.key in want:  # not what earlier phases left on the topic
            want.discard(r.key)
            got += 1
            if r.key in sent_at:
                latencies.append(now - sent_at[r.key])
        if not want:
            done.set()

    task = asyncio.create_task(read_from_start(s, s.topic("outcomes"), done, take))
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


STORES = [
    "на Садовой, 12",
    "на Тверской, 7",
    "на Ленинском, 45",
    "на Малышева, 30",
    "на Баумана, 19",
    "на Красном проспекте, 25",
]
GOODS = ["огурцы", "творог", "молоко", "хлеб"]


def fanout_messages(n: int, run: str) -> list[InboundMessage]:
    """Seed-like messages: a store complaint and a loyalty request, stores in turn."""
    out = []
    for i in range(n):
        text = (
            f"Добрый день. В магазине {STORES[i % len(STORES)]} продают несвежие "
            f"{GOODS[(i // len(STORES)) % len(GOODS)]}. А ещё на кассе не списались бонусы "
            "с карты лояльности."
        )
        m = make(text, i, run + "f")
        out.append(m.model_copy(update={"language": "ru", "customer_id": f"fan-{run}-{i}"}))
    return out


async def fanout_latency(
    s: Settings, msgs: list[InboundMessage], mail_at: dict[str, float], rate: float
) -> tuple[list[float], list[float]]:
    """Produce msgs at ``rate``; latencies to the internal task and to the delivered e-mail."""
    sent_at: dict[str, float] = {}
    to_task: dict[str, float] = {}
    external: dict[str, str] = {}  # sub-request id → message id
    want = {m.message_id for m in msgs}
    done = asyncio.Event()

    async def watch() -> None:
        topics = [s.topic("tasks.loyalty-it"), s.topic("external")]
        async with bus.reader(s, *topics) as c:
            while not done.is_set():
                batch = await c.getmany(timeout_ms=100)
                now = time.perf_counter()
                for tp, records in batch.items():
                    for r in records:
                        sub = SubRequest.model_validate_json(r.value or b"{}")
                        if sub.message_id not in want:
                            continue
                        if tp.topic == s.topic("external"):
                            external[sub.sub_request_id] = sub.message_id
                        else:
                            to_task.setdefault(sub.message_id, now)

    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=0, acks=1)
    await producer.start()
    task = asyncio.create_task(watch())
    await asyncio.sleep(1.0)
    t0 = time.perf_counter()
    try:
        for i, m in enumerate(msgs):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[m.message_id] = time.perf_counter()
            await producer.send(s.topic("inbound"), value=encode(m), key=m.customer_id.encode())
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            mailed = {external[sr] for sr in external if sr in mail_at}
            if len(to_task) == len(msgs) and len(mailed) == len(msgs):
                break
            await asyncio.sleep(0.2)
    finally:
        done.set()
        await task
        await producer.stop()
    task_lat = [to_task[mid] - sent_at[mid] for mid in to_task]
    mail_lat = [mail_at[sr] - sent_at[mid] for sr, mid in external.items() if sr in mail_at]
    return task_lat, mail_lat


async def count_records(s: Settings) -> dict[str, int]:
    """Records on every topic of the run (its prefix) and of the worker's app id (table
    changelogs), by topic name without the prefix; read until the counts stop moving."""
    probe = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers)
    await probe.start()
    try:
        names = sorted(
            t
            for t in await probe.topics()
            if t.startswith(s.topic_prefix) or (t.startswith(s.app_id) and "__assignor" not in t)
        )
    finally:
        await probe.stop()
    counts: dict[str, int] = {}
    while True:  # outputs still in flight (deliveries, case updates) count too
        records = await bus.read_all(s, names, idle_s=2.0, max_s=120.0)
        now: dict[str, int] = {}
        for r in records:
            name = r.topic.removeprefix(s.topic_prefix).removeprefix(s.app_id + "-")
            now[name] = now.get(name, 0) + 1
        if now == counts:
            return counts
        counts = now
        await asyncio.sleep(2.0)


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) of a process in MB, from /proc (Linux)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = float(value.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuTrace:
    """The processes' summed CPU seconds, sampled every ``every`` s in a thread: the CPU used
    up to a moment known only later (the last delivery) without the idle time after it."""

    def __init__(self, pids: list[int], every: float = 0.1) -> None:
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), sum(cpu_s(p) for p in self.pids)))
            self.stop.wait(self.every)

    def __enter__(self) -> CpuTrace:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def at(self, moment: float) -> float:
        """CPU seconds at the first sample at or after ``moment`` (the last one if none)."""
        return next((cpu for t, cpu in self.samples if t >= moment), self.samples[-1][1])


def broker_pid() -> int | None:
    """The embedded broker this bench started (a child whose command is Tansu's), if any."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and Path(command.decode()).name == "tansu":
            return int(entry.name)
    return None


def requests_sent(paths: list[Path]) -> dict[str, int]:
    """The produce and fetch requests the workers sent so far (``COUNTER``), summed; waits
    for their next dump."""
    time.sleep(1.0)
    total = {"produce": 0, "fetch": 0}
    for path in paths:
        for name, n in json.loads(path.read_text()).items():
            total[name] += int(n)
    return total


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def profiler(out: Path | None, name: str, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the worker through the flat-out phase (its collapsed stacks go to
    ``out``/<name>.txt: one line per stack with its sample count)."""
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    target = out / f"{name}.txt"
    cmd = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    return subprocess.Popen([*cmd, "--nonblocking", "-o", str(target)])


def flat_out(
    s: Settings,
    args: argparse.Namespace,
    pool: list[str],
    run: str,
    pids: list[int],
    counts: list[Path],
    delivered_at: list[float],
    spy_as: str | None,
) -> dict[str, float]:
    """One flat-out round: ``args.n`` messages of fresh customers as fast as possible; its
    figures once the worker is quiet again (``spy_as``: py-spy files named so, ``--profile``)."""
    msgs = [make(pool[(i * 7919) % len(pool)], i, run) for i in range(args.n)]
    sent_before = requests_sent(counts)
    broker = broker_pid()
    spy_to = args.profile if spy_as is not None else None
    spies = [profiler(spy_to, f"{spy_as}-{k}", pid) for k, pid in enumerate(pids)]
    cpu_before = sum(cpu_s(pid) for pid in pids)
    broker_before = cpu_s(broker) if broker else float("nan")
    own_before = time.process_time()  # this process: producer, Outcome reader, outbox sink
    trace = CpuTrace(pids)
    with trace:
        secs, _ = asyncio.run(produce_and_count(s, msgs, None))
        flat_from = time.perf_counter() - secs  # its first record was produced then
        outcome_at = flat_from + secs
        for spy in spies:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(60)
        cpu_flat = sum(cpu_s(pid) for pid in pids) - cpu_before
        broker_flat = cpu_s(broker) - broker_before if broker else float("nan")
        own_flat = time.process_time() - own_before
        fetches = requests_sent(counts)["fetch"] - sent_before["fetch"]
        rss_after = sum(memory_mb(pid)[0] for pid in pids)
        # from the last Outcome until quiet: the deliveries and case updates left behind
        tails = [profiler(spy_to, f"{spy_as}-tail-{k}", pid) for k, pid in enumerate(pids)]
        asyncio.run(count_records(s))  # returns once the worker is quiet
        for spy in tails:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
    sent_after = requests_sent(counts)
    flat_deliveries = [t for t in delivered_at if t > flat_from]
    done_at = max([outcome_at, *flat_deliveries])
    return {
        "msg_s": args.n / secs,
        "cpu_ms": cpu_flat * 1000 / args.n,
        "broker_cpu_ms": broker_flat * 1000 / args.n,
        "bench_cpu_ms": own_flat * 1000 / args.n,
        "fetches": fetches / args.n,
        "produces_flat": (sent_after["produce"] - sent_before["produce"]) / args.n,
        # to the last delivery, if any came after the N-th Outcome (CPU sampled every 0.1 s)
        "done_msg_s": args.n / (done_at - flat_from),
        "delivered": float(len(flat_deliveries)),
        "cpu_done_ms": (trace.at(done_at) - cpu_before) * 1000 / args.n,
        "rss_after": rss_after,
    }


def run_phase(
    s: Settings, name: str, args: argparse.Namespace, pool: list[str]
) -> Generator[None, None, dict[str, float]]:
    """One phase's workers: started, warmed up and timed at the fixed rate, then a pause
    (``yield``) before each flat-out round, so that ``alternate`` runs the phases' rounds in
    turn; after the last round the phase stops and returns its figures."""
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
    mail_at: dict[str, float] = {}
    delivered_at: list[float] = []

    def arrived(item: OutboxItem) -> None:
        delivered_at.append(time.perf_counter())
        # External e-mails carry their sub-request id in the subject.
        for word in re.split(r"[\s\[\]/]+", item.subject or ""):
            if word.startswith("sr_"):
                mail_at.setdefault(word, time.perf_counter())

    # replies and e-mails are really delivered (HTTP, SMTP), as in production
    outbox = Outbox(on_item=arrived).start()
    counts = [s.data_dir / "bench" / f"{s.app_id}-{k}-requests.json" for k in range(args.workers)]
    counts[0].parent.mkdir(parents=True, exist_ok=True)
    with children() as group:
        script = PASSTHROUGH if name == "passthrough" else WORKER
        ports = [s.web_port] + [free_port() for _ in range(args.workers - 1)]
        for k, (port, path) in enumerate(zip(ports, counts, strict=True)):
            own = s.model_copy(update={"web_port": port})
            env = child_env(
                own, **outbox.env(), BENCH_COUNTS=str(path), PIPELINE_DELIVERY_RATE_LIMITS="{}"
            )
            proc = subprocess.Popen([sys.executable, "-c", script], env=env)
            group.procs.append((f"{name}-{k}", proc))
        if name == "pipeline":
            for port in ports:
                wait_http(f"http://{s.web_host}:{port}/healthz", 300, group)
        # warm-up: the consumer group must be joined before timing
        warm = [make(pool[i % len(pool)], i, run + "w") for i in range(20)]
        asyncio.run(produce_and_count(s, warm, None))
        if args.workers > 1:  # a late joiner's rebalance must not fall into the timed phases
            time.sleep(s.session_timeout_s)
            warm = [make(pool[i % len(pool)], i, run + "v") for i in range(20)]
            asyncio.run(produce_and_count(s, warm, None))
        # Latency first, on an idle worker: after the flat-out phase the worker still has
        # deliveries and case updates queued, which would be measured instead.
        n_rate = int(args.rate * args.seconds)
        paced = [make(pool[(i * 104729) % len(pool)], i, run + "p") for i in range(n_rate)]
        _, lat = asyncio.run(produce_and_count(s, paced, args.rate))
        fan: dict[str, float] = {}
        if name == "pipeline" and args.fanout:
            task_lat, mail_lat = asyncio.run(
                fanout_latency(s, fanout_messages(args.fanout, run), mail_at, 2.0)
            )
            fan = {
                "fan_n": float(args.fanout),
                "task_n": float(len(task_lat)),
                "task_p50": pct(task_lat, 50) * 1000,
                "task_p99": pct(task_lat, 99) * 1000,
                "mail_n": float(len(mail_lat)),
                "mail_p50": pct(mail_lat, 50) * 1000,
                "mail_p99": pct(mail_lat, 99) * 1000,
            }
        pids = [proc.pid for _, proc in group.procs]
        rss_before = sum(memory_mb(pid)[0] for pid in pids)
        rounds = []
        for k in range(args.rounds):  # fresh customers each round; py-spy through the first
            yield  # meanwhile ``alternate`` runs the other phase's round
            spy_as = None if k else name
            rounds.append(
                flat_out(
                    s, args, pool, f"{run}f{k}" if k else run, pids, counts, delivered_at, spy_as
                )
            )
        rss_peak = sum(memory_mb(pid)[1] for pid in pids)
        sent_after = requests_sent(counts)
        records = asyncio.run(count_records(s))  # returns once the worker is quiet
    outbox.stop()
    result = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result |= {
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "rss_before": rss_before,
        "rss_peak": rss_peak,
    }
    for k in ("msg_s", "cpu_ms", "broker_cpu_ms"):
        result |= {f"{k}:{i}": r[k] for i, r in enumerate(rounds)}
    # Every message of every phase (warm-up, paced, fan-out, flat-out) went in on inbound.
    messages = max(records.get("inbound", 0), 1)
    per = {f"rec:{t}": n / messages for t, n in records.items()}
    totals = {"rec_total": sum(records.values()) / messages}
    totals["produces"] = sent_after["produce"] / messages
    return {**result, **fan, **totals, **per}


def alternate(
    *phases: Generator[None, None, dict[str, float]],
) -> list[dict[str, float]]:
    """Start the phases one after the other, then run their flat-out rounds in turn (round 1
    of each, round 2 of each...): a shared machine's speed drifts over minutes, and each
    phase's rounds then see the same drift. Each phase's figures, in order."""
    results: dict[int, dict[str, float]] = {}
    try:
        for phase in phases:
            next(phase)  # started: warmed up, paced latency measured, before its first round
        while len(results) < len(phases):
            for i, phase in enumerate(phases):
                if i not in results:
                    try:
                        next(phase)
                    except StopIteration as done:
                        results[i] = done.value
    finally:
        for phase in phases:  # one failed: the others' workers are stopped too
            phase.close()
    return [results[i] for i in range(len(phases))]


def pair_ratios(base: dict[str, float], full: dict[str, float], rounds: int) -> list[float]:
    """Pipeline msg/s over passthrough msg/s of each round pair: round i of both phases ran
    back to back (``alternate``), so their ratio sees one speed of the host."""
    return [full[f"msg_s:{i}"] / base[f"msg_s:{i}"] for i in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fanout", type=int, default=24, help="seed-like messages (0: skip)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes per phase, one consumer group (at most PIPELINE_PARTITIONS)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: py-spy stacks of each worker, flat-out phase (<phase>-<k>.txt) and "
        "from its last Outcome until quiet (<phase>-tail-<k>.txt)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="flat-out rounds per phase (fresh customers each); the medians are printed",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pool = texts()
    random.Random(1).shuffle(pool)
    if not 1 <= args.workers <= Settings().partitions:
        parser.error("--workers must be between 1 and PIPELINE_PARTITIONS")
    with broker_for(Settings()) as s:
        base, full = alternate(
            run_phase(s, "passthrough", args, pool), run_phase(s, "pipeline", args, pool)
        )
    out = sys.stdout.write
    out(
        f"broker: {'external' if os.environ.get('KAFKA_BOOTSTRAP_SERVERS') else 'embedded Tansu'}"
        f", n={args.n}, paced {args.rate:g} msg/s for {args.seconds:g}s, "
        f"{args.workers} worker process(es) per phase, table standby replicas "
        f"{s.table_standby_replicas} (PIPELINE_TABLE_STANDBY_REPLICAS), both phases on "
        f"{s.event_loop} (PIPELINE_EVENT_LOOP)\n"
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
    if args.rounds > 1:
        pairs = pair_ratios(base, full, args.rounds)
        out(
            f"ratio of each round's pair (passthrough round i, then pipeline round i): "
            f"{', '.join(f'{r:.3f}' for r in pairs)}; median {statistics.median(pairs):.3f}\n"
        )
        for label, r in (("passthrough", base), ("pipeline", full)):
            each = ", ".join(
                f"{r[f'msg_s:{i}']:.0f} msg/s "
                f"({r[f'cpu_ms:{i}']:.2f}/{r[f'broker_cpu_ms:{i}']:.2f})"
                for i in range(args.rounds)
            )
            out(
                f"{label} in each of the {args.rounds} rounds (medians above; CPU ms per message "
                f"to the last Outcome, worker/broker): {each}\n"
            )
    out(
        f"pipeline to its last delivery ({full['delivered']:.0f} replies and e-mails delivered "
        f"after the flat-out phase began): {full['done_msg_s']:.0f} msg/s, worker CPU "
        f"{full['cpu_done_ms']:.2f} ms per message; ratio to the passthrough "
        f"{full['done_msg_s'] / base['msg_s']:.3f}\n"
    )
    for label, r in (("passthrough", base), ("pipeline", full)):
        out(
            f"memory {label}: {r['rss_before']:.0f} MB resident before the flat-out phase, "
            f"{r['rss_after']:.0f} MB after, peak {r['rss_peak']:.0f} MB\n"
        )
    out(f"ratio pipeline/passthrough peak memory: {full['rss_peak'] / base['rss_peak']:.2f}\n")
    for label, r in (("passthrough", base), ("pipeline", full)):
        top = sorted(((v, k[4:]) for k, v in r.items() if k.startswith("rec:")), reverse=True)
        out(
            f"records per message {label}: {r['rec_total']:.2f} (every topic incl. changelogs: "
            + ", ".join(f"{name} {v:.2f}" for v, name in top)
            + ")\n"
        )
    for label, r in (("passthrough", base), ("pipeline", full)):
        out(
            f"worker {label}: produce requests per message {r['produces']:.2f} (all phases), "
            f"{r['produces_flat']:.2f} (flat-out phase, until the worker is quiet); flat-out "
            f"phase up to the last Outcome: {r['cpu_ms']:.2f} ms CPU and {r['fetches']:.2f} "
            f"fetch requests per message, the embedded broker's CPU {r['broker_cpu_ms']:.2f} ms "
            f"and this bench's own process (producer, Outcome reader, outbox sink) "
            f"{r['bench_cpu_ms']:.2f} ms per message\n"
        )
    if "fan_n" in full:
        out(
            f"fan-out ({full['fan_n']:.0f} seed-like messages at 2 msg/s): "
            f"internal task p50 {full['task_p50']:.0f} ms p99 {full['task_p99']:.0f} ms "
            f"({full['task_n']:.0f} seen); director's e-mail delivered "
            f"p50 {full['mail_p50']:.0f} ms p99 {full['mail_p99']:.0f} ms "
            f"({full['mail_n']:.0f} seen)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
