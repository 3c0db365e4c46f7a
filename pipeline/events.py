"""The event contract: every record on the bus is one of these models.

Topics carry JSON bytes (orjson); decode with ``Model.model_validate_json``.
Every event carries ``schema_version``; JSON Schemas in ``schemas/`` are
generated from these models (``pipeline schemas``) and a test fails on drift.

Flow::

    InboundMessage ─► ClassifiedMessage ─► SubRequest (tasks.<dept> | external)
                                        └► Reply (auto-reply, resolution, survey)
    InboundMessage ─► IncidentSignal (by bucket) ─► ClassifiedMessage   (incident categories)
    TaskUpdate ─► case state ─► CaseEvent, Reply
    every accepted message ─► exactly one Outcome;  bad records ─► DeadLetter
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


def derive_id(prefix: str, *parts: str) -> str:
    """Deterministic id from its parts: a replay derives the same id (invariant 3)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]
    return f"{prefix}_{digest}"


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: On the type, not a validator of every field ("*"): that one ran on each field of each
#: event decoded (~83 calls per message in route alone) to convert the few datetimes.
UtcDatetime = Annotated[
    AwareDatetime, AfterValidator(_to_utc), Field(description="Timezone-aware timestamp, UTC.")
]


class Event(BaseModel):
    """Base of every bus event: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Version of this event's schema."
    )


class Part(BaseModel):
    """Base of nested value objects (not events on their own)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- enums


class Channel(StrEnum):
    """Canonical channel names."""

    telegram = "telegram"
    whatsapp = "whatsapp"
    vk = "vk"
    chatwoot = "chatwoot"
    sms = "sms"
    voice = "voice"
    email = "email"
    webchat = "webchat"
    webform = "webform"
    social = "social"
    api = "api"


class OutcomeKind(StrEnum):
    """The four terminal outcomes of an accepted inbound message (invariant 1)."""

    auto_resolved = "auto_resolved"
    routed = "routed"
    duplicate = "duplicate"
    rejected = "rejected"


class SubRequestKind(StrEnum):
    """Internal (a department's task topic), external (e-mail to a non-user), broadcast."""

    internal = "internal"
    external = "external"
    broadcast = "broadcast"


class TaskStatus(StrEnum):
    """Status a department or external party reports for a sub-request."""

    acknowledged = "acknowledged"
    in_progress = "in_progress"
    resolved = "resolved"
    rejected = "rejected"


class ReplyKind(StrEnum):
    """Why the customer is being written to."""

    auto_reply = "auto_reply"
    acknowledgement = "acknowledgement"
    resolution = "resolution"
    incident_notice = "incident_notice"
    survey = "survey"


class CaseEventType(StrEnum):
    """Every transition of a case is one of these (the audit trail)."""

    opened = "opened"
    message_appended = "message_appended"
    sub_request_created = "sub_request_created"
    task_updated = "task_updated"
    sub_request_resolved = "sub_request_resolved"
    resolved = "resolved"
    reopened = "reopened"
    auto_resolved = "auto_resolved"
    sla_warning = "sla_warning"
    sla_breached = "sla_breached"
    escalated = "escalated"
    incident_detected = "incident_detected"
    incident_linked = "incident_linked"
    reply_sent = "reply_sent"
    delivery_failed = "delivery_failed"
    survey_sent = "survey_sent"
    survey_answered = "survey_answered"


# ---------------------------------------------------------------- parts


class Identity(Part):
    """One identity by which a customer is known on a channel."""

    kind: Literal["phone", "email", "telegram", "chatwoot", "webchat", "social", "other"] = Field(
        description="Identity namespace.", examples=["phone"]
    )
    value: str = Field(
        min_length=1,
        max_length=320,
        description="Normalized value: E.164 phone, lower-cased e-mail, platform id.",
        examples=["+79161234567"],
    )


class CustomerProfile(Part):
    """Snapshot of the customer carried on the record so later stages need no lookups."""

    customer_id: str = Field(description="Stable customer id (provisional ids start with 'prov_').")
    name: str | None = Field(default=None, description="Display name, if known.")
    tier: Literal["standard", "silver", "gold", "vip"] = Field(
        default="standard", description="Customer value tier used by priority scoring."
    )
    segment: str | None = Field(default=None, description="Marketing/service segment.")
    preferred_language: str | None = Field(default=None, description="ISO 639-1 code.")
    home_store: str | None = Field(default=None, description="Store code the customer uses most.")


