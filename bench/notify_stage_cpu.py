"""Notify's worker CPU per reply: the delivery loop, against the bare I/O it has to do.

    cd /work/main && .venv/bin/python bench/notify_stage_cpu.py [--n 3000] [--repeat 3]
    .venv/bin/python bench/notify_stage_cpu.py --digest      # same records? (no broker)

Each run takes ``--n`` replies (webchat, so a webhook POST over real HTTP, as in
``bench/pipeline_throughput.py``) from 500 customers in batches of 64, through a fresh app
and delivered-ids table:

- notify: ``DeliveryLoop.handle_batch`` and the batch's ``flush``, the worker's code path:
  decode, delivered-ids lookup, ``Deliverer.deliver_reply``, the mark acknowledged by the
  broker before the key goes on (``set_durably``, its own producer; issue 11), the receipt to
  ``deliveries`` and the ``reply_sent`` case event to ``case-events``;
- bare: the same I/O without notify's code, per key in order and 16 keys at a time as the
  loop: POST the record's bytes to the webhook, one mark-sized record awaited on a producer
  of its own, two records of the receipt's and the event's bytes queued, the batch's acks
  awaited.

``--history K``: each customer has K delivered ids already (``MAX_REMEMBERED`` = 500 at most),
as after a worker ran a while: every delivery reads and rewrites its customer's list.

The channel server (``pipeline.outbox``) runs in a child process and the broker (embedded
Tansu unless KAFKA_BOOTSTRAP_SERVERS is set) is one too, so the process CPU
(``time.process_time``) of the timed batches is the worker's. Logging (INFO, text lines to a
file) and the garbage collector (``runtime.tune_gc``) as the worker's; no rate limits (the
platforms' limits are not CPU). The two are alternated ``--repeat`` times; the run of least
CPU of each (its CPU per reply and replies per wall second) and the ratio of their CPU per
reply are printed. ``--only notify|bare``: one of them (for py-spy). ``--profile FILE``:
cProfile of one more notify run.

``--digest``: no broker, no timing: a fixed set of replies (delivered, replayed, refused by
the server, transient failures, no address) through the loop with an in-process server;
sha256 of every request the server got and every record the loop produced (receipts, case
events, dead letters, marks), timestamps masked: equal before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import pstats
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bus import Publisher, ensure_topics
from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.events import Channel, Reply, ReplyKind
from pipeline.faust_app import RouterApp
from pipeline.logs import setup_logging
from pipeline.metrics import Metrics
from pipeline.notify.agents import MAX_CONCURRENT, DeliveryLoop, Replies, Senders
from pipeline.runtime import tune_gc
from pipeline.stage import RawRecord

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BATCH = 64
CUSTOMERS = 500
TEXT = (
    "Здравствуйте! Мы проверили ваш заказ: курьер доставит его завтра с 10 до 14 часов. "
    "Если время не подходит, выберите другое в личном кабинете или ответьте на это сообщение. "
    "Спасибо, что вы с нами!"
)

#: A child process serving the channel APIs (its CPU is not the worker's).
SERVER = """
import sys
from pipeline.outbox import Outbox
box = Outbox().start()
print(box.http_port, flush=True)
sys.stdin.read()
box.stop()
"""


def reply(
    i: int,
    run: str,
    text: str = TEXT,
    channel: Channel = Channel.webchat,
    customers: int = CUSTOMERS,
) -> Reply:
    return Reply(
        reply_id=f"rep_{run}_{i:020x}",
        case_id=f"case_{run}_{i:020x}",
        message_id=f"msg_{run}_{i}",
        customer_id=f"cust_{i % customers}",
        channel=channel,
        language="ru",
        kind=ReplyKind.auto_reply,
        text=text,
        article_id="kb-delivery-time",
        link="https://help.example.com/kb/delivery-time",
        created_at=NOW,
    )


def records(replies: list[Reply]) -> list[RawRecord]:
    return [
        RawRecord("replies", 0, i, r.customer_id.encode(), encode(r)) for i, r in enumerate(replies)
    ]


def by_key(batch: list[RawRecord]) -> list[list[RawRecord]]:
    groups: dict[bytes | None, list[RawRecord]] = {}
    for record in batch:
        groups.setdefault(record.key, []).append(record)
    return list(groups.values())


def new_context(settings: Settings, run: str) -> tuple[Context, Any]:
    app = RouterApp(f"bench-notify-{run}", broker="kafka://127.0.0.1:1", store="memory://")
    ctx = Context(settings=settings, metrics=Metrics(), app=app)
    return ctx, ctx.table("delivered-replies")


def remembered(table: Any, history: int) -> None:
    """Each customer's delivered ids as a worker that ran a while has them (its format)."""
    for c in range(CUSTOMERS):
        ids = [f"rep_old_{c}_{j:020x}" for j in range(history)]
        table.data[f"cust_{c}"] = orjson.dumps({"at": time.time(), "ids": ids}).decode()


