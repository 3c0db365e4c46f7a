"""``pipeline ingest`` (serve HTTP + SMTP adapters) and ``pipeline ingest eml PATH``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pipeline.broker import broker_for
from pipeline.bus import Publisher, ensure_topics
from pipeline.config import Settings, get_settings
from pipeline.ingest.eml import import_path
from pipeline.ingest.server import check_exposure, serve
from pipeline.ingest.service import IngestService

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ingest`` and ``ingest eml``."""
    parser = sub.add_parser(
        "ingest",
        help="serve the channel adapters (HTTP webhooks + SMTP); 'ingest eml PATH' imports mail",
        description="Without a sub-command: serve HTTP (/ingest, /webhooks/*) and SMTP.",
    )
    parser.add_argument("--http-port", type=int, default=None, help="override ingest_port")
    parser.add_argument("--smtp-port", type=int, default=None, help="override smtp_port")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen on a non-loopback address although an endpoint has no credentials "
        "(same as PIPELINE_INGEST_ALLOW_UNAUTHENTICATED=true)",
    )
    parser.set_defaults(handler=_serve)
    inner = parser.add_subparsers(dest="ingest_command", metavar="SUBCOMMAND")
    eml = inner.add_parser(
        "eml", help="import an .eml file, a directory of .eml files or an mbox file"
    )
    eml.add_argument("path", type=Path, help=".eml file, directory or mbox")
    eml.set_defaults(handler=_eml)


def _settings(args: argparse.Namespace) -> Settings:
    settings = get_settings()
    update: dict[str, int | bool] = {}
    if getattr(args, "allow_unauthenticated", False):
        update["ingest_allow_unauthenticated"] = True
    if getattr(args, "http_port", None) is not None:
        update["ingest_port"] = args.http_port
    if getattr(args, "smtp_port", None) is not None:
        update["smtp_port"] = args.smtp_port
    return settings.model_copy(update=update) if update else settings


def _serve(args: argparse.Namespace) -> int:
    check_exposure(_settings(args))  # before a broker is started for nothing
    with broker_for(_settings(args)) as settings:
        try:
            asyncio.run(serve(settings))
        except KeyboardInterrupt:
            log.info("ingest stopped")
    return 0


async def _import(settings: Settings, path: Path) -> tuple[int, int]:
    await ensure_topics(settings)
    publisher = Publisher(settings)
    try:
        service = IngestService(settings, publisher)
        await service.load_directory()
        return await import_path(service, path, sys.stdout)
    finally:
        await publisher.close()


def _eml(args: argparse.Namespace) -> int:
    with broker_for(_settings(args)) as settings:
        ok, bad = asyncio.run(_import(settings, args.path))
    log.info("imported %d message(s), rejected %d", ok, bad)
    return 0 if bad == 0 else 1
