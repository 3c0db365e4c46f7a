"""Outbound senders in the platforms' real API formats, at configurable base URLs.

One attempt per call; retries, backoff and rate limits are ``delivery.Deliverer``'s job.
Every failure is a ``DeliveryError`` with ``status`` (HTTP or SMTP code when there was
one), ``transient`` (5xx, 429, 408, connection errors and SMTP 4xx may succeed later;
other 4xx and SMTP 5xx will not) and ``retry_after`` (seconds, from ``Retry-After`` or
Telegram's ``parameters.retry_after``). Error texts never contain the URL: the Telegram
URL carries the bot token.

Where a ``Reply`` goes (``reply.channel`` → transport, keys read from ``reply.reply_to``):

=================  =========  ==============================================================
channel            transport  ``reply_to`` keys
=================  =========  ==============================================================
telegram           telegram   ``chat_id``; optional ``message_id`` → ``reply_to_message_id``
chatwoot           chatwoot   ``conversation_id``; optional ``account_id`` (else settings)
sms, voice         twilio     ``phone`` (or ``from``); ``service_number`` (the number the
                              customer wrote to) is the sender when present; voice
                              replies go as an SMS to the caller's number
whatsapp           whatsapp   ``wa_id`` (or ``phone``); ``phone_number_id`` (the business
                              number written to, else settings); Cloud API ``messages``
vk                 vk         ``peer_id``; ``messages.send`` with a ``random_id`` derived
                              from the reply id and the text, so a retry is not sent twice
email, webform     email      ``address`` (or ``email``); threading: ``message_id``,
                              ``references``, ``subject`` (see ``compose.compose_reply_email``)
webchat, api,      webhook    none: the JSON ``Reply`` is POSTed to
social                        ``settings.outbound_webhook_url`` with ``Idempotency-Key:
                              <reply_id>`` and an optional Bearer token; the web-chat
                              widget / API client / social bridge behind it delivers it
=================  =========  ==============================================================
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from pipeline.codec import encode
from pipeline.config import Settings, is_loopback_host
from pipeline.errors import DeliveryError
from pipeline.events import Channel, Reply, utcnow
from pipeline.notify.compose import compose_reply_email

__all__ = [
    "TELEGRAM_MAX_CHARS",
    "TWILIO_MAX_CHARS",
    "Target",
    "Transport",
    "message_text",
    "reply_parts",
    "resolve_target",
    "send_chatwoot",
    "send_email",
    "send_reply",
    "send_telegram",
    "send_twilio",
    "send_vk",
    "send_webhook",
    "send_whatsapp",
    "split_text",
    "twilio_status_callback",
    "vk_random_id",
]

log = logging.getLogger(__name__)

Transport = Literal["telegram", "chatwoot", "twilio", "whatsapp", "vk", "email", "webhook"]

TELEGRAM_MAX_CHARS = 4096  # sendMessage text limit
TWILIO_MAX_CHARS = 1600  # Messages API Body limit
WHATSAPP_MAX_CHARS = 4096  # Cloud API text.body limit
VK_MAX_CHARS = 4096  # messages.send message limit
_MAX_CHARS: dict[str, int] = {
    "telegram": TELEGRAM_MAX_CHARS,
    "twilio": TWILIO_MAX_CHARS,
    "whatsapp": WHATSAPP_MAX_CHARS,
    "vk": VK_MAX_CHARS,
}
_EXCERPT = 300

_TRANSPORTS: dict[Channel, Transport] = {
    Channel.telegram: "telegram",
    Channel.whatsapp: "whatsapp",
    Channel.vk: "vk",
    Channel.chatwoot: "chatwoot",
    Channel.sms: "twilio",
    Channel.voice: "twilio",
    Channel.email: "email",
    Channel.webform: "email",
    Channel.webchat: "webhook",
    Channel.api: "webhook",
    Channel.social: "webhook",
}

_ADDRESS_KEYS: dict[Transport, tuple[str, ...]] = {
    "telegram": ("chat_id",),
    "chatwoot": ("conversation_id",),
    "twilio": ("phone", "from"),
    "whatsapp": ("wa_id", "phone"),
    "vk": ("peer_id",),
    "email": ("address", "email"),
    "webhook": (),
}


@dataclass(frozen=True)
class Target:
    """Where one reply goes: transport and the address on it."""

    transport: Transport
    address: str


def resolve_target(reply: Reply, settings: Settings) -> Target:
    """The transport and address of ``reply``; a permanent DeliveryError when one is missing."""
    transport = _TRANSPORTS[reply.channel]
    if transport == "webhook":
        if not settings.outbound_webhook_url:
            raise DeliveryError(
                f"no outbound webhook configured for channel {reply.channel.value}",
                transient=False,
            )
        return Target(transport, settings.outbound_webhook_url)
    for key in _ADDRESS_KEYS[transport]:
        value = reply.reply_to.get(key, "").strip()
        if value:
            return Target(transport, value)
    keys = " or ".join(_ADDRESS_KEYS[transport])
    raise DeliveryError(
        f"reply {reply.reply_id} on {reply.channel.value} has no reply_to {keys}",
        transient=False,
    )


def message_text(reply: Reply) -> str:
    """The reply's text with its link appended."""
    text = reply.text
    if reply.link and reply.link not in text:
        text = f"{text}\n{reply.link}"
    return text


