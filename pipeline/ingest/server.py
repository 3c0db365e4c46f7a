"""The ingest HTTP service (aiohttp) and, with ``serve``, the SMTP adapter beside it.

Routes::

    POST /ingest               generic JSON (web chat, web forms, social, API)   → 202
    POST /webhooks/telegram    Telegram Bot API Update                           → 200
    POST /webhooks/chatwoot    Chatwoot message_created                          → 200
    POST /webhooks/twilio      Twilio inbound SMS (form-encoded)                 → 200 TwiML
    POST /webhooks/voice       IVR / voicemail event (JSON, see channels.py)     → 202
    POST /webhooks/whatsapp    WhatsApp Cloud API messages / statuses            → 200
    GET  /webhooks/whatsapp    Meta's hub.challenge handshake                    → 200
    POST /webhooks/vk          VK Callback API (confirmation, message_new)       → 200 "ok"
    GET  /healthz
    GET  /metrics              Prometheus: messages{stage="ingest"}, dead letters

Twilio status callbacks (``MessageStatus`` without ``Body``) on /webhooks/twilio and WhatsApp
``statuses[]`` become DeliveryReceipts on the deliveries topic; ``/start`` (and VK's «Начать»)
is answered with the greeting on the replies topic and not routed.

Every 2xx for a message is sent after the broker acknowledged the InboundMessage.
Errors are JSON ``{"error", "field"?, "detail"}``: 400 bad input, 401/403 credentials,
413 too large, 415 content type, 503 (with Retry-After) when the broker is down.
Bad input (not bad credentials) is also dead-lettered with the raw bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiosmtpd.smtp import SMTP
from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.bus import Publisher, ensure_topics
from pipeline.config import Settings, is_loopback_host
from pipeline.errors import (
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    InvalidInput,
    PayloadTooLarge,
    Unauthorized,
)
from pipeline.ingest import channels, messengers
from pipeline.ingest.identity import CustomerDirectory
from pipeline.ingest.message import ParsedMessage
from pipeline.ingest.service import Accepted, IngestService
from pipeline.ingest.smtp import SmtpHandler

__all__ = [
    "CREDENTIALS",
    "SERVICE_KEY",
    "IngestServer",
    "check_exposure",
    "create_app",
    "serve",
    "unauthenticated_endpoints",
]

log = logging.getLogger(__name__)

SERVICE_KEY: web.AppKey[IngestService] = web.AppKey("ingest_service", IngestService)
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

Parsed: TypeAlias = channels.Answer | channels.Item | list[channels.Item]
Parser = Callable[[web.Request, bytes, IngestService], Parsed]


@dataclass(frozen=True)
class _Route:
    channel: str  # DLQ stage suffix
    content_type: str
    parse: Parser
    success_status: int = 202
    answer: Literal["json", "twiml", "ok"] = "json"


# ---------------------------------------------------------------- request ids and quiet logs

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
_REQUEST_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
#: Errors of the client or its connection, not of ours: one line each, no traceback.
CLIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionResetError, HttpProcessingError)


def cut(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters (a log line never carries a body)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit]}… ({len(flat)} chars)"


def _request_id(request: web.Request) -> str:
    given = _REQUEST_ID_CHARS.sub("", request.headers.get("X-Request-Id", ""))[:64]
    return given or uuid.uuid4().hex[:16]


@web.middleware
async def request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give each request an id (``X-Request-Id``, echoed back) and log a client that fails
    mid-request (closed the connection, sent a malformed body) as one short line."""
    rid = _request_id(request)
    request[REQUEST_ID] = rid
    try:
        response = await handler(request)
    except CLIENT_ERRORS as exc:
        log.warning(
            "request %s %s %s from %s failed on the client side: %s: %s",
            rid,
            request.method,
            request.path[:100],
            request.remote,
            type(exc).__name__,
            cut(str(exc)),
        )
        response = _error(400, "client_error", "the request could not be read")
    response.headers["X-Request-Id"] = rid
    return response


