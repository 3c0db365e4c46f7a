"""Pure parsers of the platforms' own webhook formats, and their authentication checks.

Each parser takes the decoded payload and returns a ``ParsedMessage`` (a customer
message), an ``Ignored`` (a valid event that is not a customer message: an agent's
outgoing Chatwoot message, a Telegram update without text) or raises ``InvalidInput``
naming the offending field.

Generic format (``POST /ingest``: web chat, web forms, social networks, API)::

    {"channel": "webchat" | "webform" | "social" | "api",
     "message_id": "platform id (idempotency key)",
     "customer": {"id"?, "email"?, "phone"?, "name"?, "external_id"?},
     "text": "...", "subject"?, "sent_at"?: ISO 8601, "conversation_id"?,
     "topic"?: "web-form topic (routing hint form_topic)", "metadata"?: {str: str}}

Voice / IVR event (``POST /webhooks/voice``), e.g. from a PBX or a voicemail transcriber::

    {"call_id": "unique call or voicemail id",
     "caller": "+79161234567", "called"?: "+74950000000",
     "transcript": "recognised speech", "ivr_menu"?: ["2", "1"] | "2>1",
     "recording_url"?: "https://...", "started_at"?: ISO 8601 | Unix seconds,
     "duration_s"?: number, "kind"?: "voicemail" | "ivr" | "call", "language"?: "ru" | "en"}

``reply_to`` per channel (what the notify stage needs to answer in the same channel):
telegram ``chat_id`` (+ ``message_id``); chatwoot ``conversation_id`` + ``account_id``;
sms ``phone`` (customer) + ``service_number`` (our number); voice ``phone``;
email ``address`` + ``message_id`` (+ ``references``); generic: ``address`` and/or ``phone``
when given, plus ``conversation_id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.config import Settings
from pipeline.errors import DecodeError, InvalidInput, Unauthorized
from pipeline.events import Channel, Identity
from pipeline.ingest.message import ParsedMessage
from pipeline.domain.text import (
    canonical_channel,
    normalize_email,
    normalize_identity,
    normalize_phone,
    parse_timestamp,
)

__all__ = [
    "GENERIC_CHANNELS",
    "Ignored",
    "chatwoot_signature",
    "check_bearer",
    "check_chatwoot_signature",
    "check_telegram_secret",
    "check_twilio_signature",
    "decode_json",
    "parse_chatwoot",
    "parse_generic",
    "parse_telegram",
    "parse_twilio",
    "parse_voice",
    "twilio_signature",
]

GENERIC_CHANNELS = frozenset({Channel.webchat, Channel.webform, Channel.social, Channel.api})
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Ignored:
    """A well-formed event that is not a customer message (answered 200, nothing published)."""

    reason: str


# ---------------------------------------------------------------- decoding helpers


def decode_json(body: bytes) -> Any:
    """UTF-8 JSON of a request body; DecodeError naming the problem."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"body is not UTF-8 (byte {exc.start})", field="<body>") from exc
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}", field="<body>") from exc


def _obj(value: Any, field: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("must be a JSON object", field=field)
    return value


def _str(
    data: Mapping[str, Any], key: str, field: str, *, required: bool = False, max_len: int = 0
) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidInput("is required", field=field)
        return None
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field=field)
    if required and not value.strip():
        raise InvalidInput("must not be empty", field=field)
    if max_len and len(value) > max_len:
        raise InvalidInput(f"longer than {max_len} characters", field=field)
    return value


def _id(data: Mapping[str, Any], key: str, field: str, *, required: bool = False) -> str | None:
    """A platform id given as a JSON string or integer."""
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidInput("is required", field=field)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput("must be a string or an integer", field=field)
    text = str(value).strip()
    if not text:
        raise InvalidInput("must not be empty", field=field)
    if len(text) > MAX_ID_CHARS:
        raise InvalidInput(f"longer than {MAX_ID_CHARS} characters", field=field)
    return text


def _dedupe(identities: list[Identity]) -> tuple[Identity, ...]:
    seen: dict[tuple[str, str], Identity] = {}
    for ident in identities:
        seen.setdefault((ident.kind, ident.value), ident)
    return tuple(seen.values())


