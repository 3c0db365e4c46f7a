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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import orjson

from pipeline.config import Settings
from pipeline.domain.text import (
    canonical_channel,
    normalize_email,
    normalize_identity,
    normalize_phone,
    parse_timestamp,
)
from pipeline.errors import DecodeError, InvalidInput, Unauthorized
from pipeline.events import Attachment, Channel, Identity
from pipeline.ingest.message import ParsedMessage

__all__ = [
    "GENERIC_CHANNELS",
    "Answer",
    "BotCommand",
    "Ignored",
    "Item",
    "PlatformReceipt",
    "chatwoot_signature",
    "check_bearer",
    "check_chatwoot_signature",
    "check_telegram_secret",
    "check_twilio_signature",
    "decode_json",
    "parse_chatwoot",
    "parse_form",
    "parse_generic",
    "parse_telegram",
    "parse_twilio",
    "parse_twilio_status",
    "parse_voice",
    "twilio_signature",
    "twilio_signature_valid",
]

GENERIC_CHANNELS = frozenset({Channel.webchat, Channel.webform, Channel.social, Channel.api})
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Ignored:
    """A well-formed event that is not a customer message (answered 200, nothing published)."""

    reason: str


ReceiptStatus = Literal["sent", "delivered", "read", "failed"]


@dataclass(frozen=True)
class PlatformReceipt:
    """A platform's report on a message we sent (Twilio status callback, WhatsApp status).

    ``delivery_id`` is our reply id when the platform echoes it back (the ``delivery_id``
    query parameter of Twilio's StatusCallback URL, WhatsApp's ``biz_opaque_callback_data``).
    """

    channel: str
    provider_message_id: str
    status: ReceiptStatus
    provider_status: str
    delivery_id: str | None = None
    error: str | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class BotCommand:
    """A bot command (``/start``, VK's «Начать» button): answered with a greeting, not routed."""

    command: str
    message: ParsedMessage


@dataclass(frozen=True)
class Answer:
    """A literal text the platform expects as the answer (VK's confirmation code)."""

    text: str


#: What one webhook item becomes.
Item = ParsedMessage | Ignored | PlatformReceipt | BotCommand


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


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("must be a list", field=field)
    return value


