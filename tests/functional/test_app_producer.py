"""The worker's producer (table changelogs and outputs) lingers as configured (issue 16)."""

from __future__ import annotations

from pipeline.app import create_app
from pipeline.config import Settings


def test_the_worker_producer_lingers_as_configured() -> None:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",  # never contacted
        topic_prefix="tl.",
        app_id="test-linger",
        data_dir=Settings().data_dir,  # shares the cached default model with the other tiers
        producer_linger_ms=7,
    )
    ctx = create_app(settings)
    assert ctx.app.conf.producer_linger == 0.007
    assert ctx.app.producer.linger_ms == 7  # what Faust hands to aiokafka's producer
