"""What a channel parser produces, and how it becomes the one InboundMessage shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipeline.config import Settings
from pipeline.domain.text import clean_text, detect_language, find_pii, truncate
from pipeline.events import (
    Attachment,
    Channel,
    CustomerProfile,
    Identity,
    InboundMessage,
    derive_id,
)

__all__ = ["ParsedMessage", "build_inbound", "message_id_for"]


@dataclass(frozen=True)
class ParsedMessage:
    """A customer message as read from one platform, identities already normalized."""

    channel: Channel
    channel_message_id: str
    identities: tuple[Identity, ...]
    text: str
    name: str | None = None
    subject: str | None = None
    sent_at: datetime | None = None
    conversation_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: dict[str, str] = field(default_factory=dict)
    routing_hints: dict[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    customer_id: str | None = None  # an explicit id from a trusted caller (generic API)
    language_hint: str | None = None

    @property
    def message_id(self) -> str:
        """Deterministic message id (idempotency key)."""
        return message_id_for(self.channel, self.channel_message_id)


def message_id_for(channel: Channel, channel_message_id: str) -> str:
    """``derive_id("msg", channel, channel_message_id)``."""
    return derive_id("msg", channel.value, channel_message_id)


def build_inbound(
    parsed: ParsedMessage,
    profile: CustomerProfile,
    settings: Settings,
    received_at: datetime,
) -> InboundMessage:
    """The normalized InboundMessage: clean text, language, PII spans, profile snapshot."""
    text = clean_text(parsed.text)
    text, cut = truncate(text, settings.max_text_chars)
    metadata = dict(parsed.metadata)
    if cut:
        metadata["truncated"] = "true"
        metadata["original_chars"] = str(len(clean_text(parsed.text)))
    language, confidence = detect_language(
        f"{parsed.subject or ''}\n{text}" if parsed.subject else text
    )
    if language == "other" and parsed.language_hint in ("ru", "en") and not text:
        language, confidence = parsed.language_hint, 0.5
    subject = clean_text(parsed.subject)[:998] if parsed.subject else None
    return InboundMessage(
        message_id=parsed.message_id,
        channel=parsed.channel,
        channel_message_id=parsed.channel_message_id,
        customer_id=profile.customer_id,
        identities=list(parsed.identities),
        profile=profile,
        text=text,
        subject=subject or None,
        language=language,
        language_confidence=confidence,
        sent_at=parsed.sent_at,
        received_at=received_at,
        conversation_id=parsed.conversation_id,
        in_reply_to=parsed.in_reply_to,
        references=list(parsed.references),
        reply_to=dict(parsed.reply_to),
        routing_hints=dict(parsed.routing_hints),
        pii=find_pii(text),
        attachments=list(parsed.attachments),
        metadata=metadata,
    )