class Span(Part):
    """A half-open character range [start, end) of the message text."""

    start: int = Field(ge=0, description="First character index.")
    end: int = Field(ge=0, description="One past the last character index.")


class PiiSpan(Span):
    """Personal data found in the text, so later stages can redact it."""

    kind: Literal["card", "phone", "email"] = Field(description="What kind of personal data.")


class Attachment(Part):
    """Attachment metadata only: content is never put on the bus."""

    kind: str = Field(
        default="file",
        description="photo | document | voice | audio | video | sticker | media | file ...",
    )
    filename: str | None = Field(default=None, description="File name as sent.")
    content_type: str = Field(description="MIME type (application/octet-stream when unknown).")
    size: int | None = Field(default=None, ge=0, description="Size in bytes, when known.")
    sha256: str | None = Field(default=None, description="Hex SHA-256 of the content, if known.")
    platform_file_id: str | None = Field(
        default=None, description="The platform's file id (Telegram file_id, WhatsApp media id)."
    )
    url: str | None = Field(default=None, description="Where the platform serves the file.")


class Intent(Part):
    """One request found in a message, with the text span it came from."""

    label: str = Field(description="Intent label, or 'unknown' when the model abstained.")
    category: str = Field(description="Department-level category of the intent.")
    confidence: float = Field(ge=0.0, le=1.0, description="Model confidence in the label.")
    span: Span = Field(description="Where in the text this request is.")
    text: str = Field(description="The text of the span.")


class Entity(Part):
    """Something routing needs: an order number, a store, a card, an amount, a date."""

    kind: str = Field(description="order | store | loyalty_card | amount | date | ...")
    value: str = Field(description="Normalized value (e.g. the store code).")
    span: Span | None = Field(default=None, description="Where it was found, if in the text.")


class PriorityComponent(Part):
    """One term of the priority score, so the score can be explained."""

    name: str = Field(description="Component name, e.g. 'tier', 'sentiment', 'legal_threat'.")
    points: float = Field(description="Contribution to the 0–100 score.")
    reason: str = Field(description="Human-readable reason.")


class Priority(Part):
    """Priority score with its explanation."""

    score: float = Field(ge=0, le=100, description="0 (lowest) to 100 (highest).")
    level: Literal["P1", "P2", "P3", "P4"] = Field(description="P1 is the most urgent.")
    components: list[PriorityComponent] = Field(
        default_factory=list, description="Contributions that add up to the score."
    )


class Similarity(Part):
    """Decisions of the similarity index for one message."""

    duplicate_of: str | None = Field(
        default=None, description="Message id of the original when this is a duplicate."
    )
    duplicate_reason: str | None = Field(default=None, description="exact_id | same_text | near.")
    case_id: str | None = Field(default=None, description="Open case this message belongs to.")
    incident_id: str | None = Field(default=None, description="Mass incident this message joins.")
    incident_new: bool = Field(default=False, description="This message opened the incident.")
    incident_bucket: str | None = Field(
        default=None, description="The bucket whose detector linked it to the incident."
    )
    kb_article_id: str | None = Field(default=None, description="Best matching KB article.")
    kb_confidence: float | None = Field(default=None, description="Match confidence of it.")
    auto_reply: bool = Field(default=False, description="Whether the auto-reply fires.")
    recontact_of: str | None = Field(
        default=None, description="Case this message reopens (customer came back)."
    )


# ---------------------------------------------------------------- events