def _str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("must be an object of strings", field=field)
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise InvalidInput("values must be strings", field=f"{field}.{k}")
        out[str(k)[:100]] = str(v)[:2000]
    return out


# ---------------------------------------------------------------- generic


def parse_generic(payload: Any) -> ParsedMessage:
    """The documented generic JSON format (web chat, web forms, social, API)."""
    data = _obj(payload, "<body>")
    channel_name = _str(data, "channel", "channel", required=True) or ""
    channel = canonical_channel(channel_name)
    if channel not in GENERIC_CHANNELS:
        raise InvalidInput(
            f"channel {channel.value!r} has its own endpoint; /ingest takes "
            + ", ".join(sorted(c.value for c in GENERIC_CHANNELS)),
            field="channel",
        )
    message_id = _id(data, "message_id", "message_id", required=True) or ""
    customer = _obj(data.get("customer"), "customer")
    text = _str(data, "text", "text", required=True) or ""
    identities: list[Identity] = []
    reply_to: dict[str, str] = {}
    email = _str(customer, "email", "customer.email", max_len=320)
    if email:
        ident = normalize_identity("email", email)
        identities.append(ident)
        reply_to["address"] = ident.value
    phone = _str(customer, "phone", "customer.phone", max_len=64)
    if phone:
        ident = normalize_identity("phone", phone)
        identities.append(ident)
        reply_to["phone"] = ident.value
    external = _id(customer, "external_id", "customer.external_id")
    if external:
        kind = "social" if channel is Channel.social else "webchat"
        identities.append(normalize_identity(kind, f"{channel.value}:{external}"))
    customer_id = _id(customer, "id", "customer.id")
    if not identities and not customer_id:
        raise InvalidInput("needs at least one of id, email, phone, external_id", field="customer")
    name = _str(customer, "name", "customer.name", max_len=200)
    conversation_id = _id(data, "conversation_id", "conversation_id")
    if conversation_id:
        reply_to["conversation_id"] = conversation_id
    hints: dict[str, str] = {}
    topic = _str(data, "topic", "topic", max_len=200)
    if topic and topic.strip():
        hints["form_topic"] = topic.strip()
    sent_at = parse_timestamp(data["sent_at"], "sent_at") if data.get("sent_at") else None
    return ParsedMessage(
        channel=channel,
        channel_message_id=message_id,
        identities=_dedupe(identities),
        text=text,
        name=name,
        subject=_str(data, "subject", "subject", max_len=998),
        sent_at=sent_at,
        conversation_id=conversation_id,
        reply_to=reply_to,
        routing_hints=hints,
        metadata=_str_map(data.get("metadata"), "metadata"),
        customer_id=customer_id,
    )


# ---------------------------------------------------------------- telegram


