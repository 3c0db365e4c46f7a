"""The worker's producer lingers, its tables keep standby copies and its consumer commits as
configured (issue 16)."""

from __future__ import annotations

from pipeline.app import create_app
from pipeline.config import Settings
from pipeline.runtime import child_env


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


def test_the_workers_keep_as_many_standby_table_copies_as_configured() -> None:
    """Each standby copy reads its tables' changelogs as they are written: with two workers
    the default's copies cost ~0.35 ms CPU per message (bench/pipeline_throughput.py
    --workers 2), so a deployment may trade a slower takeover for it."""
    base = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",  # never contacted
        topic_prefix="ts.",
        app_id="test-standby",
        data_dir=Settings().data_dir,
    )
    assert create_app(base).app.conf.table_standby_replicas == 1
    none = base.model_copy(update={"table_standby_replicas": 0})
    assert create_app(none).app.conf.table_standby_replicas == 0
    assert child_env(none)["PIPELINE_TABLE_STANDBY_REPLICAS"] == "0"  # and the children's


def test_the_workers_commit_as_often_as_configured() -> None:
    """What a crashed worker's successor reads again: its input since the last commit."""
    base = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",  # never contacted
        topic_prefix="tc.",
        app_id="test-commit",
        data_dir=Settings().data_dir,
    )
    assert create_app(base).app.conf.broker_commit_interval == 2.8  # Faust's own default
    slow = base.model_copy(update={"commit_interval_s": 60.0})
    ctx = create_app(slow)
    assert ctx.app.conf.broker_commit_interval == 60.0
    assert ctx.app.consumer.commit_interval == 60.0  # what the commit timer waits
    assert child_env(slow)["PIPELINE_COMMIT_INTERVAL_S"] == "60.0"