#: Where a long text may be split, best first: paragraph, line, sentence, word.
_BREAKS: tuple[str, ...] = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at the best break in each.

    A part ends at a paragraph, line, sentence or word break when one lies in the second
    half of the window; only a text without any is cut mid-word. Joined, the parts give the
    text back up to the whitespace at the cuts.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = limit
        for sep in _BREAKS:
            at = window.rfind(sep)
            if at >= limit // 2:
                cut = at + len(sep.rstrip()) if sep.strip() else at
                break
        piece = rest[:cut].rstrip()
        if piece:  # a run of blanks at a cut is not a message of its own
            parts.append(piece)
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


def reply_parts(reply: Reply, transport: str) -> list[str]:
    """The texts to send for ``reply``: more than one when it is over the platform's limit."""
    text = message_text(reply)
    limit = _MAX_CHARS.get(transport)
    if limit is None or len(text) <= limit:
        return [text]
    parts = split_text(text, limit)
    log.info("reply %s (%d chars) goes out in %d parts", reply.reply_id, len(text), len(parts))
    return parts


# ---------------------------------------------------------------- HTTP


def _retry_after(headers: Any, payload: Any) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date) or Telegram JSON."""
    if isinstance(payload, dict):
        params = payload.get("parameters")
        if isinstance(params, dict) and isinstance(params.get("retry_after"), int | float):
            return float(params["retry_after"])
    raw = headers.get("Retry-After") if headers is not None else None
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    what: str,
    settings: Settings,
    **kwargs: Any,
) -> Any:
    """POST once; the parsed JSON body of a 2xx, else DeliveryError."""
    timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout_s)
    try:
        async with session.post(url, timeout=timeout, **kwargs) as resp:
            body = await resp.read()
            status = resp.status
            headers = resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}: {exc}", transient=True) from exc
    payload = _parse(body)
    if 200 <= status < 300:
        return payload
    excerpt = body[:_EXCERPT].decode("utf-8", "replace")
    raise DeliveryError(
        f"{what}: HTTP {status}: {excerpt}",
        status=status,
        transient=status >= 500 or status in (408, 429),
        retry_after=_retry_after(headers, payload),
    )


async def send_telegram(
    session: aiohttp.ClientSession,
    settings: Settings,
    chat_id: str,
    text: str,
    *,
    reply_to_message_id: str | None = None,
) -> str:
    """Bot API ``sendMessage``; returns the sent message's id."""
    if settings.telegram_bot_token is None:
        raise DeliveryError("telegram_bot_token is not configured", transient=False)
    token = settings.telegram_bot_token.get_secret_value()
    url = f"{settings.telegram_api_base_url.rstrip('/')}/bot{token}/sendMessage"
    body: dict[str, Any] = {"chat_id": _int_or_str(chat_id), "text": text[:TELEGRAM_MAX_CHARS]}
    if reply_to_message_id and reply_to_message_id.isdigit():
        body["reply_to_message_id"] = int(reply_to_message_id)
    payload = await _post(session, url, "telegram sendMessage", settings, json=body)
    if not isinstance(payload, dict) or payload.get("ok") is not True:
        raise DeliveryError(
            f"telegram sendMessage: not ok: {str(payload)[:_EXCERPT]}", transient=False
        )
    result = payload.get("result")
    return str(result.get("message_id", "")) if isinstance(result, dict) else ""


def _int_or_str(value: str) -> int | str:
    """Telegram chat ids are integers (negative for groups); ``@channel`` names stay strings."""
    try:
        return int(value)
    except ValueError:
        return value


async def send_chatwoot(
    session: aiohttp.ClientSession,
    settings: Settings,
    conversation_id: str,
    content: str,
    *,
    account_id: str | None = None,
) -> str:
    """Chatwoot create-message API (outgoing, public); returns the message id."""
    if settings.chatwoot_api_token is None:
        raise DeliveryError("chatwoot_api_token is not configured", transient=False)
    account = account_id or settings.chatwoot_account_id
    url = (
        f"{settings.chatwoot_api_base_url.rstrip('/')}/api/v1/accounts/{account}"
        f"/conversations/{conversation_id}/messages"
    )
    body = {"content": content, "message_type": "outgoing", "private": False}
    headers = {"api_access_token": settings.chatwoot_api_token.get_secret_value()}
    payload = await _post(
        session, url, "chatwoot create-message", settings, json=body, headers=headers
    )
    return str(payload.get("id", "")) if isinstance(payload, dict) else ""


