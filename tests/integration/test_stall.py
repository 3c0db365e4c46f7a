"""A worker whose agent cannot make progress reports itself stalled, then recovers.

The fake Telegram API answers slowly, so the notify agent sits on one delivery while more
replies wait: the replies partitions' committed offsets stop moving, /healthz turns 503 and
names them, ``pipeline_consumer_stalled`` counts them; when the platform is fast again the
backlog drains and the worker is healthy again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.outbox import Outbox
from pipeline.runtime import Children

if TYPE_CHECKING:
    from tests.plugins.stack import GetJson, GetText, RunningStack, Telegram
    from tests.plugins.waiting import WaitUntilSync

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_platform() -> Iterator[Outbox]:
    box = Outbox().start()
    try:
        yield box
    finally:
        box.telegram_delay_s = 0.0
        box.stop()


@pytest.fixture
def stack_with_slow_platform(
    broker_settings: Settings, slow_platform: Outbox, running_stack: RunningStack
) -> Iterator[tuple[Settings, Children]]:
    # Well above Faust's commit interval (2.8 s), so a busy partition is not taken for stalled.
    base = broker_settings.model_copy(update={"stall_after_s": 6.0})
    with running_stack(base, slow_platform, "st") as stack:
        yield stack


def test_a_stuck_agent_turns_healthz_503_and_back(
    stack_with_slow_platform: tuple[Settings, Children],
    slow_platform: Outbox,
    get_text: GetText,
    get_json: GetJson,
    telegram: Telegram,
    wait_until_sync: WaitUntilSync,
) -> None:
    stack, _ = stack_with_slow_platform
    healthz = f"http://{stack.web_host}:{stack.web_port}/healthz"
    assert get_json(healthz)[0] == 200
    slow_platform.telegram_delay_s = 9.0  # under the 10 s delivery timeout: no retries
    chat = 8_000_000 + int(uuid.uuid4().int % 100_000)
    for n in range(1, 5):
        status, _ = telegram(stack, chat + n, 1, "Где мой заказ 4821?")
        assert status == 200

    def health_is(status: int) -> dict[str, object] | None:
        code, body = get_json(healthz)
        return body if code == status else None

    body = wait_until_sync(lambda: health_is(503), timeout_s=60, what="/healthz answering 503")
    assert body["status"] == "stalled"
    stalled = body["stalled"]
    assert isinstance(stalled, list) and stalled
    assert any(str(p).startswith(stack.topic("replies")) for p in stalled), stalled
    _, metrics = get_text(f"http://{stack.web_host}:{stack.web_port}/metrics")
    assert "pipeline_consumer_stalled 0.0" not in metrics

    slow_platform.telegram_delay_s = 0.0
    healthy = wait_until_sync(lambda: health_is(200), timeout_s=90, what="/healthz back to 200")
    assert healthy["status"] == "ok"
    wait_until_sync(
        lambda: (
            "pipeline_consumer_stalled 0.0"
            in get_text(f"http://{stack.web_host}:{stack.web_port}/metrics")[1]
        ),
        timeout_s=30,
        what="the stall gauge back to 0",
    )
