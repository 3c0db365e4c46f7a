"""Start-up replay: records that reach the inbound topic while a worker starts, processed once?

    python bench/startup_replay.py [--runs 5] [--rate 10] [--after 15] [--partitions 2]
                                   [--fetch-wait-ms 100] [--settle-s 6]

Per run (fresh topics and consumer group on one broker — the embedded Tansu unless
KAFKA_BOOTSTRAP_SERVERS is set — and the local outbox as the platforms): ingest starts, then
one worker; from the moment the worker is started, one Telegram message per customer is
posted at --rate msg/s until the worker's /readyz answers 200, and --after more. Once every
message has an outcome and the topics have been quiet for --settle-s, it prints per run the
messages, the classified records and outcome records per message (a replay repeats them:
same ids, same decisions), and how many messages have more than one of each. Issue 11's
start-up replay (docs/ARCHITECTURE.md, Recovery) showed as 2 classified and 3 outcome records
per message. It needs a fetch in a short window (the worker's committed-offset reads):
``--partitions 32 --fetch-wait-ms 5`` made the old recovery order replay in 4 of 5 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.fault_run import out, settle
from pipeline import bus
from pipeline.broker import broker_for
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.events import ClassifiedMessage, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import child_env, children, departments, own_stack, wait_http
from tests.plugins.inbound import telegram_update

TEXTS = [
    "Где мой заказ? Жду уже неделю.",
    "I want to cancel my order, please.",
    "Не пришёл возврат денег за товар.",
    "How do I change my shipping address?",
]


@dataclass(frozen=True)
class Figures:
    messages: int
    before_ready: int
    classified: int
    outcomes: int
    classified_twice: int
    outcome_twice: int


def ready(url: str) -> bool:
    """Whether the worker's /readyz answers 200 (503 while it joins and restores)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def post_during_startup(
    s: Settings, rate: float, after: int, chat0: int
) -> tuple[list[str], int]:
    """Post a message per customer at ``rate`` until /readyz is 200, then ``after`` more;
    returns the accepted message ids and how many were posted before the worker was ready."""
    url = f"http://{s.ingest_host}:{s.ingest_port}/webhooks/telegram"
    readyz = f"http://{s.web_host}:{s.web_port}/readyz"
    accepted: list[str] = []
    before = -1
    async with aiohttp.ClientSession() as session:
        n = 0
        while before < 0 or n < before + after:
            if before < 0 and await asyncio.to_thread(ready, readyz):
                before = n
            chat = chat0 + n
            update = telegram_update(chat, 1, TEXTS[n % len(TEXTS)], int(time.time()), "SR", chat)
            async with session.post(url, json=update) as resp:
                if resp.status == 200:
                    accepted.append(derive_id("msg", "telegram", f"{chat}:1"))
            n += 1
            await asyncio.sleep(1 / rate)
    return accepted, before


async def one_run(base: Settings, outbox: Outbox, args: argparse.Namespace, run: int) -> Figures:
    s = own_stack(base, "sr", partitions=args.partitions, fetch_max_wait_ms=args.fetch_wait_ms)
    await bus.ensure_topics(s, departments=departments(s))
    log_path = Path(args.log_dir) / f"{s.app_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with children(log_path) as group:
        env = child_env(s, **outbox.env())
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 120, group)
        group.start("worker", ["worker"], env)
        ids, before = await post_during_startup(s, args.rate, args.after, 5_000_000 + run * 1000)
        await settle(s, outbox, set(ids), args.settle_s)
        outcomes = await bus.read_all(s, [s.topic("outcomes")], idle_s=2.0)
        classified = await bus.read_all(s, [s.topic("classifications")], idle_s=2.0)
    wanted = set(ids)
    per_outcome = Counter(k for r in outcomes if r.key and (k := r.key.decode()) in wanted)
    per_classified = Counter(
        mid for r in classified if (mid := decode(ClassifiedMessage, r.value).message_id) in wanted
    )
    out(f"  run {run}: log {log_path}")
    return Figures(
        messages=len(ids),
        before_ready=before,
        classified=sum(per_classified.values()),
        outcomes=sum(per_outcome.values()),
        classified_twice=sum(1 for v in per_classified.values() if v > 1),
        outcome_twice=sum(1 for v in per_outcome.values() if v > 1),
    )


async def main_async(args: argparse.Namespace) -> int:
    outbox = Outbox().start()
    try:
        with broker_for(Settings()) as base:
            replayed = 0
            for run in range(1, args.runs + 1):
                f = await one_run(base, outbox, args, run)
                replayed += f.outcome_twice > 0
                out(
                    f"run {run}: messages {f.messages} ({f.before_ready} posted before ready), "
                    f"classified records {f.classified}, outcome records {f.outcomes}, "
                    f"messages classified 2+ times {f.classified_twice}, messages with 2+ "
                    f"outcome records {f.outcome_twice}"
                )
            out(f"runs with a replay: {replayed} of {args.runs}")
    finally:
        outbox.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rate", type=float, default=10.0, help="messages per second")
    p.add_argument("--after", type=int, default=15, help="messages after the worker is ready")
    p.add_argument("--partitions", type=int, default=2, help="of each topic")
    p.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=Settings().fetch_max_wait_ms,
        help="the worker's fetch wait: shorter, a fetch is more likely to land in the window",
    )
    p.add_argument("--settle-s", type=float, default=6.0)
    p.add_argument("--log-dir", default="/tmp/startup-replay")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