async def send_twilio(
    session: aiohttp.ClientSession,
    settings: Settings,
    to: str,
    body: str,
    *,
    from_number: str | None = None,
    status_callback: str | None = None,
) -> str:
    """Twilio Messages API (form-encoded, basic auth); returns the message SID.

    ``status_callback``: the URL Twilio posts the message's status to (our ingest's
    ``/webhooks/twilio?delivery_id=<reply id>``), which becomes a DeliveryReceipt.

    ``from_number`` is the number the customer wrote to (``reply_to["service_number"]``),
    so the answer comes from the same number; a ``whatsapp:`` sender makes the
    recipient ``whatsapp:`` too. Default: ``settings.twilio_from_number``.
    """
    if settings.twilio_auth_token is None:
        raise DeliveryError("twilio_auth_token is not configured", transient=False)
    sid = settings.twilio_account_sid
    url = f"{settings.twilio_api_base_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
    sender = from_number or settings.twilio_from_number
    if sender.lower().startswith("whatsapp:") and not to.lower().startswith("whatsapp:"):
        to = f"whatsapp:{to}"
    form = {"To": to, "From": sender, "Body": body[:TWILIO_MAX_CHARS]}
    if status_callback:
        form["StatusCallback"] = status_callback
    # built by hand: aiohttp.BasicAuth is deprecated in 3.14, encode_basic_auth is too new
    creds = f"{sid}:{settings.twilio_auth_token.get_secret_value()}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(creds).decode("ascii")}
    payload = await _post(session, url, "twilio Messages", settings, data=form, headers=headers)
    return str(payload.get("sid", "")) if isinstance(payload, dict) else ""


async def send_whatsapp(
    session: aiohttp.ClientSession,
    settings: Settings,
    to: str,
    text: str,
    *,
    phone_number_id: str | None = None,
    callback_data: str | None = None,
) -> str:
    """WhatsApp Cloud API ``POST /{phone_number_id}/messages`` (text); returns the wamid.

    ``callback_data`` (our reply id) goes as ``biz_opaque_callback_data``: WhatsApp sends it
    back in the status webhooks, which become DeliveryReceipts under that id.
    """
    if settings.whatsapp_access_token is None:
        raise DeliveryError("whatsapp_access_token is not configured", transient=False)
    sender = phone_number_id or settings.whatsapp_phone_number_id
    if not sender:
        raise DeliveryError("no WhatsApp phone_number_id to send from", transient=False)
    url = f"{settings.whatsapp_api_base_url.rstrip('/')}/{sender}/messages"
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to.lstrip("+"),
        "type": "text",
        "text": {"preview_url": False, "body": text[:WHATSAPP_MAX_CHARS]},
    }
    if callback_data:
        body["biz_opaque_callback_data"] = callback_data[:512]
    headers = {"Authorization": f"Bearer {settings.whatsapp_access_token.get_secret_value()}"}
    payload = await _post(session, url, "whatsapp messages", settings, json=body, headers=headers)
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        raise DeliveryError(f"whatsapp messages: no message id: {str(payload)[:_EXCERPT]}")
    return str(messages[0].get("id", ""))


