"""Ingest throughput: HTTP adapters vs raw broker round trips, and the e-mail parser.

    python bench/ingest_throughput.py [--requests 2000] [--concurrency 1,32]

Starts the embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set. For each concurrency it
measures (a) raw ``Publisher.send`` round trips (acks=all) of an InboundMessage, (b) HTTP
posts to /ingest (generic JSON) and (c) to /webhooks/telegram, each answered only after the
broker acked; prints requests/s, the ratio HTTP/raw and the adapter's own cost per request.
Client, adapter and broker share the machine, so the figures are a floor, not a ceiling.
Then: e-mail parser messages/s (KOI8-R plain, multipart HTML with an attachment) and the
pure parse+normalize path of the HTTP adapters (no broker).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from pipeline.broker import broker_for
from pipeline.bus import Publisher, ensure_topics
from pipeline.config import Settings
from pipeline.events import CustomerProfile, utcnow
from pipeline.ingest.channels import parse_generic, parse_telegram
from pipeline.ingest.email_parse import parse_email, to_parsed_message
from pipeline.ingest.identity import CustomerDirectory
from pipeline.ingest.message import ParsedMessage, build_inbound
from pipeline.ingest.server import IngestServer

TG_SECRET = "bench-secret"


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def generic(i: int, run: str) -> dict[str, Any]:
    return {
        "channel": "webchat",
        "message_id": f"{run}-g{i}",
        "customer": {"email": f"user{i % 500}@example.org", "name": "Bench User"},
        "text": "Hello, my order 12345 has not arrived yet, can you check? Thanks",
    }


def telegram(i: int, run: str) -> dict[str, Any]:
    uid = 10_000 + i % 500
    return {
        "update_id": i,
        "message": {
            "message_id": i,
            "from": {"id": uid, "is_bot": False, "first_name": "Иван"},
            "chat": {"id": uid, "type": "private"},
            "date": 1_717_000_000,
            "text": f"Здравствуйте, не начислили бонусы за покупку {run} {i}",
        },
    }


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Requests per second for ``n`` calls with ``concurrency`` in flight."""
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def broker_part(settings: Settings, n: int, levels: list[int]) -> None:
    await ensure_topics(settings)
    server = IngestServer(settings, directory=CustomerDirectory())
    await server.start()
    publisher = Publisher(settings)
    run = uuid.uuid4().hex[:6]
    sample = parse_generic(generic(0, run))
    inbound = build_inbound(sample, CustomerProfile(customer_id="c0"), settings, utcnow())
    topic = settings.topic("inbound")
    base = f"http://127.0.0.1:{server.http_port}"

    # Same HTTP stack and one acked send, no adapter logic: isolates the adapter's own cost.
    async def baseline_handler(request: web.Request) -> web.Response:
        await request.read()
        await publisher.send(topic, "baseline", inbound)
        return web.json_response({"ok": True}, status=202)

    bare = web.Application()
    bare.router.add_post("/baseline", baseline_handler)
    bare_runner = web.AppRunner(bare, access_log=None)
    await bare_runner.setup()
    await web.TCPSite(bare_runner, "127.0.0.1", 0).start()
    bare_url = f"http://127.0.0.1:{bare_runner.addresses[0][1]}/baseline"
    try:
        async with aiohttp.ClientSession(
            base, connector=aiohttp.TCPConnector(limit=max(levels))
        ) as http:
            # Warm-up: connections, producer metadata.
            await publisher.send(topic, "warm", inbound)
            # Every bench customer known before timing: steady state (returning customers);
            # a first contact costs one more acked send (its CustomerRecord).
            headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
            for i in range(500):
                async with http.post("/ingest", json=generic(i, f"{run}w")) as r:
                    assert r.status == 202, await r.text()
                async with http.post(
                    "/webhooks/telegram", json=telegram(-1 - i, f"{run}w"), headers=headers
                ) as r:
                    assert r.status == 200, await r.text()

            for c in levels:
                tag = f"{run}c{c}"

                async def raw(i: int) -> None:
                    await publisher.send(topic, f"c{i % 500}", inbound)

                async def post_generic(i: int, tag: str = tag) -> None:
                    async with http.post("/ingest", json=generic(i, tag)) as r:
                        if r.status != 202:
                            raise RuntimeError(f"/ingest answered {r.status}: {await r.text()}")

                async def post_telegram(i: int, tag: str = tag) -> None:
                    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
                    async with http.post(
                        "/webhooks/telegram", json=telegram(i, tag), headers=headers
                    ) as r:
                        if r.status != 200:
                            raise RuntimeError(f"telegram answered {r.status}")

                async def post_baseline(i: int, tag: str = tag) -> None:
                    async with http.post(bare_url, json=generic(i, tag)) as r:
                        if r.status != 202:
                            raise RuntimeError(f"baseline answered {r.status}")

                raw_rps = await timed(n, c, raw)
                bare_rps = await timed(n, c, post_baseline)
                gen_rps = await timed(n, c, post_generic)
                tg_rps = await timed(n, c, post_telegram)
                out(f"\nconcurrency {c}, {n} requests each")
                out(f"  raw Publisher.send (acks=all)      {raw_rps:8.0f} msg/s")
                out(f"  HTTP baseline (post + 1 send)      {bare_rps:8.0f} req/s")
                for name, rps in (
                    ("HTTP /ingest (generic)", gen_rps),
                    ("HTTP /webhooks/telegram", tg_rps),
                ):
                    adapter_ms = max(0.0, c / rps - c / bare_rps) * 1000
                    broker_ms = c / raw_rps * 1000
                    out(
                        f"  {name:33s}  {rps:8.0f} req/s  ratio to raw send {rps / raw_rps:4.2f}, "
                        f"to HTTP baseline {rps / bare_rps:4.2f}; "
                        f"adapter logic ≈ {adapter_ms:5.2f} ms vs broker RTT {broker_ms:5.2f} ms"
                    )
    finally:
        await bare_runner.cleanup()
        await publisher.close()
        await server.stop()


