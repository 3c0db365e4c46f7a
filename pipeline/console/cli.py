"""Sub-commands: ``pipeline console`` (serve) and ``pipeline console hash-password``."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from pipeline.config import get_settings


def register(sub: Any) -> None:
    """Add the console command."""
    p = sub.add_parser(
        "console",
        help="the operator console in the browser (cases, queues, quality, rule playground)",
        description="Follow the router's topics into a SQLite read model and serve the web "
        "console on PIPELINE_CONSOLE_HOST:PIPELINE_CONSOLE_PORT. Needs KAFKA_BOOTSTRAP_SERVERS.",
    )
    p.add_argument("--port", type=int, help="override PIPELINE_CONSOLE_PORT")
    p.set_defaults(handler=_serve)
    how = p.add_subparsers(dest="console_command", metavar="COMMAND")
    h = how.add_parser(
        "hash-password",
        help="print the scrypt hash of a password for PIPELINE_CONSOLE_USERS",
        description="Reads the password from standard input (one line) or prompts for it.",
    )
    h.set_defaults(handler=_hash)


def _serve(args: argparse.Namespace) -> int:
    from pipeline.console.server import run_console

    settings = get_settings()
    if args.port is not None:
        settings = settings.model_copy(update={"console_port": args.port})
    return run_console(settings)


def _hash(_: argparse.Namespace) -> int:
    from pipeline.console.auth import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\n")
    if not password:
        sys.stderr.write("empty password\n")
        return 2
    sys.stdout.write(hash_password(password) + "\n")
    return 0
