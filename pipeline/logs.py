"""Logging for every process: readable lines, or one JSON object per line for log shippers
(``PIPELINE_LOG_FORMAT=json``), on stderr or in a file (the demo's log).

Only handlers installed here are ever replaced, so a host that configured logging itself
(a test runner, an embedding application) keeps its own.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LogFormat", "setup_logging"]

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "pipeline"

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, pid, exception, extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        return orjson.dumps(doc, default=str).decode("utf-8")


def setup_logging(
    log_format: LogFormat = "text",
    *,
    verbose: bool = False,
    stream: IO[str] | None = None,
    path: Path | None = None,
) -> logging.Handler | None:
    """Send the root logger's records to ``path`` (appended) or ``stream`` (default stderr).

    Replaces a handler installed by an earlier call; does nothing when the root logger has
    handlers of someone else's (returns None then).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    if root.handlers and not ours:
        return None
    for old in ours:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