def _size(data: Mapping[str, Any], key: str, field: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("must be a non-negative integer", field=field)
    return value


def _http_url(data: Mapping[str, Any], key: str, field: str) -> str | None:
    url = _str(data, key, field, max_len=2000)
    if url and not url.startswith(("http://", "https://")):
        raise InvalidInput("must be an http(s) URL", field=field)
    return url or None


#: What a command word means; anything else after a slash is an ordinary message.
BOT_COMMANDS = {"start": "start", "help": "start", "начать": "start"}


def bot_command(text: str) -> str | None:
    """The command of ``/start``, ``/start@our_bot payload`` or ``/help``, else None."""
    head = text.strip().split(maxsplit=1)[0] if text.strip() else ""
    if not head.startswith("/"):
        return None
    return BOT_COMMANDS.get(head[1:].split("@", 1)[0].lower())


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


def parse_telegram(payload: Any) -> ParsedMessage | Ignored | BotCommand:
    """A Telegram Bot API ``Update`` carrying ``message`` or ``edited_message``.

    Text or a caption, and files (photo, document, voice, audio, video, sticker) as
    attachment metadata; a message with only a file is a request without text. ``/start``
    and ``/help`` are a ``BotCommand``.
    """
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
    attachments = _telegram_attachments(msg, key)
    if (text is None or not text.strip()) and not attachments:
        kinds = sorted(k for k in msg if k not in _TELEGRAM_ENVELOPE)
        return Ignored(f"message without text or a file ({','.join(kinds)[:60] or 'empty'})")
    text = text or ""
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
    parsed = ParsedMessage(
        channel=Channel.telegram,
        channel_message_id=cmid,
        identities=_dedupe(identities),
        text=text,
        name=name,
        sent_at=sent_at,
        conversation_id=chat_id,
        reply_to={"chat_id": chat_id, "message_id": message_id or ""},
        attachments=attachments,
        metadata=metadata,
        language_hint=(lang or "")[:2].lower() or None,
    )
    command = None if edited else bot_command(text)
    return BotCommand(command, parsed) if command else parsed


_TELEGRAM_ENVELOPE = frozenset(
    {"message_id", "from", "chat", "date", "edit_date", "text", "caption", "entities"}
)
#: Telegram message fields that carry a file, and the MIME type when the object has none.
_TELEGRAM_FILES = {
    "photo": "image/jpeg",  # Bot API photos are always JPEG
    "document": "application/octet-stream",
    "voice": "audio/ogg",
    "audio": "audio/mpeg",
    "video": "video/mp4",
    "video_note": "video/mp4",
    "animation": "video/mp4",
    "sticker": "image/webp",
}


def _telegram_attachments(msg: Mapping[str, Any], key: str) -> tuple[Attachment, ...]:
    out: list[Attachment] = []
    for kind, default_type in _TELEGRAM_FILES.items():
        value = msg.get(kind)
        if value is None:
            continue
        where = f"{key}.{kind}"
        if kind == "photo":
            sizes = _list(value, where)
            if not sizes:
                continue
            # PhotoSize list, smallest first: the last one is the original.
            where = f"{where}[{len(sizes) - 1}]"
            value = sizes[-1]
        obj = _obj(value, where)
        out.append(
            Attachment(
                kind=kind,
                filename=_str(obj, "file_name", f"{where}.file_name", max_len=256),
                content_type=_str(obj, "mime_type", f"{where}.mime_type", max_len=128)
                or default_type,
                size=_size(obj, "file_size", f"{where}.file_size"),
                platform_file_id=_id(obj, "file_id", f"{where}.file_id", required=True),
            )
        )
    return tuple(out)


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
    # The API takes the display id (Chatwoot's sample payload has only ``display_id``; in
    # the others ``id`` is the display id).
    conversation_id = _id(conversation, "display_id", "conversation.display_id") or _id(
        conversation, "id", "conversation.id"
    )
    if conversation_id is None:
        raise InvalidInput("is required (or conversation.display_id)", field="conversation.id")
    contact, where = _chatwoot_contact(data, conversation)
    contact_id = _id(contact, "id", f"{where}.id") if contact else None
    if contact_id is None:
        inbox_contact = _obj(
            conversation.get("contact_inbox"), "conversation.contact_inbox", required=False
        )
        contact_id = _id(inbox_contact, "contact_id", "conversation.contact_inbox.contact_id")
    if contact_id is None:
        raise InvalidInput("contact id not found (contact.id or sender.id)", field="contact.id")
    identities = [Identity(kind="chatwoot", value=f"{account_id}:{contact_id}")]
    email = _str(contact, "email", f"{where}.email", max_len=320)
    if email and normalize_email(email):
        identities.append(normalize_identity("email", email))
    phone = _str(contact, "phone_number", f"{where}.phone_number", max_len=64)
    if phone and normalize_phone(phone):
        identities.append(normalize_identity("phone", phone))
    text = _str(data, "content", "content") or ""
    attachments = _chatwoot_attachments(data)
    if not text.strip() and not attachments:
        return Ignored("message has no text content or attachment")
    metadata = {"chatwoot_account_id": account_id, "chatwoot_contact_id": contact_id}
    sent_at = _chatwoot_time(data.get("created_at"), metadata)
    inbox = _obj(data.get("inbox"), "inbox", required=False)
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
        name=_str(contact, "name", f"{where}.name", max_len=200),
        sent_at=sent_at,
        conversation_id=f"{account_id}:{conversation_id}",
        reply_to={"conversation_id": conversation_id, "account_id": account_id},
        attachments=attachments,
        metadata=metadata,
    )