class InboundMessage(Event):
    """A customer message normalized by an adapter. Keyed by customer_id."""

    message_id: str = Field(
        description="Deterministic id from channel + channel message id (idempotency key)."
    )
    channel: Channel = Field(description="Canonical channel the customer wrote from.")
    channel_message_id: str = Field(
        min_length=1, max_length=512, description="The platform's own message id."
    )
    customer_id: str = Field(min_length=1, description="Customer id; the record key.")
    identities: list[Identity] = Field(
        default_factory=list, description="Identities seen on this message."
    )
    profile: CustomerProfile | None = Field(
        default=None, description="Customer profile snapshot at ingest time."
    )
    text: str = Field(description="Cleaned text (NFC, whitespace, no invisible characters).")
    subject: str | None = Field(default=None, description="Subject line (e-mail, web form).")
    language: str = Field(default="other", description="'ru', 'en' or 'other'.")
    language_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    sent_at: UtcDatetime | None = Field(default=None, description="When the customer sent it.")
    received_at: UtcDatetime = Field(description="When the adapter accepted it (UTC).")
    conversation_id: str | None = Field(
        default=None, description="Platform conversation / chat / e-mail thread reference."
    )
    in_reply_to: str | None = Field(default=None, description="E-mail In-Reply-To.")
    references: list[str] = Field(default_factory=list, description="E-mail References.")
    reply_to: dict[str, str] = Field(
        default_factory=dict,
        description="Where to answer in the same channel (chat_id, address, conversation id).",
    )
    routing_hints: dict[str, str] = Field(
        default_factory=dict, description="Channel hints: ivr_menu, to_address, form_topic."
    )
    pii: list[PiiSpan] = Field(default_factory=list, description="Personal data spans.")
    attachments: list[Attachment] = Field(default_factory=list, description="Metadata only.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Other platform fields.")


class ClassifiedMessage(Event):
    """An inbound message with what the classifier read in it. Keyed by customer_id."""

    message_id: str = Field(description="Id of the inbound message.")
    customer_id: str = Field(description="Record key.")
    inbound: InboundMessage = Field(description="The message as ingested.")
    intents: list[Intent] = Field(description="One per request found (at least one).")
    tags: list[str] = Field(default_factory=list, description="Model and rule tags.")
    entities: list[Entity] = Field(default_factory=list, description="Extracted entities.")
    priority: Priority = Field(description="Priority score with explanation.")
    similarity: Similarity = Field(
        default_factory=Similarity, description="Dedup / incident / KB decisions."
    )
    model_version: str = Field(description="Version of the classifier that produced this.")
    classified_at: UtcDatetime = Field(description="When it was classified.")


class IncidentSignal(Event):
    """A classified message on its way through the incident detector. Keyed by ``bucket``.

    The detector of a bucket (the one owner of its partition, whatever the number of
    workers) sets the message's incident fields and forwards it to ``classified``.
    """

    bucket: str = Field(description="Incident bucket: category + store, or category + intent.")
    similarity_required: bool = Field(
        description="Reports must look alike (no store named): MinHash similarity is compared."
    )
    threshold: int = Field(ge=2, description="Distinct customers that open an incident.")
    window_s: float = Field(gt=0, description="Reports older than this (seconds) expire.")
    message: ClassifiedMessage = Field(description="The message, incident fields not yet set.")
    count_only: bool = Field(
        default=False,
        description="Counted in this bucket's window only (a message naming two stores): the "
        "detector of its first bucket decides it and forwards it to route.",
    )


class IncidentResolved(Event):
    """An incident's case was resolved: the case keeper → the detector of its bucket.

    On ``incident-signals``, keyed by the incident's bucket, so it reaches the one detector
    of that bucket behind the reports before it. The detector closes the bucket's incident if
    it is still this one (a replay of an older resolution closes nothing): later reports are
    routed on their own and count toward a new incident, instead of being linked to an
    incident that is over.
    """

    resolution_id: str = Field(description="Deterministic id (the incident's case).")
    bucket: str = Field(description="The incident's bucket (the record key).")
    incident_id: str = Field(description="The incident that was resolved.")
    at: UtcDatetime = Field(description="When its case was resolved.")


