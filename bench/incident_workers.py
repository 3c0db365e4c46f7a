"""Incidents with 1, 2, 3 workers: one wave of store complaints, what opened and who was mailed.

    python bench/incident_workers.py [--workers 1 2 3] [--complaints 12] [--apart 3]
                                     [--partitions 4] [--settle-s 10]

Per worker count (fresh topics and consumer group on one broker — the embedded Tansu unless
KAFKA_BOOTSTRAP_SERVERS is set — and the local outbox as the platforms and the mail relay):
ingest and N workers start; --complaints customers each post one complaint about the same
store (Садовая, 12) as a Telegram update, --apart seconds apart. When every complaint has an
outcome and the outcomes topic and the outbox have been quiet for --settle-s, it prints the
incidents (distinct incident ids on ``classifications``) and the reports that opened one, the
broadcast sub-request records, the broadcast e-mails per director at the outbox, and the
store director's own e-mails (one per complaint routed to them), in total and for complaints
already linked to an incident.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TypeVar

import aiohttp
from fault_run import out, settle  # bench/ is this script's directory

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.domain.workflow import load_workflow
from pipeline.errors import DecodeError
from pipeline.events import ClassifiedMessage, Event, SubRequest, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import child_env, children, departments, own_stack, wait_http
from tests.plugins.inbound import STORE_COMPLAINTS, telegram_update

E = TypeVar("E", bound=Event)
STORE = "SPB-012"


def decoded(model: type[E], records: list[bus.Record]) -> list[E]:
    found: list[E] = []
    for r in records:
        try:
            found.append(decode(model, r.value))
        except DecodeError:
            continue
    return found


async def one_run(base: Settings, outbox: Outbox, args: argparse.Namespace, workers: int) -> str:
    s = own_stack(base, "incw", partitions=args.partitions)
    await bus.ensure_topics(s, departments=departments(s))
    wf = load_workflow(s.rules_path)
    store = wf.store(STORE)
    assert store is not None and store.director_email
    director = store.director_email
    first_item = len(outbox.snapshot())
    chats = [7_000_000 + int(uuid.uuid4().int % 900_000) * 100 + n for n in range(args.complaints)]
    mids = {derive_id("msg", "telegram", f"{c}:1") for c in chats}
    log_path = Path(args.log_dir) / f"{s.app_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with children(log_path) as group:
        env = child_env(s, **outbox.env())
        group.start("ingest", ["ingest"], env)
        ports = [s.web_port] + [free_port() for _ in range(workers - 1)]
        for n, port in enumerate(ports):
            group.start(f"worker-{n + 1}", ["worker", "--web-port", str(port)], env)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 120, group)
        for port in ports:
            wait_http(f"http://{s.web_host}:{port}/healthz", 600, group)
        url = f"http://{s.ingest_host}:{s.ingest_port}/webhooks/telegram"
        async with aiohttp.ClientSession() as session:
            for n, chat in enumerate(chats):
                update = telegram_update(
                    chat,
                    1,
                    STORE_COMPLAINTS[n % len(STORE_COMPLAINTS)],
                    int(time.time()),
                    "B",
                    chat,
                )
                async with session.post(url, json=update) as resp:
                    assert resp.status == 200, resp.status
                await asyncio.sleep(args.apart)
        await settle(s, outbox, mids, args.settle_s)
        classified = await bus.read_all(s, [s.topic("classifications")], idle_s=2.0, max_s=120)
        external = await bus.read_all(s, [s.topic("external")], idle_s=2.0, max_s=120)
    mine = [c for c in decoded(ClassifiedMessage, classified) if c.message_id in mids]
    incidents = {c.similarity.incident_id for c in mine if c.similarity.incident_id}
    opened = {c.message_id for c in mine if c.similarity.incident_new}
    opener_records = sum(1 for c in mine if c.message_id in opened)
    linked = {c.message_id for c in mine if c.similarity.incident_id} - opened
    subs = decoded(SubRequest, external)
    broadcast = [s_ for s_ in subs if s_.kind.value == "broadcast" and s_.message_id in incidents]
    own = {
        s_.sub_request_id: s_ for s_ in subs if s_.message_id in mids and s_.recipient == director
    }
    mails = outbox.snapshot()[first_item:]

    def mailed(ids: set[str]) -> list[str]:
        return [
            i.to for i in mails if i.channel == "email" and any(x in (i.subject or "") for x in ids)
        ]

    per_director = Counter(mailed({b.sub_request_id for b in broadcast}))
    own_linked = {k for k, v in own.items() if v.message_id in linked | opened}
    return (
        f"workers {workers}: complaints {len(mids)}, incidents {len(incidents)}, opened by "
        f"{len(opened)} report(s) ({opener_records} classified record(s) of it), broadcast "
        f"records {len(broadcast)} ({len({b.sub_request_id for b in broadcast})} ids), "
        "broadcast e-mails per "
        f"director {sorted(per_director.values()) or '-'} ({len(per_director)} directors), "
        f"the director's own e-mails {len(mailed(set(own)))} (for reports linked to an incident "
        f"or opening it: {len(mailed(own_linked))})"
    )


async def main_async(args: argparse.Namespace) -> int:
    outbox = Outbox().start()
    try:
        with broker_for(Settings()) as base:
            for n in args.workers:
                out(await one_run(base, outbox, args, n))
    finally:
        outbox.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--complaints", type=int, default=12)
    p.add_argument("--apart", type=float, default=3.0, help="seconds between complaints")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--settle-s", type=float, default=10.0)
    p.add_argument("--log-dir", default="/tmp/incident-workers", help="children's logs")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