def pure_part(settings: Settings, n: int) -> None:
    run = "pure"
    profile = CustomerProfile(customer_id="c")
    now = utcnow()
    start = time.perf_counter()
    for i in range(n):
        parsed = parse_generic(generic(i, run))
        build_inbound(parsed, profile, settings, now).model_dump_json()
    gen = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        tg = parse_telegram(telegram(i, run))
        assert isinstance(tg, ParsedMessage)
        build_inbound(tg, profile, settings, now).model_dump_json()
    tgr = n / (time.perf_counter() - start)
    out(f"\npure parse+normalize+serialize (no HTTP, no broker), {n} messages")
    out(f"  generic   {gen:9.0f} msg/s  ({1e6 / gen:6.1f} µs each)")
    out(f"  telegram  {tgr:9.0f} msg/s  ({1e6 / tgr:6.1f} µs each)")


def mails() -> list[bytes]:
    ru = MIMEText(
        "Здравствуйте! Не могу оплатить заказ 5521, карта отклоняется.\n\n"
        "> Предыдущее письмо\n> цитата\n\n-- \nАнна Смирнова\n+7 916 123-45-67",
        "plain",
        "koi8-r",
    )
    ru["From"] = "anna@example.ru"
    ru["Subject"] = "Оплата"
    ru["Message-ID"] = "<b1@example.ru>"
    outer = MIMEMultipart("mixed")
    alt = MIMEMultipart("alternative")
    alt.attach(
        MIMEText(
            "<html><body><p>I want a <b>refund</b> for order 9.</p>"
            "<p>Best regards,<br>John</p><blockquote>old</blockquote></body></html>",
            "html",
            "utf-8",
        )
    )
    outer.attach(alt)
    att = MIMEApplication(b"%PDF-1.4" + bytes(range(256)) * 40, "pdf")
    att.add_header("Content-Disposition", "attachment", filename="invoice.pdf")
    outer.attach(att)
    outer["From"] = "John <john@example.co.uk>"
    outer["Subject"] = "Refund"
    outer["Message-ID"] = "<b2@example.co.uk>"
    outer["References"] = "<r1@care> <r2@care>"
    return [ru.as_bytes(), outer.as_bytes()]


def email_part(n: int) -> None:
    out(f"\ne-mail parser, {n} messages per kind")
    for name, raw in zip(
        ("KOI8-R plain + quote/signature", "multipart HTML + 10 KB PDF"), mails(), strict=True
    ):
        start = time.perf_counter()
        for _ in range(n):
            to_parsed_message(parse_email(raw), "support@example.com")
        rate = n / (time.perf_counter() - start)
        out(f"  {name:32s} {rate:8.0f} msg/s  ({len(raw)} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,32", help="comma-separated in-flight levels")
    ap.add_argument("--mails", type=int, default=2000)
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x]
    base = Settings(
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
        ingest_port=0,
        smtp_port=0,
        telegram_secret_token=SecretStr(TG_SECRET),
    )
    with broker_for(base) as settings:
        out(f"broker {settings.kafka_bootstrap_servers}")
        asyncio.run(broker_part(settings, args.requests, levels))
    pure_part(base, args.requests)
    email_part(args.mails)
    return 0


if __name__ == "__main__":
    sys.exit(main())
