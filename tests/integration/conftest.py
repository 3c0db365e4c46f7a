"""One running stack per test session: the real worker and ingest processes on the real broker.

Tests share it and keep apart by unique customer and message ids; tests that need their own
topics use the ``kafka`` fixture instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from pipeline import bus
from pipeline.broker import free_port
from pipeline.config import Settings
from pipeline.outbox import Outbox
from pipeline.runtime import Children, child_env, departments, wait_http

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def outbox() -> Iterator[Outbox]:
    """Local stand-ins for the platform APIs and the mail relay (real HTTP and SMTP)."""
    box = Outbox().start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def stack(broker_settings: Settings, outbox: Outbox) -> Iterator[Settings]:
    """Settings of a running worker + ingest pair (started once, stopped at session end)."""
    tag = uuid.uuid4().hex[:8]
    s = broker_settings.model_copy(
        update={
            "topic_prefix": f"it{tag}.",
            "app_id": f"it-{tag}",
            "web_port": free_port(),
            "ingest_port": free_port(),
            "smtp_port": free_port(),
            "session_timeout_s": 6.0,
        }
    )
    asyncio.run(bus.ensure_topics(s, departments=departments(s)))
    group = Children()
    try:
        env = child_env(s, **outbox.env())
        group.start("worker", ["worker"], env)
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 60, group)
        wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 180, group)
        yield s
    finally:
        group.stop()
