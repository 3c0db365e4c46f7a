"""One running stack per test session: the real worker and ingest processes on the real broker.

Tests share it and keep apart by unique customer and message ids; tests that need their own
topics use the ``kafka`` fixture, or ``running_stack`` for a stack of their own. The helpers
(``records``, ``deliveries``, ``post_json``, ``telegram`` ...) are fixtures of the plugins in
``tests/plugins``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.outbox import Outbox

if TYPE_CHECKING:
    from tests.plugins.stack import RunningStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack(
    broker_settings: Settings, outbox: Outbox, running_stack: RunningStack
) -> Iterator[Settings]:
    """Settings of a running worker + ingest pair (started once, stopped at session end)."""
    with running_stack(broker_settings, outbox, "it") as (settings, _):
        yield settings