def parse_telegram(payload: Any) -> ParsedMessage | Ignored:
    """A Telegram Bot API ``Update`` carrying ``message`` or ``edited_message``."""
    update = _obj(payload, "<body>")
    update_id = _id(update, "update_id", "update_id", required=True)
    edited = "edited_message" in update and "message" not in update
    key = "edited_message" if edited else "message"
    if key not in update:
        kinds = sorted(k for k in update if k != "update_id")
        return Ignored(f"update type {','.join(kinds)[:60] or 'empty'} is not a message")
    msg = _obj(update[key], key)
    message_id = _id(msg, "message_id", f"{key}.message_id", required=True)
    chat = _obj(msg.get("chat"), f"{key}.chat")
    chat_id = _id(chat, "id", f"{key}.chat.id", required=True) or ""
    sender = _obj(msg.get("from"), f"{key}.from", required=False)
    if sender.get("is_bot") is True:
        return Ignored("message from a bot")
    text = _str(msg, "text", f"{key}.text")
    if text is None:
        text = _str(msg, "caption", f"{key}.caption")
    if text is None or not text.strip():
        return Ignored("message has no text or caption")
    user_id = _id(sender, "id", f"{key}.from.id") if sender else None
    identities = [Identity(kind="telegram", value=user_id or chat_id)]
    contact = _obj(msg.get("contact"), f"{key}.contact", required=False)
    if contact and str(contact.get("user_id")) == (user_id or chat_id):
        # A shared own contact reveals the phone: links Telegram and phone identities.
        phone = normalize_phone(_str(contact, "phone_number", f"{key}.contact.phone_number") or "")
        if phone:
            identities.append(Identity(kind="phone", value=phone))
    first = _str(sender, "first_name", f"{key}.from.first_name", max_len=256) or ""
    last = _str(sender, "last_name", f"{key}.from.last_name", max_len=256) or ""
    name = f"{first} {last}".strip() or None
    date_field = "edit_date" if edited and msg.get("edit_date") is not None else "date"
    sent_at = (
        parse_timestamp(msg[date_field], f"{key}.{date_field}")
        if msg.get(date_field) is not None
        else None
    )
    cmid = f"{chat_id}:{message_id}"
    metadata = {"telegram_update_id": update_id or "", "telegram_chat_type": str(chat.get("type"))}
    if edited:
        cmid = f"{cmid}:edit:{msg.get('edit_date', update_id)}"
        metadata["edited"] = "true"
    username = _str(sender, "username", f"{key}.from.username", max_len=64)
    if username:
        metadata["telegram_username"] = username
    lang = _str(sender, "language_code", f"{key}.from.language_code", max_len=16)
    return ParsedMessage(
        channel=Channel.telegram,
        channel_message_id=cmid,
        identities=_dedupe(identities),
        text=text,
        name=name,
        sent_at=sent_at,
        conversation_id=chat_id,
        reply_to={"chat_id": chat_id, "message_id": message_id or ""},
        metadata=metadata,
        language_hint=(lang or "")[:2].lower() or None,
    )