class SubRequest(Event):
    """A piece of work for one department or external party. Keyed by case_id."""

    sub_request_id: str = Field(description="Deterministic from message id + intent + target.")
    case_id: str = Field(description="The case this belongs to.")
    message_id: str = Field(description="Inbound message that caused it.")
    customer_id: str = Field(description="Customer the case is for.")
    kind: SubRequestKind = Field(description="internal | external | broadcast.")
    department: str = Field(description="Department responsible.")
    recipient: str | None = Field(
        default=None, description="E-mail of an external party (external/broadcast)."
    )
    intent: str = Field(description="Intent label this sub-request handles.")
    category: str = Field(description="Category of the intent.")
    text: str = Field(description="The relevant span of the customer's text.")
    full_text: str = Field(description="The whole message, for context.")
    entities: list[Entity] = Field(default_factory=list)
    priority: Priority = Field(description="Priority at creation.")
    customer: CustomerProfile | None = Field(default=None, description="Who the customer is.")
    customer_summary: str = Field(default="", description="Short history summary.")
    language: str = Field(
        default="other",
        description="Language of the text to the recipient (an external party's own, else the "
        "customer's).",
    )
    customer_language: str | None = Field(
        default=None,
        description="The customer's language: the answer that goes back to them should be in it.",
    )
    flags: list[str] = Field(
        default_factory=list,
        description="What every holder must know about the case: vip, legal_threat.",
    )
    purpose: Literal["request", "escalation", "alert"] = Field(
        default="request",
        description="request: work to do; escalation: a supervisor is told a deadline was "
        "missed; alert: a supervisor is told about a flagged case (vip, legal_threat).",
    )
    breached_deadline: Literal["first_response", "resolution"] | None = Field(
        default=None, description="escalation: which deadline was missed (sla_due_at)."
    )
    timezone: str | None = Field(
        default=None, description="IANA zone of the department: times are shown in it."
    )
    reply_token: str | None = Field(
        default=None, description="Token an external party's e-mail reply carries."
    )
    sla_due_at: UtcDatetime | None = Field(default=None, description="Resolution deadline.")
    created_at: UtcDatetime = Field(description="Creation time.")


class TaskUpdate(Event):
    """A department's or an external party's answer about a sub-request. Keyed by case_id."""

    update_id: str = Field(description="Unique id of this update (dedup key).")
    sub_request_id: str = Field(description="Sub-request it updates.")
    case_id: str = Field(description="Case of that sub-request.")
    status: TaskStatus = Field(description="New status.")
    resolution: str | None = Field(default=None, description="Answer text for the customer.")
    author: str | None = Field(default=None, description="Who wrote it.")
    source: Literal["department", "email", "system", "console"] = Field(
        default="department",
        description="department system, e-mail reply, the router itself, or the operator "
        "console (an agent, or an external party on its signed answer page).",
    )
    at: UtcDatetime = Field(description="When it was written.")


class CaseCommand(Event):
    """A supervisor's change to a case's sub-requests, applied by the route stage.

    Keyed by case_id. ``reassign`` moves an open sub-request to another department (the old
    one becomes ``rerouted``); ``add`` opens a new sub-request (e.g. a second department).
    """

    command_id: str = Field(description="Unique id of this command (dedup key).")
    case_id: str = Field(description="Case it changes.")
    action: Literal["reassign", "add"] = Field(description="What to do.")
    sub_request_id: str | None = Field(
        default=None, description="Sub-request to reassign (reassign only)."
    )
    department: str = Field(min_length=1, description="Department that takes the work.")
    text: str | None = Field(default=None, description="What the department should do (add).")
    author: str = Field(description="Who gave the command.")
    at: UtcDatetime = Field(description="When it was given.")


class IncidentLink(Event):
    """A report's case joins an incident: route → the keeper of the incident's own case.

    On ``case-commands``, keyed by the incident's case id (``derive_id("case", incident_id)``),
    so the one keeper holding the incident's case learns every member whatever worker holds
    the member. When the incident's case is resolved (or already was), that keeper answers
    each member's ``sub_request_ids`` with a TaskUpdate on ``task-updates`` keyed by the
    member's case id (ids derived from the incident's case and the sub-request: idempotent).
    """

    link_id: str = Field(description="Deterministic id (incident case, member case).")
    case_id: str = Field(description="The incident's own case id (the record key).")
    incident_id: str = Field(description="Incident id.")
    member_case_id: str = Field(description="The reporter's case linked to the incident.")
    sub_request_ids: list[str] = Field(
        description="The member's sub-requests the incident is about (closed with it)."
    )
    at: UtcDatetime = Field(description="When the report was linked.")


