"""Standby copies: a worker's CPU per changelog record it applies to a standby copy.

    python bench/standby_apply.py [--records 40000] [--bytes 1000] [--rounds 2]

With two workers (``PIPELINE_TABLE_STANDBY_REPLICAS`` 1, the default) every table changelog
record one worker writes, the other reads and applies to its copy; the pipeline writes about
four per message (issue 16). Per round, two worker processes of a bare ``RouterApp`` with
the pipeline's ``RouterTableManager`` and one table (raw keys, JSON text values, as
``Context.table`` makes them) join one group on the broker (the embedded Tansu unless
KAFKA_BOOTSTRAP_SERVERS is set); the bench then writes --records records of --bytes to the
table's changelog itself, spread over its partitions, and waits until each partition's
standby holder has read its last one (each worker reports its standby offsets to a file ten
times a second). A round's figure is both workers' CPU from the first record written until
then, less what they use idle (measured just before), per record. The two ways of applying
a record alternate round by round, each on fresh workers and topics:

* faust: Faust's path (the conductor, the changelog queue, ``Recovery._slurp_changelogs``);
* direct: ``RouterRecovery.take_changelog`` from the worker's fetch loop
  (``faust_app._Consumer._drain_messages``), what the worker does.

Prints each round and the medians, and direct/faust.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from pipeline import bus
from pipeline.broker import broker_for
from pipeline.config import Settings
from pipeline.runtime import child_env, children, own_stack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_throughput import cpu_s  # the throughput bench's /proc reader

TABLE = "copies"

WORKER = """
import asyncio, json, os, faust
from pipeline.faust_app import RouterApp
from pipeline.recovery import RouterRecovery, RouterTableManager
from pipeline.config import Settings
from pipeline.runtime import use_event_loop
if os.environ["BENCH_PATH"] == "faust":
    async def _decline(self, tp, message):
        return False
    RouterRecovery.take_changelog = _decline
s = Settings()
use_event_loop(s.event_loop)
datadir = s.data_dir / "bench" / f"{s.app_id}-{os.getpid()}"
datadir.mkdir(parents=True, exist_ok=True)
app = RouterApp(s.app_id, broker=f"kafka://{s.kafka_bootstrap_servers}", store="memory://",
    datadir=str(datadir), web_enabled=False, broker_session_timeout=s.session_timeout_s,
    broker_rebalance_timeout=s.session_timeout_s, broker_heartbeat_interval=1.0,
    topic_partitions=s.partitions, table_standby_replicas=s.table_standby_replicas,
    consumer_auto_offset_reset="earliest", autodiscover=False,
    TableManager=RouterTableManager)
app.fetch_max_wait_ms = s.fetch_max_wait_ms
table = app.Table(os.environ["BENCH_TABLE"], key_type=str, value_type=str, partitions=s.partitions,
    use_partitioner=True)
table.key_serializer = "raw"  # as the pipeline's tables (Context.table)
table.changelog_topic = table._new_changelog_topic()
report = os.environ["BENCH_REPORT"]
@app.timer(0.1)
async def offsets():
    standby = app.tables.recovery.standby_offsets
    data = {str(tp.partition): off for tp, off in standby.items() if off is not None}
    with open(report + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(report + ".tmp", report)
worker = faust.Worker(app, loglevel="WARNING", quiet=True)
worker.spinner = None
worker.execute_from_commandline()
"""


def read_offsets(paths: list[Path]) -> dict[int, int]:
    """Each partition's highest standby offset any worker reported."""
    out: dict[int, int] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for part, offset in data.items():
            out[int(part)] = max(out.get(int(part), -1), int(offset))
    return out


async def write_changelog(s: Settings, topic: str, n: int, size: int) -> dict[int, int]:
    """``n`` records of ``size`` bytes on ``topic``; the last offset of each partition."""
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        last: dict[int, int] = {}
        futures = []
        for i in range(n):
            key = f"customer-{i % 5000}".encode()
            text = (f'{{"i":{i},"pad":"' + "x" * size)[: size - 4] + '"}'
            value = orjson.dumps(text)  # a table's value: its JSON text as a JSON string
            futures.append(await producer.send(topic, value=value, key=key))
        for meta in await asyncio.gather(*futures):
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
        return last
    finally:
        await producer.stop()


def until_read(paths: list[Path], last: dict[int, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = read_offsets(paths)
        if all(seen.get(p, -1) >= off for p, off in last.items()):
            return
        time.sleep(0.02)
    raise TimeoutError(f"standby copies did not catch up within {timeout_s:.0f}s")


def one_round(base: Settings, path: str, args: argparse.Namespace) -> float:
    """CPU ms per standby record of one round (fresh workers and topics)."""
    s = own_stack(base, "standby", table_standby_replicas=1)
    reports = [s.data_dir / "bench" / f"{s.app_id}-{k}.json" for k in range(2)]
    reports[0].parent.mkdir(parents=True, exist_ok=True)
    changelog = f"{s.app_id}-{TABLE}-changelog"
    asyncio.run(bus.ensure_topics(s, [changelog]))
    with children() as group:
        for k, report in enumerate(reports):
            env = child_env(s, BENCH_PATH=path, BENCH_REPORT=str(report), BENCH_TABLE=TABLE)
            proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
            group.procs.append((f"worker-{k}", proc))
        # both joined, each with its standby partitions: one record per partition read back
        first = asyncio.run(write_changelog(s, changelog, s.partitions * 4, 100))
        until_read(reports, first, 120)
        time.sleep(s.session_timeout_s)  # a late joiner's rebalance must not fall into the timing
        group.check_alive()
        pids = [proc.pid for _, proc in group.procs]
        idle_from, idle_cpu = time.monotonic(), sum(map(cpu_s, pids))
        time.sleep(2.0)
        idle_rate = (sum(map(cpu_s, pids)) - idle_cpu) / (time.monotonic() - idle_from)
        start, cpu0 = time.monotonic(), sum(map(cpu_s, pids))
        last = asyncio.run(write_changelog(s, changelog, args.records, args.bytes))
        until_read(reports, last, 300)
        spent = sum(map(cpu_s, pids)) - cpu0 - idle_rate * (time.monotonic() - start)
    for report in reports:
        report.unlink(missing_ok=True)
    return spent * 1000 / args.records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=40_000)
    ap.add_argument("--bytes", type=int, default=1000, help="value size (a case: ~1,200)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each path")
    args = ap.parse_args()
    figures: dict[str, list[float]] = {"faust": [], "direct": []}
    with broker_for(Settings()) as s:
        for r in range(args.rounds):
            for path in ("faust", "direct"):
                ms = one_round(s, path, args)
                figures[path].append(ms)
                sys.stdout.write(f"round {r + 1} {path}: {ms * 1000:.1f} µs CPU per record\n")
                sys.stdout.flush()
    med = {k: statistics.median(v) for k, v in figures.items()}
    sys.stdout.write(
        f"standby copies, {args.records} records of {args.bytes} B per round, two workers: "
        f"faust {med['faust'] * 1000:.1f} µs, direct {med['direct'] * 1000:.1f} µs CPU per "
        f"record (medians of {args.rounds}); direct/faust {med['direct'] / med['faust']:.3f}\n"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
