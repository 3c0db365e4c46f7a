"""The error policy every agent shares, in one place.

- A record that does not decode or validate → DeadLetter, skip, keep consuming.
- A record whose processing raises → DeadLetter (+ a ``rejected`` Outcome when the message
  id is known, so invariant 1 holds), keep consuming.
- Cancellation and Ctrl-C (BaseException) are never caught: the worker stops cleanly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.codec import dead_letter, decode
from pipeline.errors import DecodeError
from pipeline.events import Event

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class RawRecord:
    """One source record as bytes, with where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def from_event(cls, event: Any) -> RawRecord:
        """From a Faust EventT of a raw-serialized topic."""
        msg = event.message
        value = event.value
        key = event.key
        return cls(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=key if isinstance(key, bytes | None) else str(key).encode(),
            value=value if isinstance(value, bytes | None) else str(value).encode(),
        )

    @property
    def where(self) -> str:
        """``topic[partition]@offset`` for logs."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


def decode_record(model: type[E], record: RawRecord) -> E:
    """Decode a raw record into ``model`` (raises DecodeError)."""
    return decode(model, record.value)


def dead_letter_for(
    stage: str, record: RawRecord, error: BaseException, message_id: str | None = None
) -> Any:
    """The DeadLetter for a failed record."""
    return dead_letter(
        stage=stage,
        error=error,
        raw=record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        message_id=message_id,
    )


def split_decoded(
    model: type[E], stage: str, records: list[RawRecord]
) -> tuple[list[tuple[RawRecord, E]], list[Any]]:
    """Decode a batch: (good records with their events, dead letters for the rest)."""
    good: list[tuple[RawRecord, E]] = []
    bad: list[Any] = []
    for record in records:
        try:
            good.append((record, decode_record(model, record)))
        except DecodeError as exc:
            bad.append(dead_letter_for(stage, record, exc))
    return good, bad
