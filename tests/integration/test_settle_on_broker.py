"""``records.settled`` on the real broker: a copy written after the expected record is seen."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from pipeline import bus
from pipeline.config import Settings
from pipeline.events import TaskStatus, TaskUpdate, utcnow

if TYPE_CHECKING:
    from tests.plugins.topics import Records

pytestmark = pytest.mark.integration


async def test_settled_returns_a_duplicate_that_comes_after_the_expected_record(
    kafka: Settings, records: Records
) -> None:
    await bus.ensure_topics(kafka)
    topic = kafka.topic("task-updates")
    update = TaskUpdate(
        update_id="u-late",
        sub_request_id="sr-late",
        case_id="case-late",
        status=TaskStatus.resolved,
        resolution="done",
        at=utcnow(),
    )
    pub = bus.Publisher(kafka)
    try:
        await pub.send(topic, update.case_id, update)

        async def send_again_a_second_later() -> None:
            await asyncio.sleep(1.0)  # the late duplicate under test, not a wait
            await pub.send(topic, update.case_id, update)

        late = asyncio.create_task(send_again_a_second_later())
        seen = await records.settled(kafka, topic, TaskUpdate, lambda u: u.update_id == "u-late", 1)
        await late
    finally:
        await pub.close()
    assert [u.update_id for u in seen] == ["u-late", "u-late"]