def _chatwoot_contact(
    data: Mapping[str, Any], conversation: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """The customer: ``contact``, a ``sender`` of type contact, or the conversation's sender.

    A ``sender`` without ``type: contact`` is an agent (Chatwoot's sample payload puts the
    agent in ``sender`` and the customer in ``contact``) and is never taken for the customer.
    """
    contact = _obj(data.get("contact"), "contact", required=False)
    if contact:
        return contact, "contact"
    sender = _obj(data.get("sender"), "sender", required=False)
    if sender.get("type") == "contact":
        return sender, "sender"
    meta = _obj(conversation.get("meta"), "conversation.meta", required=False)
    meta_sender = _obj(meta.get("sender"), "conversation.meta.sender", required=False)
    if meta_sender.get("type", "contact") == "contact":
        return meta_sender, "conversation.meta.sender"
    return {}, "contact"


def _chatwoot_time(value: Any, metadata: dict[str, str]) -> datetime | None:
    """``created_at`` as Unix seconds, ISO 8601 or Chatwoot's ``2020-03-03 13:05:57 UTC``.

    It is optional: a value in another format is kept in the metadata instead of
    rejecting the message.
    """
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.strip().endswith(" UTC"):
        value = value.strip()[:-4].replace(" ", "T") + "+00:00"
    try:
        return parse_timestamp(value, "created_at")
    except InvalidInput:
        metadata["chatwoot_created_at"] = str(value)[:64]
        return None


def _chatwoot_attachments(data: Mapping[str, Any]) -> tuple[Attachment, ...]:
    out: list[Attachment] = []
    for i, item in enumerate(_list(data.get("attachments"), "attachments")):
        where = f"attachments[{i}]"
        att = _obj(item, where)
        kind = _str(att, "file_type", f"{where}.file_type", max_len=32) or "file"
        ext = _str(att, "extension", f"{where}.extension", max_len=32)
        out.append(
            Attachment(
                kind=kind,
                filename=f"attachment.{ext}" if ext else None,
                content_type=_CHATWOOT_TYPES_MIME.get(kind, "application/octet-stream"),
                size=_size(att, "file_size", f"{where}.file_size"),
                platform_file_id=_id(att, "id", f"{where}.id"),
                url=_http_url(att, "data_url", f"{where}.data_url"),
            )
        )
    return tuple(out)


_CHATWOOT_TYPES_MIME = {"image": "image/*", "audio": "audio/*", "video": "video/*"}


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


FormPairs = Sequence[tuple[str, str]]


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs in order, repeated keys kept."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"body is not UTF-8 (byte {exc.start})", field="<body>") from exc
    try:
        return parse_qsl(text, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"invalid form encoding: {exc}", field="<body>") from exc


def _pairs(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def twilio_signature(
    auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]
) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of the URL + ``name+value`` pairs.

    Names sorted; a name sent several times contributes each distinct value, sorted (as
    twilio-python's ``RequestValidator`` and twilio-node's ``getExpectedTwilioSignature``).
    """
    values: dict[str, set[str]] = {}
    for key, value in _pairs(params):
        values.setdefault(key, set()).add(value)
    data = url + "".join(k + v for k in sorted(values) for v in sorted(values[k]))
    mac = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _twilio_queries(query: str) -> list[str]:
    """The query as given, as a browser URL parser writes it, and as Node's querystring does.

    twilio-node validates against both re-encodings (``'`` is ``%27`` after ``new URL()``,
    a literal ``'`` after ``querystring.stringify``), and Twilio signs some requests over the
    first: its vectors need both.
    """
    whatwg = "".join(
        c if 0x21 <= ord(c) < 0x7F and c not in "\"#<>'" else quote(c, safe="") for c in query
    )
    pairs = parse_qsl(query, keep_blank_values=True)
    legacy = "&".join(f"{quote(k, safe=_NODE_SAFE)}={quote(v, safe=_NODE_SAFE)}" for k, v in pairs)
    return list(dict.fromkeys([query, whatwg, legacy]))


_NODE_SAFE = "-_.!~*'()"  # what Node's querystring.escape leaves alone


def _twilio_urls(url: str) -> list[str]:
    """Every form of ``url`` Twilio's SDKs validate a signature against.

    As given, without its port, with the scheme's default port (Twilio signs some
    requests with ``:443``/``:80`` and some without), each with the query re-encoded
    as the SDKs do (``_twilio_queries``).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netlocs = [parts.netloc, prefix + host]
    port = _DEFAULT_PORTS.get(parts.scheme)
    if port is not None:
        netlocs.append(f"{prefix}{host}:{port}")
    urls = [url]
    for netloc in netlocs:
        for query in _twilio_queries(parts.query):
            urls.append(urlunsplit(parts._replace(netloc=netloc, query=query)))
    return list(dict.fromkeys(urls))


def twilio_signature_valid(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    signature: str,
    *,
    body: bytes | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for this request (any URL form the SDKs accept).

    A JSON request carries ``bodySHA256`` in the URL: then the body's SHA-256 must match
    and the parameters do not take part in the signature.
    """
    pairs = _pairs(params)
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    if "bodySHA256" in query and body is not None:
        digest = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(digest.encode("ascii"), query["bodySHA256"].encode("utf-8")):
            return False
        pairs = []
    got = signature.strip().encode("utf-8")
    return any(
        hmac.compare_digest(got, twilio_signature(auth_token, candidate, pairs).encode("ascii"))
        for candidate in _twilio_urls(url)
    )


def check_twilio_signature(
    headers: Mapping[str, str],
    url: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    settings: Settings,
) -> None:
    """``X-Twilio-Signature`` validated with the auth token (when set)."""
    if settings.twilio_auth_token is None:
        return
    got = headers.get("X-Twilio-Signature")
    if not got:
        raise Unauthorized("missing X-Twilio-Signature", status=401)
    token = settings.twilio_auth_token.get_secret_value()
    if not twilio_signature_valid(token, url, params, got):
        raise Unauthorized("wrong X-Twilio-Signature", status=403)


#: Twilio MessageStatus → our receipt status; others (queued, sending, accepted,
#: scheduled, receiving, received) are steps on the way and are not reported.
_TWILIO_STATUS: dict[str, ReceiptStatus] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}


def parse_twilio_status(
    form: Mapping[str, str], delivery_id: str | None = None
) -> PlatformReceipt | Ignored:
    """A Twilio status callback (``MessageStatus``, no ``Body``) for a message we sent."""
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    if not sid:
        raise InvalidInput("is required", field="MessageSid")
    if len(sid) > MAX_ID_CHARS:
        raise InvalidInput(f"longer than {MAX_ID_CHARS} characters", field="MessageSid")
    raw = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    status = _TWILIO_STATUS.get(raw)
    if status is None:
        return Ignored(f"MessageStatus {raw[:20] or 'empty'} is not a delivery result")
    error = None
    if status == "failed":
        code = form.get("ErrorCode", "").strip()
        error = f"twilio {raw}" + (f" (error {code[:20]})" if code else "")
    channel = "whatsapp" if form.get("From", "").lower().startswith("whatsapp:") else "sms"
    return PlatformReceipt(
        channel=channel,
        provider_message_id=sid,
        status=status,
        provider_status=raw,
        delivery_id=(delivery_id or "").strip()[:MAX_ID_CHARS] or None,
        error=error,
    )


def parse_twilio(
    form: Mapping[str, str], delivery_id: str | None = None
) -> ParsedMessage | PlatformReceipt | Ignored:
    """A Twilio inbound SMS (or WhatsApp) webhook, or a status callback of one we sent.

    Media (``NumMedia``, ``MediaUrlN``, ``MediaContentTypeN``) become attachments; a
    message with media only is a request without text.
    """
    if form.get("Body") is None and (form.get("MessageStatus") or form.get("SmsStatus")):
        return parse_twilio_status(form, delivery_id)
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
    attachments = _twilio_media(form)
    body = form.get("Body")
    if body is None:
        if not attachments:
            raise InvalidInput("is required", field="Body")
        body = ""
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
        attachments=attachments,
        metadata=metadata,
    )


MAX_TWILIO_MEDIA = 10  # Twilio accepts at most 10 media per message


def _twilio_media(form: Mapping[str, str]) -> tuple[Attachment, ...]:
    raw = form.get("NumMedia", "0").strip() or "0"
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_TWILIO_MEDIA:
        raise InvalidInput(f"must be 0..{MAX_TWILIO_MEDIA}", field="NumMedia")
    out: list[Attachment] = []
    for i in range(int(raw)):
        url = _http_url(form, f"MediaUrl{i}", f"MediaUrl{i}")
        if url is None:
            raise InvalidInput("is required (NumMedia says so)", field=f"MediaUrl{i}")
        ctype = form.get(f"MediaContentType{i}", "").strip()[:128] or "application/octet-stream"
        out.append(
            Attachment(
                kind="media",
                content_type=ctype,
                platform_file_id=url.rstrip("/").rsplit("/", 1)[-1][:MAX_ID_CHARS],
                url=url,
            )
        )
    return tuple(out)


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
