"""JSON bytes on the wire: encode events with pydantic-core, decode with ``model_validate_json``."""

from __future__ import annotations

import base64
import hashlib
from typing import TypeVar

from pydantic import ValidationError

from pipeline.errors import DecodeError
from pipeline.events import (
    CaseEvent,
    CaseEvents,
    DeadLetter,
    Event,
    SubRequest,
    TaskNotice,
    derive_id,
    utcnow,
)

E = TypeVar("E", bound=Event)


def encode(event: Event) -> bytes:
    """Serialize an event to compact JSON bytes.

    pydantic-core's serializer writes the same bytes as ``orjson.dumps(model_dump(mode="json"))``
    without building the intermediate dicts: 4.3 µs against 7.3 µs for an InboundMessage.
    """
    return event.__pydantic_serializer__.to_json(event)


def decode(model: type[E], raw: bytes | None) -> E:
    """Parse bytes into ``model``; raise DecodeError naming the problem."""
    if raw is None:
        raise DecodeError("record has no value (tombstone)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"value is not UTF-8 at byte {exc.start}") from exc
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        raise DecodeError(
            f"invalid {model.__name__}: {where}: {first.get('msg')} ({exc.error_count()} errors)",
            field=where,
        ) from exc


def decode_case_events(raw: bytes | None) -> list[CaseEvent]:
    """The events of one ``case-events`` record: a ``CaseEvents`` batch, or a single
    ``CaseEvent`` (written before the batches, and still readable)."""
    try:
        return decode(CaseEvents, raw).events
    except DecodeError:
        return [decode(CaseEvent, raw)]


def decode_task_record(raw: bytes | None) -> SubRequest | TaskNotice:
    """One record of a department's task topic, as the kind it is: both kinds share the
    topic (``events.TaskNotice``), only a notice has a ``notice_id``, and both models forbid
    unknown fields."""
    if raw is not None and b'"notice_id"' in raw:
        return decode(TaskNotice, raw)
    return decode(SubRequest, raw)


def dead_letter(
    *,
    stage: str,
    error: BaseException,
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
    message_id: str | None = None,
) -> DeadLetter:
    """Build the DLQ record for a failed source record (invariant 2).

    The id is the record's position for a topic record; for a request that never reached a
    topic (an adapter's rejected input) it is the SHA-256 of the whole raw bytes with the
    stage, so two different bodies never share an id and a retried one keeps its id.
    """
    if topic is not None:
        origin = f"{topic}[{partition}]@{offset}"
    else:
        origin = "sha256:" + hashlib.sha256(raw or b"").hexdigest()
    field = getattr(error, "field", None)
    return DeadLetter(
        dead_letter_id=derive_id("dl", stage, origin),
        stage=stage,
        field=field if isinstance(field, str) else None,
        error_type=type(error).__name__,
        error=str(error)[:2000] or type(error).__name__,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", errors="replace") if key is not None else None,
        raw_b64=base64.b64encode(raw or b"").decode("ascii"),
        message_id=message_id,
        failed_at=utcnow(),
    )
