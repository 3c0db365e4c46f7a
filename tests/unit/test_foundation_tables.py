"""A table's changelog partition is its stream's partition for the same key.

The tables are written from batched processing with ``use_partitioner`` (no current event),
so only the key's bytes decide the changelog partition. A worker that takes over stream
partition p restores changelog partition p: the delivered-ids and case state of exactly the
customers whose records it now reads (issue 11: with JSON-encoded keys, ``"c42"`` hashed
elsewhere than ``c42`` and replies were sent twice after a rebalance).
"""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.faust_app import RouterApp
from pipeline.metrics import Metrics
from pipeline.recovery import FENCE_KEY

KEYS = [f"tg:{6_000_000 + n}" for n in range(40)] + ["vk:1:2", "wa:+79991234567", "Ёлка"]


def test_changelog_keys_are_the_stream_keys_bytes_and_land_in_the_same_partition() -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", partitions=4)
    app = RouterApp("tables-test", broker="kafka://127.0.0.1:1", store="memory://")
    table = Context(settings=settings, metrics=Metrics(), app=app).table("delivered-replies")
    partitioner = DefaultPartitioner()
    parts = list(range(settings.partitions))
    topic = table.changelog_topic
    for key in KEYS:
        stream_key = key.encode()  # how bus.Publisher writes a record's key
        changelog_key, _ = topic.prepare_key(key, table.key_serializer)
        assert changelog_key == stream_key
        assert partitioner(changelog_key, parts, parts) == partitioner(stream_key, parts, parts)
    # restored records are decoded by the changelog topic: the key reads back as the str it
    # was, the recovery fence's too (a key no table writes: ids never start with NUL)
    for raw in (b"tg:6000001", FENCE_KEY):
        assert app.serializers.loads_key(str, raw, serializer=topic.key_serializer) == raw.decode()
    assert not any(k.encode().startswith(b"\x00") for k in KEYS)
