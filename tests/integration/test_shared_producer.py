"""The worker's one producer writes table changelogs and outputs (issue 16, b2dd511).

Faust places a changelog record with ``key_partition``, which reads the producer's metadata
without asking the broker. Once an aiokafka client has been asked about one topic, it keeps
metadata only for the topics it was asked about, so an output sent first through the shared
producer left the tables' changelogs out of it: the next table write raised TypeError and the
message was dead-lettered (test_rules_live on a fresh clone of 2130b0d).
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from pipeline.app import create_app
from pipeline.bus import ensure_topics
from pipeline.config import Settings

pytestmark = pytest.mark.integration


async def test_a_table_write_after_an_output_finds_its_changelog(kafka: Settings) -> None:
    settings = kafka.model_copy(update={"data_dir": Settings().data_dir})  # cached model
    await ensure_topics(settings)
    ctx = create_app(settings)
    app = cast(Any, ctx.app)
    changelogs = sorted(t.changelog_topic.get_topic_name() for t in app.tables.values())
    assert changelogs
    await app.producer.start()
    try:
        await ctx.output_publisher().send_raw(settings.topic("outcomes"), "c1", b"{}")
        for name in changelogs:
            assert app.producer.key_partition(name, b"c1") is not None, name
    finally:
        await ctx.output_publisher().close()
        await app.producer.stop()
