"""Messages that arrive while a worker starts are processed once (issue 11, start-up replay).

Faust resumes the stream partitions at the end of a recovery and only then seeks them, while
its flow already runs for the changelogs: the fetcher handed the agents records that the seeks
then fetched again, so classify processed every message that arrived during start-up twice
and route three times (same ids, same decisions). ``pipeline.recovery.RouterRecovery`` seeks
first and resumes after (docs/ARCHITECTURE.md, Recovery).

The window is as long as the worker's committed-offset reads (one per assigned partition, about
0.1 s with 32 partitions per topic). Nothing is posted before it, so the stream partitions
have nothing buffered and the first record to arrive wakes up the fetcher (5 ms fetch wait);
the messages go out as soon as the worker logs that it starts seeking. ``bench/startup_replay.py``
counts the same replay for messages that arrive throughout a start-up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.events import ClassifiedMessage, Outcome, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import child_env, children, wait_http

if TYPE_CHECKING:
    from tests.plugins.stack import StackSettings, Telegram
    from tests.plugins.topics import Records
    from tests.plugins.waiting import Patience, WaitUntil

pytestmark = pytest.mark.integration

#: Posted at once when the worker starts its seeks: enough that some land in the window.
BURST = 24
#: What ``RouterRecovery`` logs as it starts seeking the stream partitions.
SEEK_LINE = "Seek stream partitions to committed offsets."
TEXTS = [
    "Где мой заказ? Жду уже неделю.",
    "I want to cancel my order, please.",
    "Не пришёл возврат денег за товар.",
    "How do I change my shipping address?",
]


@pytest.fixture
def wide(broker_settings: Settings, stack_settings: StackSettings) -> Settings:
    """Topics of their own with 32 partitions each, and a 5 ms fetch wait (module docstring)."""
    return stack_settings(
        broker_settings.model_copy(update={"partitions": 32, "fetch_max_wait_ms": 5}), "su"
    )


async def test_messages_arriving_during_start_up_are_processed_once(
    wide: Settings,
    outbox: Outbox,
    telegram: Telegram,
    records: Records,
    patience: Patience,
    wait_until: WaitUntil,
    tmp_path: Path,
) -> None:
    stack = wide
    chat0 = 7_000_000 + int(uuid.uuid4().int % 900_000) * 10
    chats = [chat0 + n for n in range(BURST)]
    wanted = {derive_id("msg", "telegram", f"{chat}:1") for chat in chats}
    log_path = tmp_path / "stack.log"
    read = 0

    def seeking() -> bool:
        nonlocal read
        with log_path.open("rb") as f:
            f.seek(read)
            new = f.read()
        read += new.rfind(b"\n") + 1  # a line still being written is read again next time
        return SEEK_LINE.encode() in new[: new.rfind(b"\n") + 1]

    with children(log_path) as group:
        env = child_env(stack, **outbox.env())
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{stack.ingest_host}:{stack.ingest_port}/healthz", 60, group)
        group.start("worker", ["worker"], env)
        # A failure bound (a first worker may train the model), not a timing check.
        wait_http(f"http://{stack.web_host}:{stack.web_port}/healthz", 600, group)
        # Nothing is posted before: the stream partitions have nothing buffered, so a record
        # arriving now wakes the fetcher up. The burst goes out as the worker starts seeking:
        # with the old order the stream partitions were already resumed then.
        await wait_until(seeking, timeout_s=patience.timeout_s, what=SEEK_LINE, interval_s=0.002)
        posted = await asyncio.gather(
            *(asyncio.to_thread(telegram, stack, c, 1, TEXTS[c % len(TEXTS)]) for c in chats)
        )
        assert [status for status, _ in posted] == [200] * BURST
        # Every id's outcome, then on until the topic is quiet: a replay comes after them.
        outcomes = await records.settled(
            stack,
            stack.topic("outcomes"),
            Outcome,
            lambda o: o.message_id in wanted,
            lambda seen: {o.message_id for o in seen} >= wanted,
        )
        classified = await records.settled(
            stack,
            stack.topic("classifications"),
            ClassifiedMessage,
            lambda c: c.message_id in wanted,
            len(wanted),
        )
    per_outcome = Counter(o.message_id for o in outcomes)
    per_classified = Counter(c.message_id for c in classified)
    assert set(per_outcome) == wanted
    twice = {m: n for m, n in per_outcome.items() if n > 1}
    assert twice == {}, (
        f"{len(twice)} of {BURST} messages posted while the worker sought its partitions have "
        f"more than one outcome record (up to {max(twice.values())}); its log: {log_path}"
    )
    assert per_classified == Counter({m: 1 for m in wanted}), "classified twice"
