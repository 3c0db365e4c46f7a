"""A console replica whose broker is down when it starts says so and exits non-zero, so its
supervisor (systemd, Kubernetes) restarts it; it never sits there serving an empty read model.
Its log lines are JSON when ``PIPELINE_LOG_FORMAT=json``, each one parsed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.broker import free_port
from pipeline.config import Settings
from pipeline.runtime import child_env

pytestmark = pytest.mark.integration


def test_a_console_without_its_broker_says_so_and_exits(
    broker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: the broker is down
    s = broker_settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{port}", "data_dir": tmp_path}
    )
    env = child_env(s, PIPELINE_LOG_FORMAT="json", PIPELINE_CONSOLE_PORT=str(free_port()))
    # The bound only turns a hang (the failure this test is about) into a failed test.
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "console"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    last = lines[-1]
    assert last["level"] == "ERROR" and last["logger"] == "pipeline", last
    assert last["message"].startswith("BrokerUnavailable: broker not reachable"), last
    assert str(port) in last["message"], "the address it tried is named"
    assert done.stdout == ""