class TaskNotice(Event):
    """What the holder of an open sub-request must know, on its department's task topic.

    Keyed by case_id, beside the SubRequest records (tell them apart by ``notice_id``):
    ``customer_message`` — the customer wrote again about this case (never a second task);
    ``sla_reminder`` — the deadline is close; ``closed`` — the sub-request is no longer
    needed (another holder answered it).
    """

    notice_id: str = Field(description="Deterministic id of the notice.")
    type: Literal["customer_message", "sla_reminder", "closed"] = Field(description="What.")
    case_id: str = Field(description="Case of the sub-request.")
    sub_request_id: str = Field(description="Sub-request the holder holds.")
    department: str = Field(description="Department holding it.")
    text: str = Field(description="The customer's new text, or what happened.")
    message_id: str | None = Field(default=None, description="Customer message, if any.")
    due_at: UtcDatetime | None = Field(default=None, description="Deadline (sla_reminder).")
    at: UtcDatetime = Field(description="When.")


class Reply(Event):
    """A message to the customer, in the channel they wrote from. Keyed by customer_id."""

    reply_id: str = Field(description="Deterministic; delivery drops ids already sent.")
    case_id: str | None = Field(default=None, description="Case, if any.")
    message_id: str = Field(description="Inbound message being answered.")
    customer_id: str = Field(description="Recipient customer.")
    channel: Channel = Field(description="Channel to answer in.")
    reply_to: dict[str, str] = Field(default_factory=dict, description="Channel address.")
    language: str = Field(description="Language of the text.")
    kind: ReplyKind = Field(description="Why we write.")
    text: str = Field(description="Text to send.")
    article_id: str | None = Field(default=None, description="KB article, for auto-replies.")
    link: str | None = Field(default=None, description="Link sent with the answer.")
    created_at: UtcDatetime = Field(description="Creation time.")


class CaseEvent(Event):
    """One transition of a case (audit trail). Keyed by case_id."""

    event_id: str = Field(description="Deterministic id of the transition.")
    case_id: str = Field(description="Case id.")
    type: CaseEventType = Field(description="Transition.")
    message_id: str | None = Field(default=None, description="Message involved, if any.")
    sub_request_id: str | None = Field(default=None, description="Sub-request involved.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Transition details.")
    at: UtcDatetime = Field(description="When it happened.")


class CaseEvents(Event):
    """The case events of one transition of one case, in order: one record on ``case-events``
    (keyed by case_id) instead of one per event. Readers take ``events``."""

    case_id: str = Field(description="Case id (every event's).")
    events: list[CaseEvent] = Field(min_length=1, description="The events, oldest first.")


class Outcome(Event):
    """The one terminal outcome of an accepted inbound message. Keyed by message_id."""

    message_id: str = Field(description="Inbound message id.")
    customer_id: str | None = Field(default=None, description="Customer, when known.")
    outcome: OutcomeKind = Field(description="auto_resolved | routed | duplicate | rejected.")
    case_id: str | None = Field(default=None, description="Case, when one was opened or linked.")
    departments: list[str] = Field(default_factory=list, description="Where it was routed.")
    reason: str = Field(default="", description="Why this outcome.")
    stage: str = Field(description="Stage that decided it.")
    received_at: UtcDatetime | None = Field(default=None, description="Ingest time.")
    decided_at: UtcDatetime = Field(description="Decision time.")


class DeadLetter(Event):
    """A record a stage could not process. Keyed by the source record's key."""

    dead_letter_id: str = Field(
        description="Deterministic: from topic/partition/offset, or for a rejected request "
        "from the SHA-256 of its whole raw bytes and the stage."
    )
    stage: str = Field(description="Stage that failed: ingest, classify, route, notify...")
    field: str | None = Field(
        default=None, description="The offending field, when known (as in the HTTP answer)."
    )
    error_type: str = Field(description="Exception class name.")
    error: str = Field(description="What went wrong, for a human.")
    topic: str | None = Field(default=None, description="Source topic.")
    partition: int | None = Field(default=None, description="Source partition.")
    offset: int | None = Field(default=None, description="Source offset.")
    key: str | None = Field(default=None, description="Source key (UTF-8, replaced errors).")
    raw_b64: str = Field(description="The raw bytes of the source record, base64.")
    message_id: str | None = Field(default=None, description="Message id, when decodable.")
    failed_at: UtcDatetime = Field(description="When it failed.")


