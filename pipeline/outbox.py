"""A local sandbox of the outside world for the demo: platform APIs and an SMTP sink.

It answers the Telegram Bot API ``sendMessage``, the Twilio Messages API, the Chatwoot
create-message API, the WhatsApp Cloud API ``messages`` endpoint, VK ``messages.send`` and
the generic outbound webhook over real HTTP, and receives e-mail over real SMTP, so the
notify stage delivers for real and the demo can show what customers and store directors
would receive. Like Twilio, it reports each SMS's progress (``sent``, ``delivered``) to the
message's ``StatusCallback``, signed with the auth token the request authenticated with.
Everything listens on 127.0.0.1 on free ports.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiohttp
from aiohttp import web
from aiosmtpd.controller import Controller

from pipeline.broker import free_port
from pipeline.ingest.channels import twilio_signature

log = logging.getLogger(__name__)


@dataclass
class OutboxItem:
    """One message that left the router."""

    channel: str
    to: str
    text: str
    subject: str | None = None
    reply_to: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class _SmtpSink:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        body = msg.get_body(preferencelist=("plain", "html"))
        text = body.get_content() if body is not None else ""
        self.outbox.add(
            OutboxItem(
                channel="email",
                to=", ".join(envelope.rcpt_tos),
                text=str(text),
                subject=str(msg.get("Subject", "")),
                reply_to=str(msg.get("Reply-To", "")) or None,
            )
        )
        return "250 OK"


class Outbox:
    """Fake platform APIs + SMTP sink, run in a background thread."""

    def __init__(self, on_item: Callable[[OutboxItem], None] | None = None) -> None:
        self.items: list[OutboxItem] = []
        self._lock = threading.Lock()
        self._on_item = on_item
        self.http_port = free_port()
        self.smtp_port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._smtp: Controller | None = None
        self._ready = threading.Event()
        #: Seconds the fake Telegram API takes to answer (a slow platform, for tests).
        self.telegram_delay_s = 0.0

    @property
    def http_base(self) -> str:
        """Base URL of the fake APIs."""
        return f"http://127.0.0.1:{self.http_port}"

    def add(self, item: OutboxItem) -> None:
        """Record a delivered message."""
        with self._lock:
            self.items.append(item)
        if self._on_item is not None:
            self._on_item(item)

    def snapshot(self) -> list[OutboxItem]:
        """Messages received so far."""
        with self._lock:
            return list(self.items)

    def env(self) -> dict[str, str]:
        """Environment for the worker so its deliveries come here."""
        return {
            "PIPELINE_TELEGRAM_API_BASE_URL": self.http_base,
            "PIPELINE_TELEGRAM_BOT_TOKEN": "demo-token",
            "PIPELINE_TWILIO_API_BASE_URL": self.http_base,
            "PIPELINE_CHATWOOT_API_BASE_URL": self.http_base,
            "PIPELINE_CHATWOOT_API_TOKEN": "demo-token",
            "PIPELINE_WHATSAPP_API_BASE_URL": f"{self.http_base}/whatsapp",
            "PIPELINE_WHATSAPP_ACCESS_TOKEN": "demo-token",
            "PIPELINE_VK_API_BASE_URL": f"{self.http_base}/vk",
            "PIPELINE_VK_ACCESS_TOKEN": "demo-token",
            "PIPELINE_OUTBOUND_WEBHOOK_URL": f"{self.http_base}/webhook",
            "PIPELINE_SMTP_RELAY_HOST": "127.0.0.1",
            "PIPELINE_SMTP_RELAY_PORT": str(self.smtp_port),
            "PIPELINE_DELIVERY_MAX_ATTEMPTS": "3",
        }

    def _app(self) -> web.Application:
        app = web.Application()
        counter = {"n": 0}
        vk_sent: dict[tuple[str, str], int] = {}
        reporting: set[asyncio.Task[None]] = set()

        def next_id() -> int:
            counter["n"] += 1
            return counter["n"]

        async def telegram(request: web.Request) -> web.Response:
            body = await request.json()
            if self.telegram_delay_s > 0:
                await asyncio.sleep(self.telegram_delay_s)
            self.add(
                OutboxItem("telegram", str(body.get("chat_id")), str(body.get("text")), raw=body)
            )
            return web.json_response({"ok": True, "result": {"message_id": next_id()}})

        async def twilio(request: web.Request) -> web.Response:
            form = await request.post()
            sid = f"SM{next_id():032d}"
            self.add(OutboxItem("sms", str(form.get("To")), str(form.get("Body")), raw=dict(form)))
            callback = str(form.get("StatusCallback") or "")
            if callback:
                # Like Twilio: report the message's progress to its StatusCallback, signed
                # with the account's auth token (the Basic-auth password of this request).
                token = _basic_password(request.headers.get("Authorization", ""))
                fields = {k: str(form.get(k, "")) for k in ("To", "From")}
                task = asyncio.create_task(_report_twilio_status(callback, sid, fields, token))
                reporting.add(task)
                task.add_done_callback(reporting.discard)
            return web.json_response({"sid": sid, "status": "queued"}, status=201)

        async def chatwoot(request: web.Request) -> web.Response:
            body = await request.json()
            conv = request.match_info["conv"]
            self.add(OutboxItem("chatwoot", conv, str(body.get("content")), raw=body))
            return web.json_response({"id": next_id()})

        async def whatsapp(request: web.Request) -> web.Response:
            # Cloud API: POST /{phone_number_id}/messages, Bearer token, JSON text message.
            if not request.headers.get("Authorization", "").startswith("Bearer "):
                return web.json_response(
                    {"error": {"message": "Invalid OAuth access token.", "code": 190}}, status=401
                )
            body = await request.json()
            to = str(body.get("to", ""))
            wamid = f"wamid.{next_id():020d}"
            text = body.get("text") if isinstance(body.get("text"), dict) else {}
            item = OutboxItem("whatsapp", to, str(text.get("body")), raw=body)
            item.raw["phone_number_id"] = request.match_info["phone"]
            self.add(item)
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": to}],
                    "messages": [{"id": wamid}],
                }
            )

        async def vk(request: web.Request) -> web.Response:
            # messages.send: like VK, a repeated random_id for a peer sends nothing new.
            form = await request.post()
            if not form.get("access_token"):
                error = {"error_code": 5, "error_msg": "User authorization failed"}
                return web.json_response({"error": error})
            key = (str(form.get("peer_id")), str(form.get("random_id")))
            if key not in vk_sent:
                vk_sent[key] = next_id()
                self.add(OutboxItem("vk", key[0], str(form.get("message")), raw=dict(form)))
            return web.json_response({"response": vk_sent[key]})

        async def webhook(request: web.Request) -> web.Response:
            body = await request.json()
            to = str(body.get("customer_id", ""))
            self.add(
                OutboxItem(str(body.get("channel", "webhook")), to, str(body.get("text")), raw=body)
            )
            return web.json_response({"ok": True})

        app.router.add_post("/bot{token}/sendMessage", telegram)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", twilio)
        app.router.add_post("/api/v1/accounts/{acc}/conversations/{conv}/messages", chatwoot)
        app.router.add_post("/whatsapp/{phone}/messages", whatsapp)
        app.router.add_post("/vk/messages.send", vk)
        app.router.add_post("/webhook", webhook)
        return app

    def start(self) -> Outbox:
        """Start the HTTP and SMTP servers."""
        self._smtp = Controller(_SmtpSink(self), hostname="127.0.0.1", port=self.smtp_port)
        self._smtp.start()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._runner = web.AppRunner(self._app(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.http_port)
            loop.run_until_complete(site.start())
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="outbox", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop both servers."""
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None


