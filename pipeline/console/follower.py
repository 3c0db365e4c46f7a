"""Follow the router's topics into the console's read model, from the beginning, forever.

Outside any consumer group (every replica reads everything); after a broker error the
topics are read again from the beginning, which the idempotent projection allows.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import KafkaError

from pipeline import bus
from pipeline.config import Settings
from pipeline.console.store import Store
from pipeline.errors import BrokerError
from pipeline.topics import task_topic

__all__ = ["FOLLOWED", "follow", "topic_names"]

log = logging.getLogger(__name__)

#: Logical topics the console projects (plus every department's task topic).
FOLLOWED: tuple[str, ...] = (
    "classifications",
    "case-state",
    "case-status",
    "case-events",
    "external",
    "task-updates",
    "replies",
    "deliveries",
    "outcomes",
    "quality",
)


def topic_names(settings: Settings, departments: list[str]) -> dict[str, str]:
    """Full topic name → logical name (task topics map to ``tasks.<dept>``)."""
    names = {settings.topic(t): t for t in FOLLOWED}
    for d in departments:
        names[task_topic(settings, d)] = f"tasks.{d}"
    return names


async def follow(
    settings: Settings,
    store: Store,
    departments: list[str],
    ready: asyncio.Event | None = None,
    *,
    retry_s: float = 5.0,
) -> None:
    """Project every record of the followed topics into ``store``; sets ``ready`` once the
    first pass has caught up with what was there at start."""
    names = topic_names(settings, departments)
    while True:
        try:
            async with bus.reader(settings, *names) as consumer:
                while True:
                    batch = await consumer.getmany(timeout_ms=500)
                    for tp, msgs in batch.items():
                        logical = names[tp.topic]
                        for m in msgs:
                            store.apply(logical, m.value)
                    if not batch and ready is not None:
                        ready.set()
        except (KafkaError, BrokerError, OSError) as exc:
            log.warning("console following failed (%r); reading again in %.0f s", exc, retry_s)
            await asyncio.sleep(retry_s)
