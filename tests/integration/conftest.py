"""One running stack per test session: the real worker and ingest processes on the real broker.

Tests share it and keep apart by unique customer and message ids; tests that need their own
topics use the ``kafka`` fixture instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from pipeline.outbox import Outbox

from .helpers import start_stack

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
    settings, group = start_stack(broker_settings, outbox, "it")
    try:
        yield settings
    finally:
        group.stop()