def _basic_password(header: str) -> str:
    """The password of an ``Authorization: Basic`` header ("" when there is none)."""
    if not header.lower().startswith("basic "):
        return ""
    try:
        decoded = base64.b64decode(header[6:].strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


async def _report_twilio_status(url: str, sid: str, fields: dict[str, str], token: str) -> None:
    """POST ``sent`` then ``delivered`` to a StatusCallback as Twilio does (form, signed)."""
    async with aiohttp.ClientSession() as session:
        for status in ("sent", "delivered"):
            form = {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": "AC00000000000000000000000000000000",
                "ApiVersion": "2010-04-01",
                **fields,
            }
            headers = {"X-Twilio-Signature": twilio_signature(token, url, form)}
            try:
                async with session.post(url, data=form, headers=headers) as resp:
                    await resp.read()
            except aiohttp.ClientError as exc:
                log.warning("outbox: status callback to %s failed: %s", url, exc)
                return


def describe(item: OutboxItem) -> str:
    """One line for the demo output."""
    text = item.text.replace("\n", " ")
    head = f"{item.channel} → {item.to}"
    if item.subject:
        head += f" «{item.subject}»"
    return f"{head}: {text[:160]}" + ("…" if len(text) > 160 else "")


def dumps(item: OutboxItem) -> str:
    """JSON of an item (for logs)."""
    return json.dumps(item.__dict__, ensure_ascii=False, default=str)