async def notify_run(
    settings: Settings, run: str, n: int, prof: cProfile.Profile | None, history: int = 0
) -> tuple[float, float]:
    """CPU and wall seconds of the notify loop over ``n`` replies (after a warm-up batch)."""
    ctx, table = new_context(settings, run)
    remembered(table, history)
    senders = Senders(settings)
    loop = DeliveryLoop(ctx, Replies(senders, table))
    recs = records([reply(i, run) for i in range(n + BATCH)])
    await ensure_topics(settings, [table.changelog_topic.get_topic_name()])
    try:
        ctx.own_outputs(fresh=True)
        await loop.handle_batch(recs[:BATCH])  # warm-up: the producers, the HTTP connection
        await ctx.flush()
        start, wall = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        for at in range(BATCH, n + BATCH, BATCH):
            await loop.handle_batch(recs[at : at + BATCH])
            await ctx.flush()
        if prof is not None:
            prof.disable()
        return time.process_time() - start, time.perf_counter() - wall
    finally:
        await senders.close()
        for publisher in (ctx.publisher, ctx.marks):
            if publisher is not None:
                await publisher.close()


async def bare_run(settings: Settings, run: str, n: int, history: int = 0) -> tuple[float, float]:
    """CPU and wall seconds of the same I/O without notify's code."""
    outputs, marks = Publisher(settings), Publisher(settings)
    deliveries, events = settings.topic("deliveries"), settings.topic("case-events")
    changelog = f"{settings.app_id}-bare-changelog"
    url = settings.outbound_webhook_url or ""
    receipt_bytes = b"r" * 210  # about a receipt's and a reply_sent event's size
    event_bytes = b"e" * 420
    mark = b"m" * (40 + 30 * (history + n // CUSTOMERS))  # about the marks' mean size
    replies = [reply(i, run) for i in range(n + BATCH)]
    recs = records(replies)
    # the receipt is keyed by the reply id, the case event by the case id
    ids_of = [(r.reply_id, r.case_id or "") for r in replies]
    async with aiohttp.ClientSession() as session:
        pending: list[asyncio.Future[Any]] = []
        slots = asyncio.Semaphore(MAX_CONCURRENT)

        async def one(record: RawRecord) -> None:
            key = (record.key or b"").decode()
            ids = ids_of[record.offset]
            async with session.post(url, data=record.value) as resp:
                await resp.read()
            await marks.send_raw(changelog, key, mark)
            pending.append(await outputs.enqueue(deliveries, ids[0], receipt_bytes))
            pending.append(await outputs.enqueue(events, ids[1], event_bytes))

        async def in_order(group: list[RawRecord]) -> None:
            async with slots:
                for record in group:
                    await one(record)

        async def batch(part: list[RawRecord]) -> None:
            await asyncio.gather(*map(in_order, by_key(part)))
            await asyncio.gather(*pending)
            pending.clear()

        await ensure_topics(settings, [changelog])
        await batch(recs[:BATCH])
        start, wall = time.process_time(), time.perf_counter()
        for at in range(BATCH, n + BATCH, BATCH):
            await batch(recs[at : at + BATCH])
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
    await outputs.close()
    await marks.close()
    return cpu, wall


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


async def measure(settings: Settings, args: argparse.Namespace) -> None:
    prefix = f"bench-ncpu-{uuid.uuid4().hex[:6]}."
    s = settings.model_copy(update={"topic_prefix": prefix, "app_id": prefix.rstrip(".")})
    await ensure_topics(s, [s.topic("deliveries"), s.topic("case-events"), s.topic("dlq")])
    kinds = ("notify", "bare") if args.only is None else (args.only,)
    best = {k: (float("inf"), float("inf")) for k in kinds}
    for r in range(args.repeat):
        for kind in kinds:
            run = f"{r}{kind[0]}"
            if kind == "notify":
                cpu, wall = await notify_run(s, run, args.n, None, args.history)
            else:
                cpu, wall = await bare_run(s, run, args.n, args.history)
            best[kind] = min(best[kind], (cpu, wall))
            out(
                f"  run {r} {kind:6} {cpu * 1000 / args.n:7.3f} ms CPU per reply, "
                f"{args.n / wall:6.0f} replies/s\n"
            )
    out(
        f"notify stage (n={args.n}, batches of {BATCH}, {CUSTOMERS} customers with "
        f"{args.history} delivered ids each, run of least CPU of {args.repeat}):\n"
    )
    for kind in kinds:
        cpu, wall = best[kind]
        out(
            f"  {kind:6} {cpu * 1000 / args.n:7.3f} ms CPU per reply, "
            f"{args.n / wall:6.0f} replies/s\n"
        )
    if len(kinds) == 2:
        out(f"  ratio notify/bare CPU per reply {best['notify'][0] / best['bare'][0]:.2f}\n")
    if args.profile is not None:
        prof = cProfile.Profile()
        await notify_run(s, "prof", args.n, prof, args.history)
        with args.profile.open("w") as f:
            stats = pstats.Stats(prof, stream=f)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(60)
        out(f"  profile: {args.profile}\n")


# ---------------------------------------------------------------- digest


class Capture:
    """Stands in for both publishers: every record kept, every ack at once."""

    lost: str | None = None

    def __init__(self) -> None:
        self.records: list[tuple[str, str | None, bytes | None]] = []

    async def enqueue(self, topic: str, key: str | None, value: bytes | None) -> Any:
        self.records.append((topic, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send_raw(self, topic: str, key: str | None, value: bytes | None) -> None:
        self.records.append((topic, key, value))

    async def close(self) -> None:
        return None


_TIMES = re.compile(rb'"\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d)?"|\\?"at\\?":[0-9.e+]+')


def masked(value: bytes | None) -> bytes:
    return b"<none>" if value is None else _TIMES.sub(b'"<time>"', value)


async def digest() -> str:
    got: list[bytes] = []

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        head = "|".join(h.get(k, "") for k in ("Content-Type", "Idempotency-Key", "Authorization"))
        got.append(head.encode() + b"\n" + body)
        if b"REFUSE" in body:
            return web.json_response({"error": "bad request"}, status=400)
        if b"BUSY" in body:
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/webhook", webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    settings = Settings(
        outbound_webhook_url=f"{base}/webhook",
        delivery_max_attempts=2,
        delivery_backoff_s=0.001,
        delivery_backoff_max_s=0.002,
    )
    ctx, table = new_context(settings, "digest")
    capture = Capture()
    ctx.publisher = ctx.marks = capture  # type: ignore[assignment]
    senders = Senders(settings)
    loop = DeliveryLoop(ctx, Replies(senders, table))
    few = 40  # customers: each key's delivered ids grow to several
    replies = [reply(i, "d", customers=few) for i in range(300)]
    replies += [reply(300 + i, "d", text=f"{TEXT} REFUSE", customers=few) for i in range(5)]
    replies += [reply(305 + i, "d", text=f"{TEXT} BUSY", customers=few) for i in range(5)]
    no_chat_id = Channel.telegram
    replies += [reply(310 + i, "d", channel=no_chat_id, customers=few) for i in range(5)]
    recs = records(replies)
    try:
        ctx.own_outputs(fresh=True)
        for part in (recs[:BATCH], recs[BATCH:], recs[:BATCH]):  # the last one: a replay
            await loop.handle_batch(part)
            await ctx.flush()
    finally:
        await senders.close()
        await runner.cleanup()
    lines = sorted(got) + sorted(f"{t}|{k}|".encode() + masked(v) for t, k, v in capture.records)
    out(f"digest: {len(got)} requests, {len(capture.records)} records\n")
    return hashlib.sha256(b"\n".join(lines)).hexdigest()


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="timed replies per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile of a notify run here")
    parser.add_argument(
        "--history", type=int, default=0, help="delivered ids each customer has already"
    )
    parser.add_argument("--only", choices=("notify", "bare"), help="run one of the two")
    parser.add_argument("--digest", action="store_true", help="sha256 of the loop's records")
    args = parser.parse_args()
    log_file = Path(tempfile.gettempdir()) / "notify_stage_cpu.log"
    setup_logging("text", path=log_file)  # the worker logs at INFO
    if args.digest:
        out(f"sha256 {asyncio.run(digest())}\n")
        return 0
    from pipeline.broker import broker_for

    server, base = start_server()
    try:
        with broker_for(Settings()) as s:
            settings = s.model_copy(
                update={
                    "outbound_webhook_url": f"{base}/webhook",
                    "delivery_rate_limits": {},  # the platform's limit is not the CPU's
                }
            )
            tune_gc()  # as the worker does once it has loaded everything
            asyncio.run(measure(settings, args))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