class QuietClientErrors(logging.Filter):
    """Turns aiohttp's ERROR tracebacks for client-side failures into one cut line.

    A malformed request is rejected by aiohttp's parser before any handler runs, and its
    log record carried the whole offending buffer (megabytes on one line).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_ERRORS):
            original = record.getMessage()
            record.msg = "%s: %s: %s"
            record.args = (cut(original), type(exc).__name__, cut(str(exc)))
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_aiohttp_logs() -> None:
    """Install ``QuietClientErrors`` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietClientErrors) for f in server_log.filters):
        server_log.addFilter(QuietClientErrors())


def _error(status: int, kind: str, detail: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": kind, "detail": detail}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def _error_kind(exc: InvalidInput) -> str:
    if isinstance(exc, PayloadTooLarge):
        return "payload_too_large"
    if isinstance(exc, Unauthorized):
        return "unauthorized" if exc.status == 401 else "forbidden"
    if isinstance(exc, DecodeError):
        return "decode_error"
    if exc.status == 415:
        return "unsupported_media_type"
    return "invalid_input"


async def _read_body(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """The body, or its first ``limit`` bytes and True when it is larger than ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        return b"", True
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _check_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise InvalidInput(
            f"Content-Type must be {expected}, got {request.content_type or 'none'}",
            field="Content-Type",
            status=415,
        )


# ---------------------------------------------------------------- per-channel parsing


def _parse_generic(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    channels.check_bearer(request.headers, service.settings)
    return channels.parse_generic(channels.decode_json(body))


def _parse_telegram(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    return channels.parse_telegram(channels.decode_json(body))


def _parse_chatwoot(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    channels.check_chatwoot_signature(request.headers, body, service.settings, time.time())
    return channels.parse_chatwoot(channels.decode_json(body))


def _parse_twilio(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    pairs = channels.parse_form(body)
    # The URL as Twilio called it: the public base (a proxy in front) + the raw path and query.
    url = service.settings.public_base_url.rstrip("/") + request.raw_path
    channels.check_twilio_signature(request.headers, url, pairs, service.settings)
    return channels.parse_twilio(dict(pairs), request.query.get("delivery_id"))


def _parse_voice(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    channels.check_bearer(request.headers, service.settings)
    return channels.parse_voice(channels.decode_json(body))


def _parse_whatsapp(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    messengers.check_whatsapp_signature(request.headers, body, service.settings)
    return messengers.parse_whatsapp(channels.decode_json(body))


def _parse_vk(request: web.Request, body: bytes, service: IngestService) -> Parsed:
    return messengers.parse_vk(channels.decode_json(body), service.settings)


ROUTES: dict[str, _Route] = {
    "/ingest": _Route("generic", "application/json", _parse_generic),
    "/webhooks/telegram": _Route("telegram", "application/json", _parse_telegram, 200),
    "/webhooks/chatwoot": _Route("chatwoot", "application/json", _parse_chatwoot, 200),
    "/webhooks/twilio": _Route(
        "sms", "application/x-www-form-urlencoded", _parse_twilio, 200, answer="twiml"
    ),
    "/webhooks/voice": _Route("voice", "application/json", _parse_voice),
    "/webhooks/whatsapp": _Route("whatsapp", "application/json", _parse_whatsapp, 200),
    "/webhooks/vk": _Route("vk", "application/json", _parse_vk, 200, answer="ok"),
}


async def _take(service: IngestService, item: channels.Item) -> dict[str, Any]:
    """Publish one parsed item; what the answer says about it."""
    if isinstance(item, channels.Ignored):
        return {"ignored": item.reason}
    if isinstance(item, channels.PlatformReceipt):
        receipt = await service.accept_receipt(item)
        return {"receipt": receipt.delivery_id, "status": receipt.status}
    if isinstance(item, channels.BotCommand):
        reply = await service.answer_command(item)
        return {"command": item.command, "reply_id": reply.reply_id}
    accepted: Accepted = await service.accept(item)
    out: dict[str, Any] = {
        "message_id": accepted.message_id,
        "customer_id": accepted.customer_id,
    }
    if accepted.duplicate:
        out["duplicate"] = True
    return out


def _answer(route: _Route, results: list[dict[str, Any]], many: bool) -> web.Response:
    if route.answer == "twiml":
        return web.Response(text=TWIML_EMPTY, content_type="text/xml", status=route.success_status)
    if route.answer == "ok":  # VK retries anything that is not exactly "ok"
        return web.Response(text="ok", content_type="text/plain", status=route.success_status)
    payload: dict[str, Any] = {"results": results} if many else results[0]
    return web.json_response(payload, status=route.success_status)


def _handler(route: _Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        service = request.app[SERVICE_KEY]
        settings = service.settings
        stage = f"ingest.{route.channel}"
        body = b""
        try:
            if route.channel == "telegram":
                # Header-only credentials are checked before reading anything.
                channels.check_telegram_secret(request.headers, settings)
            body, too_large = await _read_body(request, settings.max_message_bytes)
            if too_large:
                raise PayloadTooLarge(
                    f"request body over {settings.max_message_bytes} bytes (max_message_bytes)"
                )
            _check_content_type(request, route.content_type)
            parsed = route.parse(request, body, service)
            if isinstance(parsed, channels.Answer):
                return web.Response(text=parsed.text, content_type="text/plain")
            items = parsed if isinstance(parsed, list) else [parsed]
            if route.channel == "generic" and isinstance(parsed, ParsedMessage):
                stage = f"ingest.{parsed.channel.value}"
            results = [await _take(service, item) for item in items]
        except Unauthorized as exc:
            log.warning("%s: %s from %s", stage, exc, request.remote)
            return _error(exc.status, _error_kind(exc), str(exc), exc.field)
        except InvalidInput as exc:
            await service.reject(stage, exc, body)
            return _error(exc.status, _error_kind(exc), str(exc), exc.field)
        except BrokerUnavailable as exc:
            log.warning("%s: broker unavailable: %s", stage, exc)
            retry = str(max(1, math.ceil(settings.produce_timeout_s)))
            resp = _error(503, "broker_unavailable", "the message was not stored; retry later")
            resp.headers["Retry-After"] = retry
            return resp
        return _answer(route, results, isinstance(parsed, list))

    return handle


async def _whatsapp_verify(request: web.Request) -> web.Response:
    """Meta's subscription handshake: echo ``hub.challenge`` for the right verify token."""
    service = request.app[SERVICE_KEY]
    try:
        challenge = messengers.whatsapp_verify(request.query, service.settings)
    except InvalidInput as exc:
        log.warning("ingest.whatsapp: verification refused: %s from %s", exc, request.remote)
        return _error(exc.status, _error_kind(exc), str(exc), exc.field)
    return web.Response(text=challenge, content_type="text/plain")


async def _healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    lost = service.publisher.lost
    if lost is not None:
        # The broker lost records it had acknowledged: every message is refused (503) until
        # this adapter is restarted; the probe says so, so a supervisor does it.
        return web.json_response({"status": "broker", "broker": lost}, status=503)
    return web.json_response({"status": "ok", "customers": len(service.directory)})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    settings: Settings,
    publisher: Publisher,
    directory: CustomerDirectory | None = None,
    *,
    service: IngestService | None = None,
) -> web.Application:
    """The aiohttp application of every HTTP adapter."""
    # aiohttp's own limit stays above ours so our 413 (with its DLQ record) answers first.
    quiet_aiohttp_logs()
    app = web.Application(
        client_max_size=settings.max_message_bytes + 1024, middlewares=[request_ids]
    )
    app[SERVICE_KEY] = service or IngestService(settings, publisher, directory)
    for path, route in ROUTES.items():
        app.router.add_post(path, _handler(route))
    app.router.add_get("/webhooks/whatsapp", _whatsapp_verify)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


#: Each HTTP endpoint and the setting that authenticates it.
CREDENTIALS: dict[str, str] = {
    "/ingest": "generic_api_token",
    "/webhooks/voice": "generic_api_token",
    "/webhooks/telegram": "telegram_secret_token",
    "/webhooks/chatwoot": "chatwoot_hmac_token",
    "/webhooks/twilio": "twilio_auth_token",
    "/webhooks/whatsapp": "whatsapp_app_secret",
    "/webhooks/vk": "vk_secret",
}


def unauthenticated_endpoints(settings: Settings) -> list[str]:
    """Endpoints that accept anyone because their credential setting is unset."""
    return [path for path, name in CREDENTIALS.items() if getattr(settings, name) is None]


def check_exposure(settings: Settings) -> None:
    """Refuse to serve unauthenticated endpoints beyond this machine unless allowed.

    On 127.0.0.1 (the default) anything goes; on another address every endpoint needs its
    credential, or ``PIPELINE_INGEST_ALLOW_UNAUTHENTICATED=true`` said it is meant.
    """
    if is_loopback_host(settings.ingest_host) or settings.ingest_allow_unauthenticated:
        return
    open_ones = unauthenticated_endpoints(settings)
    if not open_ones:
        return
    needed = sorted({f"PIPELINE_{CREDENTIALS[p].upper()}" for p in open_ones})
    raise ConfigError(
        f"refusing to listen on {settings.ingest_host}: {', '.join(open_ones)} would accept "
        f"anyone; set {', '.join(needed)} or PIPELINE_INGEST_ALLOW_UNAUTHENTICATED=true"
    )


class IngestServer:
    """HTTP + SMTP adapters sharing one IngestService; ``start`` / ``stop`` (ports may be 0)."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher | None = None,
        directory: CustomerDirectory | None = None,
        *,
        load_directory: bool = True,
        create_topics: bool = True,
    ) -> None:
        self.settings = settings
        self._own_publisher = publisher is None
        self.publisher = publisher or Publisher(settings)
        self.service = IngestService(settings, self.publisher, directory)
        self._load = load_directory and directory is None
        self._create_topics = create_topics
        self._runner: web.AppRunner | None = None
        self._smtp: asyncio.Server | None = None
        self._follower: asyncio.Task[None] | None = None
        self.http_port = 0
        self.smtp_port = 0

    async def start(self) -> None:
        """Create topics, rebuild the directory, bind HTTP and SMTP."""
        check_exposure(self.settings)
        if self._create_topics:
            await ensure_topics(self.settings)
        if self._load:
            await self.service.load_directory()
            # Links and merges made by other ingest processes reach this one as they happen.
            self._follower = asyncio.create_task(self.service.follow_directory())
        app = create_app(self.settings, self.publisher, service=self.service)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.ingest_host, self.settings.ingest_port)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])
        handler = SmtpHandler(self.service)
        loop = asyncio.get_running_loop()
        self._smtp = await loop.create_server(
            lambda: SMTP(
                handler,
                data_size_limit=self.settings.smtp_max_message_bytes,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname="care-router",
                ident="care-router ingest",
            ),
            host=self.settings.smtp_host,
            port=self.settings.smtp_port,
        )
        self.smtp_port = int(self._smtp.sockets[0].getsockname()[1])
        log.info(
            "ingest listening: http://%s:%d smtp://%s:%d",
            self.settings.ingest_host,
            self.http_port,
            self.settings.smtp_host,
            self.smtp_port,
        )

    async def stop(self) -> None:
        """Close both listeners, stop following the directory and, when owned, the publisher."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._smtp is not None:
            self._smtp.close()
            await self._smtp.wait_closed()
            self._smtp = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_publisher:
            await self.publisher.close()


async def serve(settings: Settings) -> None:
    """Run the HTTP and SMTP adapters until cancelled."""
    server = IngestServer(settings)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
