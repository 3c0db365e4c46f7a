"""A broker that answers nothing for a while, then goes on with its data (a network
partition, a stuck host): nothing acknowledged is lost, nothing is decided twice, a good
message never lands in the dead-letter topic for the broker's fault, and a reply goes out
twice only in the documented window (invariant 3; docs/ARCHITECTURE.md, Errors and Recovery).

Customers write through the webhook while the worker is down. The worker starts on that
backlog, and once its replies flow to the (slow) platform the test's own Tansu is stopped
(SIGSTOP) for longer than the produce timeout, in one variant also longer than the request
and session timeouts: the worker has replies in flight and their marks to write. Customers
who write meanwhile get a 503 (ingest cannot store their messages) and post again after the
pause, as Telegram and the others retry a webhook that failed. A worker whose agent stopped
on the broker's error exits (``runtime.EXIT_AGENT_CRASHED``, or ``EXIT_STOP_TIMED_OUT`` when
its stop cannot finish), and the test starts it again as a supervisor does: it reads again
the input it had not committed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from pipeline import bus
from pipeline.events import DeadLetter, Outcome, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import (
    EXIT_AGENT_CRASHED,
    EXIT_STOP_TIMED_OUT,
    Children,
    child_env,
    children,
    departments,
    wait_http,
)

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import Settings
    from tests.plugins.stack import Deliveries, OwnBroker, ProbeJson, Telegram
    from tests.plugins.topics import OnlyTheWindowTwice, Records
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration

#: Customers who wrote while the worker was down (its backlog as it starts), and customers who
#: write during the pause (refused, posted again after it).
BACKLOG, DURING = 400, 12
POSTERS = 6
#: The platform's answer time: the replies to the backlog take ~12 s to deliver (16 at a
#: time).
PLATFORM_DELAY_S = 0.5
#: Replies delivered when the broker stops: notify then has more in flight.
FLOWING = 40
#: Ingest's wait for the broker's ack before it answers 503 (``PIPELINE_PRODUCE_TIMEOUT_S``),
#: the worker's before its agent gives up on its outputs.
PRODUCE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Pause:
    """How long the broker answers nothing, and how the worker ends. Its agent stops once its
    outputs are not acknowledged within the produce timeout, and the worker stops: back within
    the shutdown grace, the broker lets the stop finish (``EXIT_AGENT_CRASHED``); silent for
    longer, past every client's timeout too (the request timeout, 30 s, and the group session,
    6 s here), it does not, and the watchdog ends the worker (``EXIT_STOP_TIMED_OUT``)."""

    seconds: float
    grace_s: float
    exit_status: int


TEXTS = [
    "Где мой заказ? Жду уже неделю.",
    "I want to cancel my order, please.",
    "Не пришёл возврат денег за товар.",
    "How do I change my shipping address?",
    "Списали деньги дважды за один заказ, верните.",
    "Where can I download my invoice?",
]


@pytest.fixture
def slow_platform() -> Iterator[Outbox]:
    box = Outbox().start()
    box.telegram_delay_s = PLATFORM_DELAY_S
    try:
        yield box
    finally:
        box.telegram_delay_s = 0.0
        box.stop()


async def supervise(
    group: Children, env: dict[str, str], stack: Settings, probe: ProbeJson, wait_until: WaitUntil
) -> str:
    """What a supervisor does once the broker is back: the worker healthy, or started again
    once it exited. Returns what it saw."""
    web = f"http://{stack.web_host}:{stack.web_port}"

    def state() -> str | None:
        name, proc = group.procs[-1]
        assert name == "worker"
        if proc.poll() is not None:
            return f"exited {proc.returncode}"
        answer = probe(f"{web}/healthz")  # None: not answering for a moment (stopping)
        return "ok" if answer is not None and answer[1].get("status") == "ok" else None

    seen = await wait_until(state, timeout_s=180, what="the worker healthy or exited")
    if seen != "ok":
        group.kill("worker")  # forgets the one that exited
        await asyncio.sleep(stack.session_timeout_s + 2)  # the dead member's session ends first
        group.start("worker", ["worker"], env)
        wait_http(f"{web}/readyz", 600, group)
    return seen


@pytest.mark.parametrize(
    "pause",
    [Pause(10.0, 60.0, EXIT_AGENT_CRASHED), Pause(35.0, 10.0, EXIT_STOP_TIMED_OUT)],
    ids=["10s", "35s"],
)
async def test_a_broker_silent_for_a_while_loses_and_doubles_nothing(
    pause: Pause,
    own_broker: OwnBroker,
    slow_platform: Outbox,
    telegram: Telegram,
    records: Records,
    only_the_window_twice: OnlyTheWindowTwice,
    deliveries_of: Callable[[Outbox], Deliveries],
    probe_json: ProbeJson,
    wait_until: WaitUntil,
    tmp_path: Path,
) -> None:
    stack = own_broker.settings
    await bus.ensure_topics(stack, departments=departments(stack))
    env = child_env(
        stack,
        **slow_platform.env(),
        PIPELINE_PRODUCE_TIMEOUT_S=str(PRODUCE_TIMEOUT_S),
        PIPELINE_SHUTDOWN_GRACE_S=str(pause.grace_s),
    )
    chat0 = 6_100_000 + int(uuid.uuid4().int % 900_000) * 1000
    chats = [chat0 + n for n in range(BACKLOG + DURING)]
    backlog, during = chats[:BACKLOG], chats[BACKLOG:]
    mids = {derive_id("msg", "telegram", f"{chat}:1") for chat in chats}
    wanted = {str(chat) for chat in chats}
    deliveries = deliveries_of(slow_platform)

    def post(chat: int) -> int:
        return telegram(stack, chat, 1, TEXTS[chat % len(TEXTS)])[0]

    with children(tmp_path / "stack.log") as group:
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{stack.ingest_host}:{stack.ingest_port}/healthz", 60, group)
        with ThreadPoolExecutor(POSTERS) as posters:
            assert set(posters.map(post, backlog)) == {200}
        # The worker starts on that backlog; the broker stops once the replies flow (the
        # first ones were marked, more are on their way to the platform).
        group.start("worker", ["worker"], env)
        await wait_until(
            lambda: sum(i.to in wanted for i in slow_platform.snapshot()) >= FLOWING,
            timeout_s=600,  # a failure bound (model loading, the restore)
            what=f"{FLOWING} replies",
            interval_s=0.01,
        )
        paused_at = time.time()
        with own_broker.paused(), ThreadPoolExecutor(DURING) as posters:
            # At once: each fails within the produce timeout, none waits for the others
            # (a platform gives up on a webhook after its own timeout, 30 s here).
            refused = list(posters.map(post, during))
            await asyncio.sleep(max(0.0, pause.seconds - (time.time() - paused_at)))
        assert all(s >= 500 for s in refused), f"ingest acknowledged unstored messages: {refused}"

        seen = await supervise(group, env, stack, probe_json, wait_until)
        # The platform retries what failed (ingest's duplicate filter only drops a retry of a
        # message it accepted).
        assert [post(chat) for chat in during] == [200] * DURING, seen
        outcomes = await records.settled(
            stack,
            stack.topic("outcomes"),
            Outcome,
            lambda o: o.message_id in mids,
            lambda got: {o.message_id for o in got} >= mids,
        )
        delivered = await deliveries.settled(lambda i: i.to in wanted, enough=len(wanted))
        replies, marks = await records.replies_and_marks(stack, wanted)
        dead = await records.settled(stack, stack.topic("dlq"), DeadLetter, lambda d: True, 0)
        log = (tmp_path / "stack.log").read_text(errors="replace")

    # The pause hit the worker at work: its records were not acknowledged, the agent stopped,
    # and the worker exited for its supervisor to start it again.
    assert "an agent crashed" in log, seen
    assert seen == f"exited {pause.exit_status}", seen
    decisions = {(o.message_id, o.outcome, o.case_id) for o in outcomes}
    assert len(decisions) == len(mids), f"decided more than once ({seen}): {sorted(decisions)}"
    assert not [o for o in outcomes if o.outcome == "rejected"], seen
    assert dead == [], f"dead-lettered for the broker's fault: {[d.error for d in dead]}"
    assert {i.to for i in delivered} == wanted
    only_the_window_twice(delivered, replies, marks, paused_at)
