"""WhatsApp Cloud API and VK Callback API webhooks: pure parsers and their auth checks.

WhatsApp (``GET/POST /webhooks/whatsapp``), Meta's format::

    GET ?hub.mode=subscribe&hub.verify_token=<whatsapp_verify_token>&hub.challenge=<n>
        → 200 with the challenge as the body (403 for a wrong token)
    POST {"object": "whatsapp_business_account",
          "entry": [{"id": "<WABA id>", "changes": [{"field": "messages", "value": {
              "messaging_product": "whatsapp",
              "metadata": {"display_phone_number": "...", "phone_number_id": "..."},
              "contacts": [{"profile": {"name": "..."}, "wa_id": "79161234567"}],
              "messages": [{"from": "79161234567", "id": "wamid...", "timestamp": "1504902988",
                            "type": "text", "text": {"body": "..."}}
                           | {..., "type": "image"|"document"|"audio"|"video"|"sticker",
                              "<type>": {"id", "mime_type", "sha256", "caption"?, "filename"?}}],
              "statuses": [{"id": "wamid...", "status": "sent"|"delivered"|"read"|"failed",
                            "timestamp", "recipient_id", "biz_opaque_callback_data"?,
                            "errors"?: [{"code", "title"}]}]}}]}]}
    header X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>

One POST may carry several messages and statuses: each becomes its own item.

VK (``POST /webhooks/vk``), the Callback API::

    {"type": "confirmation", "group_id": 1}            → the configured confirmation string
    {"type": "message_new", "group_id": 1, "event_id": "...", "v": "5.199",
     "secret": "<vk_secret>", "object": {"message": {"id", "date", "peer_id", "from_id",
     "text", "conversation_message_id", "attachments": [...], "payload"?}, "client_info"}}
                                                       → "ok"
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
from collections.abc import Mapping
from typing import Any

import orjson

from pipeline.config import Settings
from pipeline.domain.text import normalize_phone, parse_timestamp
from pipeline.errors import InvalidInput, Unauthorized
from pipeline.events import Attachment, Channel, Identity
from pipeline.ingest.channels import (
    MAX_ID_CHARS,
    Answer,
    BotCommand,
    Ignored,
    Item,
    PlatformReceipt,
    ReceiptStatus,
    _http_url,
    _id,
    _list,
    _obj,
    _size,
    _str,
    bot_command,
)
from pipeline.ingest.message import ParsedMessage

__all__ = [
    "check_vk_secret",
    "check_whatsapp_signature",
    "parse_vk",
    "parse_whatsapp",
    "whatsapp_signature",
    "whatsapp_verify",
]

# ---------------------------------------------------------------- WhatsApp


def whatsapp_signature(app_secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body with the Meta app secret."""
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def check_whatsapp_signature(headers: Mapping[str, str], body: bytes, settings: Settings) -> None:
    """``X-Hub-Signature-256`` must be the app secret's HMAC of the body (when set)."""
    if settings.whatsapp_app_secret is None:
        return
    got = headers.get("X-Hub-Signature-256")
    if not got:
        raise Unauthorized("missing X-Hub-Signature-256", status=401)
    want = whatsapp_signature(settings.whatsapp_app_secret.get_secret_value(), body)
    if not hmac.compare_digest(got.strip().lower().encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong X-Hub-Signature-256", status=403)


def whatsapp_verify(query: Mapping[str, str], settings: Settings) -> str:
    """The ``hub.challenge`` to echo for Meta's subscription handshake."""
    if settings.whatsapp_verify_token is None:
        raise Unauthorized("whatsapp_verify_token is not configured", status=403)
    if query.get("hub.mode") != "subscribe":
        raise InvalidInput("must be 'subscribe'", field="hub.mode")
    token = query.get("hub.verify_token", "")
    want = settings.whatsapp_verify_token.get_secret_value()
    if not hmac.compare_digest(token.encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong hub.verify_token", status=403)
    challenge = query.get("hub.challenge", "")
    if not challenge or len(challenge) > MAX_ID_CHARS:
        raise InvalidInput("is required", field="hub.challenge")
    return challenge


#: WhatsApp message types that carry a file, with their default MIME type.
_WHATSAPP_MEDIA = {
    "image": "image/jpeg",
    "document": "application/octet-stream",
    "audio": "audio/ogg",
    "video": "video/mp4",
    "sticker": "image/webp",
}
_WHATSAPP_STATUS: dict[str, ReceiptStatus] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
}


def parse_whatsapp(payload: Any) -> list[Item]:
    """Every message and status of one WhatsApp Cloud API webhook, in order."""
    data = _obj(payload, "<body>")
    obj = _str(data, "object", "object", required=True)
    if obj != "whatsapp_business_account":
        return [Ignored(f"object {str(obj)[:40]} is not whatsapp_business_account")]
    items: list[Item] = []
    for i, entry in enumerate(_list(data.get("entry"), "entry")):
        changes = _obj(entry, f"entry[{i}]").get("changes")
        for j, change in enumerate(_list(changes, f"entry[{i}].changes")):
            where = f"entry[{i}].changes[{j}]"
            ch = _obj(change, where)
            if ch.get("field") != "messages":
                items.append(Ignored(f"field {str(ch.get('field'))[:40]} is not messages"))
                continue
            items.extend(_whatsapp_value(_obj(ch.get("value"), f"{where}.value"), where))
    return items or [Ignored("no messages or statuses")]


def _whatsapp_value(value: dict[str, Any], where: str) -> list[Item]:
    meta = _obj(value.get("metadata"), f"{where}.value.metadata", required=False)
    phone_number_id = _id(meta, "phone_number_id", f"{where}.value.metadata.phone_number_id")
    display = _str(meta, "display_phone_number", f"{where}.value.metadata.display_phone_number")
    names: dict[str, str] = {}
    for k, contact in enumerate(_list(value.get("contacts"), f"{where}.value.contacts")):
        c = _obj(contact, f"{where}.value.contacts[{k}]")
        wa_id = _id(c, "wa_id", f"{where}.value.contacts[{k}].wa_id")
        profile = _obj(c.get("profile"), f"{where}.value.contacts[{k}].profile", required=False)
        name = _str(profile, "name", f"{where}.value.contacts[{k}].profile.name", max_len=200)
        if wa_id and name:
            names[wa_id] = name
    items: list[Item] = []
    for k, msg in enumerate(_list(value.get("messages"), f"{where}.value.messages")):
        items.append(
            _whatsapp_message(
                _obj(msg, f"{where}.value.messages[{k}]"),
                f"{where}.value.messages[{k}]",
                names,
                phone_number_id,
                display,
            )
        )
    for k, status in enumerate(_list(value.get("statuses"), f"{where}.value.statuses")):
        items.append(_whatsapp_status(_obj(status, f"{where}.value.statuses[{k}]"), where))
    return items


def _whatsapp_message(
    msg: dict[str, Any],
    where: str,
    names: Mapping[str, str],
    phone_number_id: str | None,
    display: str | None,
) -> Item:
    mid = _id(msg, "id", f"{where}.id", required=True) or ""
    sender = _id(msg, "from", f"{where}.from", required=True) or ""
    phone = normalize_phone("+" + sender.lstrip("+"))
    if phone is None:
        raise InvalidInput(f"not a phone number: {sender[:40]!r}", field=f"{where}.from")
    mtype = _str(msg, "type", f"{where}.type", required=True, max_len=40) or ""
    if mtype in ("reaction", "system", "request_welcome"):
        return Ignored(f"whatsapp {mtype} is not a customer message")
    metadata = {"whatsapp_type": mtype}
    text, attachments = _whatsapp_content(msg, mtype, where, metadata)
    stamp = _str(msg, "timestamp", f"{where}.timestamp", max_len=20)
    sent_at = (
        parse_timestamp(int(stamp), f"{where}.timestamp")
        if stamp and stamp.isascii() and stamp.isdigit()
        else None
    )
    context = _obj(msg.get("context"), f"{where}.context", required=False)
    quoted = _id(context, "id", f"{where}.context.id")
    if quoted:
        metadata["whatsapp_context_id"] = quoted
    if display:
        metadata["whatsapp_display_phone_number"] = display[:40]
    reply_to = {"phone": phone, "wa_id": sender, "message_id": mid}
    if phone_number_id:
        reply_to["phone_number_id"] = phone_number_id
    parsed = ParsedMessage(
        channel=Channel.whatsapp,
        channel_message_id=mid,
        identities=(Identity(kind="phone", value=phone),),
        text=text,
        name=names.get(sender),
        sent_at=sent_at,
        conversation_id=f"{phone_number_id or display or ''}:{sender}",
        in_reply_to=quoted,
        reply_to=reply_to,
        routing_hints={"to_address": display} if display else {},
        attachments=attachments,
        metadata=metadata,
    )
    command = bot_command(text)
    return BotCommand(command, parsed) if command else parsed


def _whatsapp_content(
    msg: dict[str, Any], mtype: str, where: str, metadata: dict[str, str]
) -> tuple[str, tuple[Attachment, ...]]:
    """Text and files of one message by its ``type``; other types (contacts, order,
    unsupported...) are text-less requests that still reach a person."""
    if mtype == "text":
        body = _obj(msg.get("text"), f"{where}.text")
        return _str(body, "body", f"{where}.text.body", required=True) or "", ()
    if mtype in _WHATSAPP_MEDIA:
        at = f"{where}.{mtype}"
        media = _obj(msg.get(mtype), at)
        attachment = Attachment(
            kind=mtype,
            filename=_str(media, "filename", f"{at}.filename", max_len=256),
            content_type=_str(media, "mime_type", f"{at}.mime_type", max_len=128)
            or _WHATSAPP_MEDIA[mtype],
            sha256=_str(media, "sha256", f"{at}.sha256", max_len=128),
            platform_file_id=_id(media, "id", f"{at}.id", required=True),
        )
        return _str(media, "caption", f"{at}.caption") or "", (attachment,)
    if mtype == "button":
        button = _obj(msg.get("button"), f"{where}.button")
        return _str(button, "text", f"{where}.button.text") or "", ()
    if mtype == "interactive":
        inter = _obj(msg.get("interactive"), f"{where}.interactive")
        for kind in ("button_reply", "list_reply"):
            reply = _obj(inter.get(kind), f"{where}.interactive.{kind}", required=False)
            title = _str(reply, "title", f"{where}.interactive.{kind}.title")
            if title:
                return title, ()
        return "", ()
    if mtype == "location":
        loc = _obj(msg.get("location"), f"{where}.location")
        parts = [_str(loc, k, f"{where}.location.{k}", max_len=500) for k in ("name", "address")]
        for k in ("latitude", "longitude"):
            if isinstance(loc.get(k), int | float) and not isinstance(loc.get(k), bool):
                metadata[f"location_{k}"] = str(loc[k])
        return ", ".join(p for p in parts if p), ()
    return "", ()


def _whatsapp_status(status: dict[str, Any], where: str) -> PlatformReceipt | Ignored:
    wamid = _id(status, "id", f"{where}.id", required=True) or ""
    raw = (_str(status, "status", f"{where}.status", required=True, max_len=40) or "").lower()
    mapped = _WHATSAPP_STATUS.get(raw)
    if mapped is None:
        return Ignored(f"whatsapp status {raw[:20]} is not a delivery result")
    error = None
    errors = _list(status.get("errors"), f"{where}.errors")
    if errors:
        first = _obj(errors[0], f"{where}.errors[0]")
        code = first.get("code")
        title = _str(first, "title", f"{where}.errors[0].title", max_len=300) or ""
        error = f"whatsapp error {code}: {title}".strip()
    stamp = _str(status, "timestamp", f"{where}.timestamp", max_len=20)
    return PlatformReceipt(
        channel=Channel.whatsapp.value,
        provider_message_id=wamid,
        status=mapped,
        provider_status=raw,
        delivery_id=_str(status, "biz_opaque_callback_data", f"{where}.biz_opaque_callback_data"),
        error=error if mapped == "failed" else None,
        at=parse_timestamp(int(stamp), f"{where}.timestamp")
        if stamp and stamp.isascii() and stamp.isdigit()
        else None,
    )


# ---------------------------------------------------------------- VK


def check_vk_secret(data: Mapping[str, Any], settings: Settings, *, required: bool = True) -> None:
    """The body's ``secret`` must equal the configured one; the community must be ours.

    The ``confirmation`` request may come without a secret (VK's documented example has
    none): ``required=False`` lets it through then, a wrong one is still refused.
    """
    if settings.vk_group_id is not None:
        group = data.get("group_id")
        if group != settings.vk_group_id:
            raise Unauthorized(f"group_id {str(group)[:20]} is not ours", status=403)
    if settings.vk_secret is None:
        return
    got = data.get("secret")
    if not isinstance(got, str) or not got:
        if not required:
            return
        raise Unauthorized("missing secret", status=401)
    want = settings.vk_secret.get_secret_value()
    if not hmac.compare_digest(got.encode("utf-8"), want.encode("utf-8")):
        raise Unauthorized("wrong secret", status=403)


#: VK client_info.lang_id → language (0 ru, 1 uk, 2 be, 3 en ...).
_VK_LANGS = {0: "ru", 3: "en"}


def parse_vk(payload: Any, settings: Settings) -> Answer | Item:
    """One VK Callback API event: the confirmation handshake or an incoming message."""
    data = _obj(payload, "<body>")
    kind = _str(data, "type", "type", required=True, max_len=60) or ""
    check_vk_secret(data, settings, required=kind != "confirmation")
    if kind == "confirmation":
        if not settings.vk_confirmation_code:
            raise InvalidInput("vk_confirmation_code is not configured", field="type")
        return Answer(settings.vk_confirmation_code)
    if kind != "message_new":
        return Ignored(f"event {kind[:40]} is not message_new")
    group_id = _id(data, "group_id", "group_id", required=True) or ""
    obj = _obj(data.get("object"), "object")
    # API 5.103+ wraps the message in object.message; older versions send it as object.
    where = "object.message" if "message" in obj else "object"
    msg = _obj(obj["message"], where) if "message" in obj else obj
    if msg.get("out") == 1:
        return Ignored("outgoing message")
    from_id = _id(msg, "from_id", f"{where}.from_id", required=True) or ""
    if from_id.startswith("-"):
        return Ignored("message from a community")
    peer_id = _id(msg, "peer_id", f"{where}.peer_id", required=True) or ""
    local_id = _id(msg, "conversation_message_id", f"{where}.conversation_message_id")
    if local_id is None:
        local_id = "id" + (_id(msg, "id", f"{where}.id", required=True) or "")
    text = _str(msg, "text", f"{where}.text") or ""
    attachments = _vk_attachments(msg, where)
    command = _vk_command(msg, where) or bot_command(text)
    if not text.strip() and not attachments and not command:
        return Ignored("message without text or attachment")
    date = msg.get("date")
    sent_at = parse_timestamp(date, f"{where}.date") if isinstance(date, int) else None
    client = _obj(obj.get("client_info"), "object.client_info", required=False)
    lang = client.get("lang_id")
    metadata = {"vk_group_id": group_id, "vk_peer_id": peer_id}
    event_id = _id(data, "event_id", "event_id")
    if event_id:
        metadata["vk_event_id"] = event_id
    parsed = ParsedMessage(
        channel=Channel.vk,
        channel_message_id=f"{group_id}:{peer_id}:{local_id}",
        identities=(Identity(kind="social", value=f"vk:{from_id}"),),
        text=text,
        sent_at=sent_at,
        conversation_id=f"{group_id}:{peer_id}",
        reply_to={"peer_id": peer_id, "group_id": group_id},
        attachments=attachments,
        metadata=metadata,
        language_hint=_VK_LANGS.get(lang) if isinstance(lang, int) else None,
    )
    return BotCommand(command, parsed) if command else parsed


def _vk_command(msg: Mapping[str, Any], where: str) -> str | None:
    """``{"command": "start"}``: the payload of VK's «Начать» button."""
    raw = _str(msg, "payload", f"{where}.payload", max_len=4096)
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and value.get("command") == "start":
        return "start"
    return None


def _vk_attachments(msg: Mapping[str, Any], where: str) -> tuple[Attachment, ...]:
    out: list[Attachment] = []
    for i, item in enumerate(_list(msg.get("attachments"), f"{where}.attachments")):
        at = f"{where}.attachments[{i}]"
        att = _obj(item, at)
        kind = _str(att, "type", f"{at}.type", required=True, max_len=40) or ""
        body = _obj(att.get(kind), f"{at}.{kind}", required=False)
        owner = _id(body, "owner_id", f"{at}.{kind}.owner_id")
        ident = _id(body, "id", f"{at}.{kind}.id")
        file_id = f"{kind}{owner}_{ident}" if owner and ident else None
        url: str | None = None
        filename: str | None = None
        ctype = "application/octet-stream"
        if kind == "photo":
            sizes = _list(body.get("sizes"), f"{at}.photo.sizes")
            if sizes:  # the largest size is the original
                best = max(
                    (_obj(s, f"{at}.photo.sizes[]") for s in sizes),
                    key=lambda s: (s.get("width") or 0) * (s.get("height") or 0),
                )
                url = _http_url(best, "url", f"{at}.photo.sizes[].url")
            ctype = "image/jpeg"
        elif kind == "doc":
            url = _http_url(body, "url", f"{at}.doc.url")
            title = _str(body, "title", f"{at}.doc.title", max_len=256)
            ext = _str(body, "ext", f"{at}.doc.ext", max_len=16)
            filename = title
            guessed = mimetypes.guess_type(f"x.{ext}")[0] if ext else None
            ctype = guessed or ctype
        elif kind == "audio_message":
            url = _http_url(body, "link_ogg", f"{at}.audio_message.link_ogg")
            ctype = "audio/ogg"
        out.append(
            Attachment(
                kind=kind,
                filename=filename,
                content_type=ctype,
                size=_size(body, "size", f"{at}.{kind}.size") if kind == "doc" else None,
                platform_file_id=file_id,
                url=url,
            )
        )
    return tuple(out)
