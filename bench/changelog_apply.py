"""Tables' changelog records: a worker's CPU per record applied to a standby copy or restored.

    python bench/changelog_apply.py [--records 40000] [--bytes 1000] [--rounds 2]

Worker processes of a bare ``RouterApp`` with the pipeline's ``RouterTableManager`` and one
table (raw keys, JSON text values, as ``Context.table`` makes them) on the broker (the
embedded Tansu unless KAFKA_BOOTSTRAP_SERVERS is set); the bench writes --records records of
--bytes to the table's changelog itself, spread over its partitions. Each worker reports
from a thread, every 20 ms, its standby offsets and its CPU (``time.process_time``, all its
threads) when a restore began and ended. Per round, on fresh workers and topics:

* standby: two workers join one group (``PIPELINE_TABLE_STANDBY_REPLICAS`` 1, the default:
  every changelog record one worker writes, the other applies to its copy; the pipeline writes
  about four per message, issue 16). Once each has its standby partitions, the records are
  written, and the figure is both workers' CPU from the first record until each partition's
  standby holder read its last one, less what they use idle (measured just before);
* restore: the records are written first, then one worker starts and restores them all (a
  takeover or a restart does that with the partitions it gets); the figure is its CPU from
  the restore's start to its end (the recovery's own steps, highwaters and seeks, included).

The two ways of applying a record alternate round by round:

* faust: Faust's path (the conductor, the changelog queue, ``Recovery._slurp_changelogs``);
* direct: ``RouterRecovery.take_changelog`` from the worker's fetch loop
  (``faust_app._Consumer._drain_messages``), what the worker does.

Prints each round, the medians and direct/faust, CPU µs per record.
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
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from pipeline import bus
from pipeline.broker import broker_for
from pipeline.config import Settings
from pipeline.runtime import child_env, children, own_stack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_throughput import cpu_s  # the throughput bench's /proc reader

TABLE = "copies"
#: Distinct keys the records are written under (``write_changelog``).
KEYS = 5000

WORKER = """
import json, os, threading, time, faust
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
def _report():
    restore = [None, None]
    while True:
        time.sleep(0.02)
        recovery = app.tables._recovery  # read only: Faust makes it in the worker's loop
        if recovery is None:
            continue
        if recovery.in_recovery and restore[0] is None:
            restore[0] = time.process_time()
        if restore[0] is not None and restore[1] is None and app.tables.actives_ready:
            restore[1] = time.process_time()
        standby = dict(recovery.standby_offsets)
        data = {"standby": {str(tp.partition): o for tp, o in standby.items() if o is not None},
                "restore": restore, "keys": len(table.data)}
        with open(report + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(report + ".tmp", report)
threading.Thread(target=_report, daemon=True).start()
worker = faust.Worker(app, loglevel="WARNING", quiet=True)
worker.spinner = None
worker.execute_from_commandline()
"""


def read_report(path: Path) -> dict[str, Any]:
    """A worker's last report (empty until it wrote one)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def read_offsets(paths: list[Path]) -> dict[int, int]:
    """Each partition's highest standby offset any worker reported."""
    out: dict[int, int] = {}
    for path in paths:
        for part, offset in read_report(path).get("standby", {}).items():
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
            key = f"customer-{i % KEYS}".encode()
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


def start_workers(s: Settings, group: Any, path: str, reports: list[Path]) -> list[int]:
    for k, report in enumerate(reports):
        env = child_env(s, BENCH_PATH=path, BENCH_REPORT=str(report), BENCH_TABLE=TABLE)
        proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
        group.procs.append((f"worker-{k}", proc))
    return [proc.pid for _, proc in group.procs]


def standby_round(s: Settings, path: str, args: argparse.Namespace) -> float:
    """Two workers' CPU µs per record applied to their standby copies."""
    reports = [s.data_dir / "bench" / f"{s.app_id}-{k}.json" for k in range(2)]
    changelog = f"{s.app_id}-{TABLE}-changelog"
    with children() as group:
        pids = start_workers(s, group, path, reports)
        # both joined, each with its standby partitions: one record per partition read back
        first = asyncio.run(write_changelog(s, changelog, s.partitions * 4, 100))
        until_read(reports, first, 120)
        time.sleep(s.session_timeout_s)  # a late joiner's rebalance must not fall into the timing
        group.check_alive()
        idle_from, idle_cpu = time.monotonic(), sum(map(cpu_s, pids))
        time.sleep(2.0)
        idle_rate = (sum(map(cpu_s, pids)) - idle_cpu) / (time.monotonic() - idle_from)
        start, cpu0 = time.monotonic(), sum(map(cpu_s, pids))
        last = asyncio.run(write_changelog(s, changelog, args.records, args.bytes))
        until_read(reports, last, 300)
        spent = sum(map(cpu_s, pids)) - cpu0 - idle_rate * (time.monotonic() - start)
    return spent * 1e6 / args.records


def restore_round(s: Settings, path: str, args: argparse.Namespace) -> float:
    """One worker's CPU µs per record it restores (its restore's start to its end)."""
    report = s.data_dir / "bench" / f"{s.app_id}-0.json"
    changelog = f"{s.app_id}-{TABLE}-changelog"
    asyncio.run(write_changelog(s, changelog, args.records, args.bytes))
    with children() as group:
        start_workers(s, group, path, [report])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            group.check_alive()
            began, ended = read_report(report).get("restore", [None, None])
            if ended is not None:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("the restore did not end within 300 s")
        keys = read_report(report)["keys"]
    if keys != min(args.records, KEYS):
        raise AssertionError(f"restored {keys} keys of {min(args.records, KEYS)}")
    return (ended - began) * 1e6 / args.records


def one_round(base: Settings, kind: str, path: str, args: argparse.Namespace) -> float:
    """CPU µs per record of one round (fresh workers and topics)."""
    s = own_stack(base, kind, table_standby_replicas=1)
    (s.data_dir / "bench").mkdir(parents=True, exist_ok=True)
    asyncio.run(bus.ensure_topics(s, [f"{s.app_id}-{TABLE}-changelog"]))
    try:
        return (standby_round if kind == "standby" else restore_round)(s, path, args)
    finally:
        for report in (s.data_dir / "bench").glob(f"{s.app_id}-*.json"):
            report.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=40_000)
    ap.add_argument("--bytes", type=int, default=1000, help="value size (a case: ~1,200)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each path")
    args = ap.parse_args()
    figures: dict[tuple[str, str], list[float]] = {}
    with broker_for(Settings()) as s:
        for r in range(args.rounds):
            for kind in ("standby", "restore"):
                for path in ("faust", "direct"):
                    us = one_round(s, kind, path, args)
                    figures.setdefault((kind, path), []).append(us)
                    sys.stdout.write(f"round {r + 1} {kind} {path}: {us:.1f} µs CPU per record\n")
                    sys.stdout.flush()
    for kind, what in (("standby", "standby copies, two workers"), ("restore", "a restore")):
        faust = statistics.median(figures[kind, "faust"])
        direct = statistics.median(figures[kind, "direct"])
        sys.stdout.write(
            f"{what}, {args.records} records of {args.bytes} B per round: faust {faust:.1f} µs, "
            f"direct {direct:.1f} µs CPU per record (medians of {args.rounds}); "
            f"direct/faust {direct / faust:.3f}\n"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