class DeliveryReceipt(Event):
    """Result of delivering a reply or an external e-mail. Keyed by reply/sub-request id."""

    delivery_id: str = Field(description="Reply id or sub-request id delivered.")
    channel: str = Field(description="Channel or 'email'.")
    status: Literal["delivered", "failed", "skipped_duplicate", "sent", "read"] = Field(
        description="Result. 'sent' and 'read' come only from platform status reports."
    )
    attempts: int = Field(ge=0, description="Attempts made (0 for a platform status report).")
    error: str | None = Field(default=None, description="Last error, if failed.")
    source: Literal["notify", "platform"] = Field(
        default="notify",
        description="notify: our delivery attempt; platform: the platform's later status "
        "report (Twilio status callback, WhatsApp statuses[]).",
    )
    provider_message_id: str | None = Field(
        default=None, description="The platform's id of the sent message (SM…, wamid…)."
    )
    provider_status: str | None = Field(
        default=None, description="The platform's own status word (undelivered, read…)."
    )
    at: UtcDatetime = Field(description="When.")


class CustomerRecord(Event):
    """Customer directory entry (compacted topic). Keyed by customer_id."""

    profile: CustomerProfile = Field(description="Profile.")
    identities: list[Identity] = Field(description="All identities of this customer.")
    updated_at: UtcDatetime = Field(description="Last update.")


class KbArticle(Event):
    """Knowledge-base article (compacted topic). Keyed by article id."""

    article_id: str = Field(description="Stable article id.")
    title: dict[str, str] = Field(description="Title per language.")
    questions: dict[str, list[str]] = Field(description="Example questions per language.")
    answer: dict[str, str] = Field(description="Answer per language (ru, en).")
    intents: list[str] = Field(default_factory=list, description="Eligible intents.")
    not_intents: list[str] = Field(
        default_factory=list,
        description="Near-miss intents this article must never answer (e.g. a registration "
        "problem for 'how to create an account').",
    )
    link: str | None = Field(default=None, description="Public link to the article.")
    auto_reply: bool = Field(default=True, description="Whether it may be sent automatically.")
    deleted: bool = Field(default=False, description="Tombstone: remove from the index.")
    updated_at: UtcDatetime = Field(description="Last update.")


class CaseSnapshot(Event):
    """The whole state of a case after a transition (route ⇄ case-state keeper)."""

    case_id: str = Field(description="Case id.")
    customer_id: str = Field(description="Customer of the case.")
    state: dict[str, Any] = Field(description="pipeline.domain.cases.CaseState as JSON.")
    by: Literal["route", "cases"] = Field(description="Which agent wrote it.")
    at: UtcDatetime = Field(description="When.")


class WorkflowPublished(Event):
    """A workflow file published to the compacted config topic (``pipeline rules publish``).

    Keyed by ``workflow``; every worker follows the topic and runs the newest workflow.
    """

    text: str = Field(max_length=1_000_000, description="The workflow YAML, as written.")
    sha256: str = Field(description="SHA-256 of the text (hex), to tell versions apart.")
    source: str = Field(description="Where it came from (file name), for the logs.")
    published_at: UtcDatetime = Field(description="When it was published.")


#: Every event type on the bus, by schema file name.
EVENT_TYPES: dict[str, type[Event]] = {
    "InboundMessage": InboundMessage,
    "ClassifiedMessage": ClassifiedMessage,
    "SubRequest": SubRequest,
    "TaskUpdate": TaskUpdate,
    "CaseCommand": CaseCommand,
    "Reply": Reply,
    "CaseEvent": CaseEvent,
    "CaseEvents": CaseEvents,
    "Outcome": Outcome,
    "DeadLetter": DeadLetter,
    "DeliveryReceipt": DeliveryReceipt,
    "CustomerRecord": CustomerRecord,
    "KbArticle": KbArticle,
    "CaseSnapshot": CaseSnapshot,
    "WorkflowPublished": WorkflowPublished,
    "TaskNotice": TaskNotice,
    "IncidentSignal": IncidentSignal,
    "IncidentLink": IncidentLink,
    "IncidentResolved": IncidentResolved,
}
