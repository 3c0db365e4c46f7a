"""The ``pipeline`` command. Each domain registers its own sub-commands.

pipeline demo | worker | schemas | send | audit      (this module and pipeline.runtime)
pipeline ingest [eml PATH]                           (pipeline.ingest.cli)
pipeline model train|eval|predict                    (pipeline.classify.cli)
pipeline kb search|publish                           (pipeline.route.kb_cli)
pipeline rules check|explain|replay                  (pipeline.rules_cli)
pipeline tasks list|watch|show|ack|resolve|reject    (pipeline.tasks_cli)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import get_settings
from pipeline.errors import ConfigError, PipelineError
from pipeline.logs import LogFormat, setup_logging

log = logging.getLogger("pipeline")

Handler = Callable[[argparse.Namespace], int]

#: Modules that add sub-commands through ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.runtime_cli",
    "pipeline.ingest.cli",
    "pipeline.classify.cli",
    "pipeline.route.kb_cli",
    "pipeline.rules_cli",
    "pipeline.tasks_cli",
    "pipeline.console.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available domain's commands."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Customer-care message router: ingest → classify → route → notify on Kafka.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        register: Callable[[Any], None] = module.register
        register(sub)
    return parser


def _log_format() -> LogFormat:
    try:
        return get_settings().log_format
    except ConfigError:
        return "text"  # the command itself reports the bad setting


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipeline`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(_log_format(), verbose=args.verbose)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except PipelineError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