def check_telegram_secret(headers: Mapping[str, str], settings: Settings) -> None:
    """``X-Telegram-Bot-Api-Secret-Token`` must equal the configured secret (when set)."""
    if settings.telegram_secret_token is None:
        return
    got = headers.get("X-Telegram-Bot-Api-Secret-Token")
    if not got:
        raise Unauthorized("missing X-Telegram-Bot-Api-Secret-Token", status=401)
    want = settings.telegram_secret_token.get_secret_value()
    if not hmac.compare_digest(got.encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong X-Telegram-Bot-Api-Secret-Token", status=403)


# ---------------------------------------------------------------- chatwoot

_CHATWOOT_TYPES = {0: "incoming", 1: "outgoing", 2: "activity", 3: "template"}


def parse_chatwoot(payload: Any) -> ParsedMessage | Ignored:
    """A Chatwoot ``message_created`` webhook; only incoming, non-private messages count."""
    data = _obj(payload, "<body>")
    event = _str(data, "event", "event", required=True)
    if event != "message_created":
        return Ignored(f"event {str(event)[:40]} is not message_created")
    mtype: Any = data.get("message_type")
    if isinstance(mtype, int) and not isinstance(mtype, bool):
        mtype = _CHATWOOT_TYPES.get(mtype, str(mtype))
    if not isinstance(mtype, str):
        raise InvalidInput(
            "is required (incoming|outgoing|activity|template)", field="message_type"
        )
    if mtype != "incoming":
        # Never loop on our own (or agents') replies.
        return Ignored(f"message_type {mtype[:20]} is not incoming")
    if data.get("private") is True:
        return Ignored("private note")
    message_id = _id(data, "id", "id", required=True) or ""
    account = _obj(data.get("account"), "account")
    account_id = _id(account, "id", "account.id", required=True) or ""
    conversation = _obj(data.get("conversation"), "conversation")
    conversation_id = _id(conversation, "id", "conversation.id", required=True) or ""
    sender = _obj(data.get("sender"), "sender", required=False)
    meta_sender = _obj(
        _obj(conversation.get("meta"), "conversation.meta", required=False).get("sender"),
        "conversation.meta.sender",
        required=False,
    )
    contact = sender if sender.get("type", "contact") == "contact" and sender else meta_sender
    contact_id = _id(contact, "id", "sender.id") if contact else None
    if contact_id is None:
        inbox_contact = _obj(
            conversation.get("contact_inbox"), "conversation.contact_inbox", required=False
        )
        contact_id = _id(inbox_contact, "contact_id", "conversation.contact_inbox.contact_id")
    if contact_id is None:
        raise InvalidInput("contact id not found (sender.id)", field="sender.id")
    identities = [Identity(kind="chatwoot", value=f"{account_id}:{contact_id}")]
    email = _str(contact, "email", "sender.email", max_len=320)
    if email and normalize_email(email):
        identities.append(normalize_identity("email", email))
    phone = _str(contact, "phone_number", "sender.phone_number", max_len=64)
    if phone and normalize_phone(phone):
        identities.append(normalize_identity("phone", phone))
    text = _str(data, "content", "content")
    if text is None or not text.strip():
        return Ignored("message has no text content")
    created = data.get("created_at")
    sent_at = parse_timestamp(created, "created_at") if created not in (None, "") else None
    inbox = _obj(data.get("inbox"), "inbox", required=False)
    metadata = {"chatwoot_account_id": account_id, "chatwoot_contact_id": contact_id}
    inbox_id = _id(inbox, "id", "inbox.id")
    if inbox_id:
        metadata["chatwoot_inbox_id"] = inbox_id
    source = _str(conversation, "channel", "conversation.channel", max_len=100)
    if source:
        metadata["chatwoot_channel"] = source
    return ParsedMessage(
        channel=Channel.chatwoot,
        channel_message_id=f"{account_id}:{message_id}",
        identities=_dedupe(identities),
        text=text,
        name=_str(contact, "name", "sender.name", max_len=200),
        sent_at=sent_at,
        conversation_id=f"{account_id}:{conversation_id}",
        reply_to={"conversation_id": conversation_id, "account_id": account_id},
        metadata=metadata,
    )


def chatwoot_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``"{timestamp}.{body}"`` (Chatwoot webhooks)."""
    digest = hmac.new(
        secret.encode("utf-8"), timestamp.encode("utf-8") + b"." + body, hashlib.sha256
    ).hexdigest()
    return f"sha256={digest}"


def check_chatwoot_signature(
    headers: Mapping[str, str],
    body: bytes,
    settings: Settings,
    now_s: float,
    tolerance_s: float = 300.0,
) -> None:
    """``X-Chatwoot-Signature`` / ``X-Chatwoot-Timestamp`` check (when a secret is set)."""
    if settings.chatwoot_hmac_token is None:
        return
    sig = headers.get("X-Chatwoot-Signature")
    ts = headers.get("X-Chatwoot-Timestamp")
    if not sig or not ts:
        raise Unauthorized("missing X-Chatwoot-Signature / X-Chatwoot-Timestamp", status=401)
    want = chatwoot_signature(settings.chatwoot_hmac_token.get_secret_value(), ts, body)
    if not hmac.compare_digest(sig.encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong X-Chatwoot-Signature", status=403)
    try:
        age = abs(now_s - float(ts))
    except ValueError:
        raise Unauthorized("X-Chatwoot-Timestamp is not a number", status=403) from None
    if age > tolerance_s:
        raise Unauthorized("X-Chatwoot-Timestamp too far from now (replay?)", status=403)


# ---------------------------------------------------------------- twilio


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of URL + sorted ``name+value`` pairs."""
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    mac = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def check_twilio_signature(
    headers: Mapping[str, str], url: str, params: Mapping[str, str], settings: Settings
) -> None:
    """``X-Twilio-Signature`` validated with the auth token (when set)."""
    if settings.twilio_auth_token is None:
        return
    got = headers.get("X-Twilio-Signature")
    if not got:
        raise Unauthorized("missing X-Twilio-Signature", status=401)
    want = twilio_signature(settings.twilio_auth_token.get_secret_value(), url, params)
    if not hmac.compare_digest(got.encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong X-Twilio-Signature", status=403)


def parse_twilio(form: Mapping[str, str]) -> ParsedMessage:
    """A Twilio inbound SMS (or WhatsApp) webhook, form fields already decoded."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    if not sid or not sid.strip():
        raise InvalidInput("is required", field="MessageSid")
    if len(sid) > MAX_ID_CHARS:
        raise InvalidInput(f"longer than {MAX_ID_CHARS} characters", field="MessageSid")
    raw_from = form.get("From")
    if not raw_from:
        raise InvalidInput("is required", field="From")
    phone = normalize_phone(raw_from)
    if phone is None:
        raise InvalidInput(f"not a phone number: {raw_from[:40]!r}", field="From")
    body = form.get("Body")
    if body is None:
        raise InvalidInput("is required", field="Body")
    to = form.get("To", "")
    metadata = {"twilio_message_sid": sid.strip()}
    if raw_from.lower().startswith("whatsapp:"):
        metadata["twilio_channel"] = "whatsapp"
    for key in ("AccountSid", "FromCity", "FromCountry", "NumMedia", "MessagingServiceSid"):
        if form.get(key):
            metadata[f"twilio_{key}"] = form[key][:200]
    hints = {"to_address": to} if to else {}
    reply_to = {"phone": phone}
    if to:
        reply_to["service_number"] = to
    return ParsedMessage(
        channel=Channel.sms,
        channel_message_id=sid.strip(),
        identities=(Identity(kind="phone", value=phone),),
        text=body,
        conversation_id=f"{phone}>{to}" if to else phone,
        reply_to=reply_to,
        routing_hints=hints,
        metadata=metadata,
    )


# ---------------------------------------------------------------- voice


def parse_voice(payload: Any) -> ParsedMessage:
    """An IVR / voicemail event in the documented voice JSON shape."""
    data = _obj(payload, "<body>")
    call_id = _id(data, "call_id", "call_id", required=True) or ""
    caller = _str(data, "caller", "caller", required=True, max_len=64) or ""
    phone = normalize_phone(caller)
    if phone is None:
        raise InvalidInput(f"not a phone number: {caller[:40]!r}", field="caller")
    transcript = _str(data, "transcript", "transcript", required=True) or ""
    menu: Any = data.get("ivr_menu")
    hints: dict[str, str] = {}
    if menu is not None:
        if isinstance(menu, list) and all(
            isinstance(x, str | int) and not isinstance(x, bool) for x in menu
        ):
            path = ">".join(str(x).strip() for x in menu)
        elif isinstance(menu, str):
            path = ">".join(p.strip() for p in menu.replace("/", ">").split(">") if p.strip())
        else:
            raise InvalidInput("must be a list of choices or 'a>b' text", field="ivr_menu")
        if len(path) > 200:
            raise InvalidInput("longer than 200 characters", field="ivr_menu")
        if path:
            hints["ivr_menu"] = path
    called = _str(data, "called", "called", max_len=64)
    if called:
        hints["to_address"] = called
    metadata: dict[str, str] = {}
    url = _str(data, "recording_url", "recording_url", max_len=2000)
    if url:
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("must be an http(s) URL", field="recording_url")
        metadata["recording_url"] = url
    kind = _str(data, "kind", "kind", max_len=20)
    if kind:
        metadata["voice_kind"] = kind
    duration = data.get("duration_s")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            raise InvalidInput("must be a number", field="duration_s")
        metadata["duration_s"] = str(duration)
    started = data.get("started_at")
    sent_at = parse_timestamp(started, "started_at") if started not in (None, "") else None
    lang = _str(data, "language", "language", max_len=16)
    return ParsedMessage(
        channel=Channel.voice,
        channel_message_id=call_id,
        identities=(Identity(kind="phone", value=phone),),
        text=transcript,
        sent_at=sent_at,
        conversation_id=call_id,
        reply_to={"phone": phone},
        routing_hints=hints,
        metadata=metadata,
        language_hint=(lang or "")[:2].lower() or None,
    )


def check_bearer(headers: Mapping[str, str], settings: Settings) -> None:
    """``Authorization: Bearer <generic_api_token>`` for /ingest and /webhooks/voice (when set)."""
    if settings.generic_api_token is None:
        return
    auth = headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        raise Unauthorized("missing Authorization: Bearer token", status=401)
    want = settings.generic_api_token.get_secret_value()
    if not hmac.compare_digest(auth[7:].strip().encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong bearer token", status=403)
