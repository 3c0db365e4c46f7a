"""Settings, metrics, the stage error policy and the embedded broker's process handling."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry

from pipeline import runtime
from pipeline.broker import EmbeddedBroker, broker_for, free_port, metadata_ready, tansu_binary
from pipeline.config import DEFAULT_CONFIG_DIR, Settings
from pipeline.errors import BrokerError
from pipeline.metrics import Metrics


def test_settings_read_env_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("PIPELINE_TOPIC_PREFIX", "acme.")
    monkeypatch.setenv("PIPELINE_FETCH_MAX_WAIT_MS", "250")
    monkeypatch.setenv("PIPELINE_TWILIO_AUTH_TOKEN", "s3cret")
    s = Settings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.topic("inbound") == "acme.inbound"
    assert s.fetch_max_wait_ms == 250
    assert "s3cret" not in repr(s)
    assert s.twilio_auth_token is not None
    assert s.twilio_auth_token.get_secret_value() == "s3cret"
    with pytest.raises(ValueError, match="frozen"):
        s.topic_prefix = "x."  # type: ignore[misc]


def test_fetch_wait_default_is_low() -> None:
    assert Settings().fetch_max_wait_ms <= 200


def test_metrics_use_the_injected_registry() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.messages.labels(stage="route", outcome="routed").inc(3)
    m.end_to_end.observe(0.2)
    text = m.render().decode()
    assert 'pipeline_messages_total{outcome="routed",stage="route"} 3.0' in text
    assert "pipeline_end_to_end_seconds_bucket" in text
    assert Metrics().render() != m.render()  # a second registry starts from zero


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerError, match="missing or not executable"):
        tansu_binary()


def test_failing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    fake = Path(str(tmp_path)) / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PIPELINE_TANSU_BIN", str(fake))
    with pytest.raises(BrokerError, match="cannot bind"):
        EmbeddedBroker().start()


def test_closed_port_is_not_ready() -> None:
    assert not metadata_ready("127.0.0.1", free_port(), timeout=0.5)


def test_configured_broker_starts_nothing() -> None:
    s = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    with broker_for(s) as got:
        assert got is s


def test_embedded_broker_stops_without_orphans() -> None:
    with EmbeddedBroker() as b:
        pid = b.pid
        assert pid is not None
        assert metadata_ready(b.host, b.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_embedded_broker_that_dies_calls_on_death_and_a_stopped_one_does_not() -> None:
    died = threading.Event()
    with EmbeddedBroker(on_death=died.set) as b:
        assert b._proc is not None
        b._proc.kill()  # the broker dies under its owner
        assert died.wait(timeout=30), "on_death was not called"
    stopped = threading.Event()
    with EmbeddedBroker(on_death=stopped.set):
        pass  # stopped by its owner: not a death
    assert not stopped.wait(timeout=1)


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    from pipeline.broker import _ephemeral_low

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= p < _ephemeral_low() for p in ports)


async def test_follow_reads_the_topic_again_after_a_broker_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import contextlib
    from collections.abc import AsyncIterator
    from types import SimpleNamespace
    from typing import Any

    from aiokafka import TopicPartition

    from pipeline import bus
    from pipeline.errors import BrokerError

    attempts: list[int] = []
    seen: list[int] = []

    class FakeConsumer:
        def __init__(self) -> None:
            self.calls = 0

        async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
            self.calls += 1
            if self.calls == 1:
                tp = TopicPartition("care.config", 0)
                rec = SimpleNamespace(offset=0, key=b"workflow", value=b"{}", timestamp=1)
                return {tp: [rec]}
            raise asyncio.CancelledError  # end the test's endless follow

    @contextlib.asynccontextmanager
    async def fake_reader(settings: Any, *topics: str) -> AsyncIterator[FakeConsumer]:
        attempts.append(1)
        if len(attempts) == 1:
            raise BrokerError("topic 'care.config' has no partitions (does it exist?)")
        yield FakeConsumer()

    monkeypatch.setattr(bus, "reader", fake_reader)
    with pytest.raises(asyncio.CancelledError):
        await bus.follow(Settings(), "care.config", lambda r: seen.append(r.offset), retry_s=0)
    assert len(attempts) == 2 and seen == [0]


@pytest.mark.parametrize(
    "argv",
    [
        ["rules", "current"],
        ["rules", "publish", str(DEFAULT_CONFIG_DIR / "workflow.yaml")],
        ["rules", "replay", "--from", "2026-11-26T00:00"],
        ["kb", "publish"],
    ],
)
def test_broker_commands_with_the_broker_down_fail_cleanly(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.cli import main
    from pipeline.config import get_settings

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # nothing there
    get_settings.cache_clear()
    try:
        assert main(argv) == 1  # not a traceback
    finally:
        get_settings.cache_clear()
    assert "BrokerUnavailable" in caplog.text and "not reachable" in caplog.text


@pytest.mark.parametrize("argv", [["worker"], ["demo"], ["audit"]])
def test_bad_settings_are_one_clear_error_naming_each_variable(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.cli import main
    from pipeline.config import get_settings

    monkeypatch.setenv("PIPELINE_EVENT_LOOP", "tokio")
    monkeypatch.setenv("PIPELINE_PARTITIONS", "two")
    monkeypatch.setenv("PIPELINE_TWILIO_AUTH_TOKEN", "s3cret-token")  # valid: never echoed
    monkeypatch.setenv("PIPELINE_SMTP_PORT", "s3cret-port")
    get_settings.cache_clear()
    try:
        assert main(argv) == 1  # not a traceback
    finally:
        get_settings.cache_clear()
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    text = record.getMessage()
    assert text.startswith("ConfigError: invalid settings: ")
    for var in ("PIPELINE_EVENT_LOOP", "PIPELINE_PARTITIONS", "PIPELINE_SMTP_PORT"):
        assert var in text
    assert "'uvloop' or 'asyncio'" in text
    assert "s3cret" not in caplog.text and record.exc_info is None


def test_tune_gc_freezes_what_is_loaded_and_raises_the_young_threshold() -> None:
    model: list[int] = []  # stands for the loaded models: alive for good
    before = gc.get_threshold()
    assert any(o is model for o in gc.get_objects())
    try:
        runtime.tune_gc()
        assert not any(o is model for o in gc.get_objects())  # out of every collection
        assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_children_are_outside_the_terminals_process_group(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) reaches the supervisor alone, which
    stops its children: a child the same Ctrl-C stopped first looked like a crash to
    ``check_alive`` (the demo ended "console exited with code 0", exit 1)."""
    with runtime.children(tmp_path / "children.log") as group:
        proc = group.start("help", ["--help"], env=dict(os.environ))
        assert os.getpgid(proc.pid) != os.getpgrp()
        assert proc.wait(timeout=120) == 0


@pytest.mark.parametrize(("name", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_use_event_loop_sets_the_loop_of_new_loops(
    name: Literal["uvloop", "asyncio"], module: str
) -> None:
    try:
        runtime.use_event_loop(name)
        loop = asyncio.new_event_loop()
        try:
            assert type(loop).__module__.split(".")[0] == module
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(None)
