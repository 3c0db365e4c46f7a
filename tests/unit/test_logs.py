"""PIPELINE_LOG_FORMAT=json: one JSON object per line, for log shippers; text otherwise."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.logs import HANDLER_NAME, JsonFormatter, setup_logging


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's handlers (pytest adds them for each test's call
    phase, so this runs inside the test), restored afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = []
    try:
        yield root
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved
        root.setLevel(level)


def test_json_lines_carry_level_logger_message_extras_and_the_traceback() -> None:
    stream = io.StringIO()
    with bare_root():
        setup_logging("json", stream=stream)
        log = logging.getLogger("pipeline.test")
        log.info("consumed %s[%d]@%d", "care.inbound", 1, 42, extra={"stage": "classify"})
        try:
            raise ValueError("плохая запись\nвторая строка")
        except ValueError:
            log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # a multi-line traceback stays inside one JSON line
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "consumed care.inbound[1]@42"
    assert first["level"] == "INFO" and first["logger"] == "pipeline.test"
    assert first["stage"] == "classify" and first["pid"] == os.getpid()
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ValueError: плохая запись" in second["exception"]


def test_text_format_and_a_second_setup_replaces_the_first(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = tmp_path / "logs" / "demo.log"
    with bare_root() as root:
        setup_logging("text", stream=stream)
        setup_logging("text", path=path)
        logging.getLogger("x").warning("to the file")
        assert [h.get_name() for h in root.handlers] == [HANDLER_NAME]
    assert stream.getvalue() == ""
    assert "WARNING x: to the file" in path.read_text()


def test_a_host_that_configured_logging_keeps_it() -> None:
    # pytest's own capture handlers are on the root logger here
    assert logging.getLogger().handlers
    assert setup_logging("json") is None
    assert not any(h.get_name() == HANDLER_NAME for h in logging.getLogger().handlers)


def test_formatter_survives_values_json_cannot_hold() -> None:
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "m", None, None)
    record.path = Path("/tmp/x")
    record.obj = object()
    doc = json.loads(JsonFormatter().format(record))
    assert doc["path"] == "/tmp/x" and doc["obj"].startswith("<object")


def test_the_command_logs_json_lines_when_asked() -> None:
    env = dict(os.environ, PIPELINE_LOG_FORMAT="json", KAFKA_BOOTSTRAP_SERVERS="")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "tasks", "show", "sr_nothing"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines and lines[-1]["level"] == "ERROR" and "BrokerError" in lines[-1]["message"]
