"""What every stage's agents share: raw records, decoding, the error policy, retention sweeps.

The error policy (``ErrorPolicy``, applied by ``Context.guard``/``guard_batch``) decides, per
failure kind, what happens to a record whose processing raised — the role of quix-streams'
``on_processing_error`` callback or FastStream's exception middleware:

- ``dead_letter`` (any ``Exception``, the default): a DeadLetter with ``topic[partition]@offset``,
  plus the message's one ``rejected`` Outcome when it decoded (invariant 1); keep consuming.
  A record that does not decode or validate is the common case.
- ``stop`` (``BrokerError``; cancellation and Ctrl-C, which are not ``Exception``): re-raise,
  the agent stops before acknowledging the record, which is read again after the restart.
- ``skip``: log and go on, nothing sent (for kinds a deployment chooses to ignore).

See docs/ARCHITECTURE.md, "Errors".
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import ValidationError

from pipeline.codec import dead_letter, decode
from pipeline.errors import BrokerError, DecodeError
from pipeline.events import Event

if TYPE_CHECKING:
    from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
R = TypeVar("R")
T = TypeVar("T")


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


class Action(enum.Enum):
    """What the error policy does with a record whose processing failed."""

    skip = "skip"
    dead_letter = "dead_letter"
    stop = "stop"


@dataclass(frozen=True)
class ErrorPolicy:
    """Skip / dead-letter / stop, per failure kind (the first matching rule wins)."""

    stop_on: tuple[type[BaseException], ...] = (BrokerError,)
    skip_on: tuple[type[BaseException], ...] = ()

    def decide(self, exc: BaseException) -> Action:
        """The action for this failure."""
        if not isinstance(exc, Exception) or isinstance(exc, self.stop_on):
            return Action.stop
        if isinstance(exc, self.skip_on):
            return Action.skip
        return Action.dead_letter


#: A batch closes once no record came for this long (and at the batch window at the latest).
BATCH_IDLE_S = 0.002

#: Turns of the event loop a record already in a Faust stream's buffer takes to come out
#: (its iterator yields once, ``sleep(0)``, before it takes one: 2), plus one to spare.
#: ``take_batches`` lets them pass before it sets up a timed wait (a timer, a waiter and
#: callbacks: ~8 µs per record, when a busy stream's records are already there).
READY_YIELDS = 3


async def take_batches(
    stream: Any, max_: int, within: float, idle: float = BATCH_IDLE_S, acks: bool = True
) -> AsyncGenerator[list[Any], None]:
    """Batches of a Faust stream's events, each acknowledged after the caller's loop body.

    Faust's ``take_events`` waits its whole window whenever fewer than ``max_`` records
    come, so a lone message waited up to ``within`` at every batched hop (two 50 ms windows
    in the bench's p99 at 50 msg/s). Here a batch starts with the first record (no timer
    while the stream is idle) and closes when ``max_`` records are in, when no further
    record came for ``idle`` seconds, or ``within`` after its first record.

    Acknowledgements as in ``take_events``: the stream's own acks are off; a batch's events
    are acknowledged when the caller asks for the next batch, so after its outputs were
    flushed. The one record read ahead (to see whether the batch goes on) is not.
    ``acks=False``: the caller acknowledges them (``context.AckBehind``).
    """
    loop = asyncio.get_running_loop()
    events = stream.events().__aiter__()
    stream.enable_acks = False
    ahead: asyncio.Future[Any] | None = None
    try:
        while True:
            if ahead is None:
                ahead = asyncio.ensure_future(events.__anext__())
            try:
                batch = [await ahead]
            except StopAsyncIteration:
                return
            ahead = None
            deadline = loop.time() + within
            while len(batch) < max_:
                ahead = asyncio.ensure_future(events.__anext__())
                for _ in range(READY_YIELDS):  # a record already in the stream's buffer
                    await asyncio.sleep(0)
                    if ahead.done():
                        break
                else:
                    wait = min(idle, deadline - loop.time())
                    done, _ = await asyncio.wait({ahead}, timeout=max(wait, 0.0))
                    if not done:  # idle or the window is over: ``ahead`` starts the next batch
                        break
                try:
                    batch.append(ahead.result())
                except StopAsyncIteration:
                    break
                ahead = None
            yield batch
            if acks:
                for event in batch:
                    await stream.ack(event)
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()
        stream.enable_acks = True


#: Keys a retention sweep handles between two yields to the event loop.
SWEEP_CHUNK = 100


#: What reading a stored table value raises when the value is unreadable: not JSON, or JSON of
#: another shape or of a format this version does not know (a bug, or written by a newer
#: release before a rollback). Anything else is a programming error and surfaces.
UNREADABLE = (orjson.JSONDecodeError, ValidationError, DecodeError)


def read_stored(
    parse: Callable[[R], T],
    raw: R,
    *,
    table: str,
    key: str,
    metrics: Metrics | None = None,
    then: str = "skipped",
) -> T | None:
    """``parse(raw)``, or None when the stored value is unreadable (``UNREADABLE``).

    An exception in a Faust timer kills the worker, and one in a batch outside the per-record
    guard rejects every message of the batch: one bad value must cost only its own key. It is
    logged with the table and key (``then``: what the caller does about it) but not the value,
    which may hold a customer's text, and counted (``pipeline_unreadable_state_total{table}``).
    """
    try:
        return parse(raw)
    except UNREADABLE as exc:
        log.warning("%s value of %s is unreadable (%s): %s", table, key, _reason(exc), then)
        if metrics is not None:
            metrics.unreadable_state.labels(table=table).inc()
        return None


def _reason(exc: Exception) -> str:
    """What is wrong with a value, without the value (pydantic's text quotes the input)."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        return f"{exc.error_count()} error(s), first {first['type']} at {where}"
    if isinstance(exc, orjson.JSONDecodeError):
        return f"not JSON at char {exc.pos}"
    return type(exc).__name__


def own_keys(table: Any) -> list[str]:
    """The keys of ``table`` this worker owns, for a timer that walks it: a
    ``context.DirectTable``'s own partitions, without the standby copies of others (its
    ``own_keys``); any other mapping (a test's, a bench's dict): every key."""
    mine = getattr(table, "own_keys", None)
    return list(mine()) if callable(mine) else list(table.keys())


async def sweep_table(
    table: Any, keep: Callable[[str, str], str | None], metrics: Metrics | None = None
) -> int:
    """Apply a retention rule to every key of a table this worker owns (``own_keys``);
    returns how many keys went.

    ``keep(key, value)`` returns the value to keep (the same text: unchanged; another:
    rewritten) or None to forget the key. A value ``keep`` cannot read (it raised one of
    ``UNREADABLE``) is forgotten too, logged and counted (``read_stored``): the sweep runs in
    a timer, where an exception kills the worker. The sweep yields to the event loop every
    ``SWEEP_CHUNK`` keys (a long sweep must not stall the agents) and re-reads each value,
    since an agent may have changed or deleted it meanwhile.
    """
    name = str(getattr(table, "name", "table"))
    removed = 0
    for n, key in enumerate(own_keys(table)):
        if n % SWEEP_CHUNK == 0:
            await asyncio.sleep(0)
        raw = table.get(key)
        if raw is None:
            continue
        kept = read_stored(
            functools.partial(keep, key),
            raw,
            table=name,
            key=key,
            metrics=metrics,
            then="forgotten",
        )
        if kept is None:
            del table[key]
            removed += 1
        elif kept != raw:
            table[key] = kept
    return removed
