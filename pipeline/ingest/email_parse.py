"""Pure MIME parsing of customer e-mail: body text, threading headers, attachment metadata.

multipart/alternative prefers text/plain, HTML becomes text, quoted-printable and base64
are decoded, declared charsets are honoured (KOI8-R, Windows-1251, ...) with a fallback
guess for undeclared 8-bit text; quoted previous replies and signatures are cut off.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

from pipeline.domain.text import clean_text, normalize_email
from pipeline.errors import DecodeError, InvalidInput
from pipeline.events import Attachment, Channel, Identity
from pipeline.ingest.message import ParsedMessage
from pipeline.ingest.reply_clean import clean_reply

__all__ = [
    "ParsedEmail",
    "html_to_text",
    "parse_email",
    "strip_quotes_and_signature",
    "to_parsed_message",
]

_MAX_PARTS = 200


@dataclass(frozen=True)
class ParsedEmail:
    """What the router keeps of one e-mail."""

    message_id: str | None
    from_address: str
    from_name: str | None
    to: tuple[str, ...]
    subject: str | None
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    text: str  # cleaned body: quotes and signature removed
    full_text: str  # body before quote/signature removal
    attachments: tuple[Attachment, ...] = ()
    raw_sha256: str = ""
    html_only: bool = False


# ---------------------------------------------------------------- HTML → text

_BLOCK_TAGS = frozenset(
    [
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "table",
        "ul",
        "ol",
        "section",
        "article",
        "header",
        "footer",
        "hr",
        "dt",
        "dd",
    ]
)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._quote = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag == "blockquote":
            self._quote += 1  # quoted previous messages in HTML mail
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title") and self._skip:
            self._skip -= 1
        elif tag == "blockquote" and self._quote:
            self._quote -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip and not self._quote:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body (scripts, styles and blockquotes dropped)."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):
        # HTMLParser is lenient; a broken tail just ends the text.
        pass
    text = html.unescape("".join(parser.parts))
    text = re.sub(r"[ \t\xa0]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


# ---------------------------------------------------------------- quotes and signatures


def strip_quotes_and_signature(text: str) -> str:
    """The new part of a reply: no quoted lines, quoted history or signature block."""
    return clean_reply(text)


# ---------------------------------------------------------------- parsing

_ADDR_IN_TEXT = re.compile(r"[^\s<>\"',;:()]+@[^\s<>\"',;:()]+")
_MSGID = re.compile(r"<[^<>\s]{1,500}>")


def _msgids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSGID.findall(value)
    if found:
        return found
    token = value.strip()
    return [f"<{token}>"] if token and " " not in token and len(token) <= 500 else []


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError, AttributeError, LookupError):
        return None
    if value is None:
        return None
    return clean_text(str(value)) or None


def _decoded(msg: Message, name: str) -> str:
    """RFC 2047 decoding of a raw header, tolerant of encoded words spanning the address."""
    raw = msg.get(name)
    if raw is None:
        return ""
    try:
        return str(make_header(decode_header(str(raw))))
    except (ValueError, LookupError, UnicodeDecodeError, HeaderParseError):
        return str(raw)


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    declared = part.get_content_charset()
    for charset in (declared, "utf-8", "windows-1251", "koi8-r", "latin-1"):
        if not charset:
            continue
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("utf-8", errors="replace")


def _sender(msg: Message, modern: EmailMessage | None) -> tuple[str, str]:
    """(display name, normalized address) of From; InvalidInput when there is none."""
    from_raw = _header(modern, "From") if modern is not None else None
    from_raw = from_raw or _header(msg, "From")
    if not from_raw:
        raise InvalidInput("missing From header", field="From")
    pairs = getaddresses([from_raw])
    name, addr = pairs[0] if pairs else ("", "")
    address = normalize_email(addr)
    if address is None:
        # Whole "Name <addr>" encoded as one word by some clients: find the addr-spec in it.
        found = _ADDR_IN_TEXT.findall(from_raw) or _ADDR_IN_TEXT.findall(_decoded(msg, "From"))
        address = normalize_email(found[-1]) if found else None
        name = from_raw.split("<")[0].strip().strip('"').strip() if address else name
    if address is None:
        raise InvalidInput(f"From is not an e-mail address: {from_raw[:80]!r}", field="From")
    return name, address


def _date(date_raw: str | None) -> datetime | None:
    """The Date header as an aware datetime (None when absent, invalid or naive)."""
    if not date_raw:
        return None
    try:
        date = parsedate_to_datetime(date_raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return date if date is not None and date.tzinfo is not None else None


def _parts(msg: Message) -> tuple[list[str], list[str], list[Attachment]]:
    """Plain-text parts, HTML parts and attachments (by disposition, name or type)."""
    plain: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    for n, part in enumerate(msg.walk()):
        if n >= _MAX_PARTS:
            break
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = str(part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        try:
            filename = part.get_filename()
        except (ValueError, TypeError, LookupError):
            filename = None
        if disposition == "attachment" or filename or ctype not in ("text/plain", "text/html"):
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            attachments.append(
                Attachment(
                    filename=clean_text(str(filename))[:255] if filename else None,
                    content_type=ctype[:255],
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
            continue
        (plain if ctype == "text/plain" else htmls).append(_part_text(part))
    return plain, htmls, attachments


def parse_email(raw: bytes) -> ParsedEmail:
    """Parse one RFC 5322 message; DecodeError/InvalidInput for unusable mail."""
    if not raw.strip():
        raise DecodeError("empty message", field="<message>")
    try:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw)
    except (ValueError, TypeError, IndexError, LookupError, AttributeError) as exc:
        raise DecodeError(f"unparseable MIME: {exc}", field="<message>") from exc
    modern: EmailMessage | None
    try:
        modern = BytesParser(policy=policy.default).parsebytes(raw)
    except (ValueError, TypeError, IndexError, LookupError, AttributeError):
        modern = None

    name, address = _sender(msg, modern)
    to: list[str] = []
    for header in ("To", "Cc", "Delivered-To", "X-Original-To"):
        value = (_header(modern, header) if modern is not None else None) or _header(msg, header)
        for _, a in getaddresses([value or ""]):
            norm = normalize_email(a)
            if norm and norm not in to:
                to.append(norm)
    subject = (_header(modern, "Subject") if modern is not None else None) or _header(
        msg, "Subject"
    )
    date = _date(_header(msg, "Date"))
    message_ids = _msgids(_header(msg, "Message-ID"))
    in_reply = _msgids(_header(msg, "In-Reply-To"))
    refs = tuple(_msgids(_header(msg, "References")))[-50:]

    plain, htmls, attachments = _parts(msg)
    html_only = not plain and bool(htmls)
    body = "\n\n".join(plain) if plain else "\n\n".join(html_to_text(h) for h in htmls)
    full = clean_text(body)
    text = clean_text(strip_quotes_and_signature(full))
    return ParsedEmail(
        message_id=message_ids[0] if message_ids else None,
        from_address=address,
        from_name=clean_text(name)[:200] or None if name else None,
        to=tuple(to),
        subject=subject,
        date=date,
        in_reply_to=in_reply[0] if in_reply else None,
        references=refs,
        text=text,
        full_text=full,
        attachments=tuple(attachments),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        html_only=html_only,
    )


def to_parsed_message(mail: ParsedEmail, to_address: str | None = None) -> ParsedMessage:
    """The customer message of an e-mail (channel email, threaded by References)."""
    cmid = mail.message_id or f"<sha256:{mail.raw_sha256}>"
    thread = mail.references[0] if mail.references else mail.in_reply_to or cmid
    reply_to = {"address": mail.from_address}
    if mail.message_id:
        reply_to["message_id"] = mail.message_id
    if mail.references or mail.in_reply_to:
        chain = list(mail.references)
        if mail.in_reply_to and mail.in_reply_to not in chain:
            chain.append(mail.in_reply_to)
        reply_to["references"] = " ".join(chain)[:2000]
    if mail.subject:
        reply_to["subject"] = mail.subject[:998]
    hints = {"to_address": to_address} if to_address else {}
    metadata: dict[str, str] = {"email_sha256": mail.raw_sha256}
    if mail.html_only:
        metadata["html_only"] = "true"
    if mail.text != mail.full_text:
        metadata["quoted_removed"] = "true"
    return ParsedMessage(
        channel=Channel.email,
        channel_message_id=cmid[:512],
        identities=(Identity(kind="email", value=mail.from_address),),
        text=mail.text,
        name=mail.from_name,
        subject=mail.subject,
        sent_at=mail.date,
        conversation_id=thread[:512],
        in_reply_to=mail.in_reply_to,
        references=mail.references,
        reply_to=reply_to,
        routing_hints=hints,
        attachments=mail.attachments,
        metadata=metadata,
    )
