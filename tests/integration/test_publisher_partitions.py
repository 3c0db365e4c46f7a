"""Every keyed record the publisher sends lands in the partition aiokafka's default
partitioner gives its key bytes (the publisher remembers it per key, ``bus.Publisher``):
tables are co-partitioned with the topics by key bytes, so a record elsewhere would be
another worker's state after a rebalance."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from pipeline import bus
from pipeline.config import Settings

pytestmark = pytest.mark.integration


async def test_keyed_records_land_in_the_default_partitioners_partition(kafka: Settings) -> None:
    s = kafka.model_copy(update={"partitions": 4})
    topic = s.topic("inbound")
    await bus.ensure_topics(s, [topic])
    keys = [f"c{n}" for n in range(60)] + ["Ёлка", "wa:+79991234567"]
    publisher = bus.Publisher(s)
    try:
        for round_ in range(2):  # the second time from the publisher's memory
            for key in keys:
                await publisher.send_raw(topic, key, f"{round_}".encode())
    finally:
        await publisher.close()
    records = await bus.read_all(s, [topic])
    assert len(records) == 2 * len(keys)
    parts = list(range(4))
    for r in records:
        assert r.key is not None
        assert r.partition == DefaultPartitioner()(r.key, parts, parts), r.key