def vk_random_id(reply_id: str, text: str) -> int:
    """``random_id`` of ``messages.send``: VK drops a second message with the same one, so it
    is derived from the reply (and the part's text), never random."""
    digest = hashlib.sha256(f"{reply_id}\x1f{text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


#: VK API error codes worth a retry: 1 unknown, 6 too many requests per second,
#: 9 flood control, 10 internal server error.
_VK_TRANSIENT = frozenset({1, 6, 9, 10})


async def send_vk(
    session: aiohttp.ClientSession,
    settings: Settings,
    peer_id: str,
    text: str,
    *,
    random_id: int,
) -> str:
    """VK ``messages.send`` (form-encoded, community token); returns the message id."""
    if settings.vk_access_token is None:
        raise DeliveryError("vk_access_token is not configured", transient=False)
    url = f"{settings.vk_api_base_url.rstrip('/')}/messages.send"
    form = {
        "peer_id": peer_id,
        "message": text[:VK_MAX_CHARS],
        "random_id": str(random_id),
        "access_token": settings.vk_access_token.get_secret_value(),
        "v": settings.vk_api_version,
    }
    payload = await _post(session, url, "vk messages.send", settings, data=form)
    # VK answers HTTP 200 with {"error": {...}} for API errors.
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("error_code")
        raise DeliveryError(
            f"vk messages.send: error {code}: {str(error.get('error_msg'))[:_EXCERPT]}",
            transient=code in _VK_TRANSIENT,
        )
    if not isinstance(payload, dict) or "response" not in payload:
        raise DeliveryError(f"vk messages.send: unexpected answer: {str(payload)[:_EXCERPT]}")
    return str(payload["response"])


def twilio_status_callback(settings: Settings, delivery_id: str) -> str | None:
    """Where Twilio reports the status of a message we send: the ingest's Twilio webhook.

    None when that cannot work: the real Twilio cannot call back a loopback
    ``PIPELINE_PUBLIC_BASE_URL`` (the default), only a local stand-in can.
    """
    if _loopback(settings.public_base_url) and not _loopback(settings.twilio_api_base_url):
        return None
    query = urlencode({"delivery_id": delivery_id})
    return f"{settings.public_base_url.rstrip('/')}/webhooks/twilio?{query}"


def _loopback(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


async def send_webhook(session: aiohttp.ClientSession, settings: Settings, reply: Reply) -> str:
    """POST the ``Reply`` JSON to the generic outbound webhook; returns the reply id."""
    if not settings.outbound_webhook_url:
        raise DeliveryError("outbound_webhook_url is not configured", transient=False)
    headers = {"Content-Type": "application/json", "Idempotency-Key": reply.reply_id}
    if settings.outbound_webhook_token is not None:
        headers["Authorization"] = f"Bearer {settings.outbound_webhook_token.get_secret_value()}"
    await _post(
        session,
        settings.outbound_webhook_url,
        "outbound webhook",
        settings,
        data=encode(reply),
        headers=headers,
    )
    return reply.reply_id


# ---------------------------------------------------------------- SMTP


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _smtp_send_sync(settings: Settings, message: EmailMessage) -> None:
    with smtplib.SMTP(
        settings.smtp_relay_host, settings.smtp_relay_port, timeout=settings.delivery_timeout_s
    ) as smtp:
        if settings.smtp_relay_starttls:
            smtp.starttls()
        if settings.smtp_relay_user:
            password = settings.smtp_relay_password
            smtp.login(settings.smtp_relay_user, password.get_secret_value() if password else "")
        smtp.send_message(message, from_addr=settings.mail_from)


async def send_email(settings: Settings, message: EmailMessage) -> str:
    """Send over SMTP to the relay (smtplib in a worker thread); returns the Message-ID."""
    if not message["To"]:
        raise DeliveryError("e-mail has no To address", transient=False)
    try:
        await asyncio.to_thread(_smtp_send_sync, settings, message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items()
        )
        raise DeliveryError(
            f"smtp: recipients refused: {detail[:_EXCERPT]}",
            status=codes[0] if codes else None,
            transient=any(400 <= code < 500 for code in codes),
        ) from exc
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(
            f"smtp: {exc.smtp_code} {_text(exc.smtp_error)[:_EXCERPT]}",
            status=exc.smtp_code,
            transient=400 <= exc.smtp_code < 500,
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"smtp: {exc}", transient=False) from exc
    except OSError as exc:  # connection refused/reset, timeouts, SMTPServerDisconnected
        raise DeliveryError(f"smtp: {type(exc).__name__}: {exc}", transient=True) from exc
    return str(message["Message-ID"] or "")


# ---------------------------------------------------------------- dispatch


async def send_reply(
    session: aiohttp.ClientSession,
    settings: Settings,
    reply: Reply,
    *,
    target: Target | None = None,
    text: str | None = None,
) -> str:
    """One delivery attempt of ``reply`` (or of ``text``, one of its parts) in its channel.

    Returns the platform's message id.
    """
    target = target or resolve_target(reply, settings)
    text = message_text(reply) if text is None else text
    if target.transport == "telegram":
        return await send_telegram(
            session,
            settings,
            target.address,
            text,
            reply_to_message_id=reply.reply_to.get("message_id"),
        )
    if target.transport == "chatwoot":
        return await send_chatwoot(
            session,
            settings,
            target.address,
            text,
            account_id=reply.reply_to.get("account_id"),
        )
    if target.transport == "twilio":
        return await send_twilio(
            session,
            settings,
            target.address,
            text,
            from_number=reply.reply_to.get("service_number") or None,
            status_callback=twilio_status_callback(settings, reply.reply_id),
        )
    if target.transport == "whatsapp":
        return await send_whatsapp(
            session,
            settings,
            target.address,
            text,
            phone_number_id=reply.reply_to.get("phone_number_id") or None,
            callback_data=reply.reply_id,
        )
    if target.transport == "vk":
        return await send_vk(
            session, settings, target.address, text, random_id=vk_random_id(reply.reply_id, text)
        )
    if target.transport == "email":
        return await send_email(settings, compose_reply_email(reply, settings))
    return await send_webhook(session, settings, reply)
