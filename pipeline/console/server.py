"""Run the console: follow the topics into a fresh read model and serve the pages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from aiohttp import web

from pipeline import bus
from pipeline.broker import MissedProbes, brokers_answer
from pipeline.config import Settings
from pipeline.console.auth import DEMO_USERS, load_users, users_json
from pipeline.console.follower import follow
from pipeline.console.store import Store
from pipeline.console.web import Console, build_app
from pipeline.domain.workflow import load_workflow

__all__ = ["console_env", "db_path", "run_console", "serve", "watch_broker"]

log = logging.getLogger(__name__)


def db_path(settings: Settings) -> Path:
    """Where this replica keeps its read model (one file per app id and port)."""
    if settings.console_db_path is not None:
        return settings.console_db_path
    return settings.data_dir / "console" / f"{settings.app_id}-{settings.console_port}.sqlite"


def console_env(settings: Settings, url: str) -> dict[str, str]:
    """Environment of a demo or test stack's processes for the console: its port, the URL
    the worker's e-mails link to, and the demo logins (``DEMO_USERS``)."""
    return {
        "PIPELINE_CONSOLE_HOST": settings.console_host,
        "PIPELINE_CONSOLE_PORT": str(settings.console_port),
        "PIPELINE_CONSOLE_PUBLIC_URL": url,
        "PIPELINE_CONSOLE_USERS": users_json(DEMO_USERS),
    }


def _fresh_store(path: Path) -> Store:
    """A new, empty read model: the projection is rebuilt from the topics at every start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Store(path)


async def watch_broker(settings: Settings, console: Console) -> None:
    """Ask the broker every ``lag_interval_s``, as the worker's lag timer does, with the same
    rule (``MissedProbes``: two misses in a row make ``/healthz`` 503 until it answers
    again). The follower alone would not tell: its consumer retries a dead broker quietly,
    returning empty batches."""
    servers = settings.kafka_bootstrap_servers or ""
    misses = MissedProbes()
    while True:
        await asyncio.sleep(settings.lag_interval_s)
        if await brokers_answer(servers, settings.request_timeout_s):
            misses.answered()
            console.broker = None
            continue
        unhealthy = misses.missed()
        log.warning("console: no broker answers at %s (%d in a row)", servers, misses.in_a_row)
        if unhealthy:
            console.broker = f"no broker answers at {servers}"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    departments = load_workflow(settings.rules_path).task_departments()
    await bus.ensure_topics(settings, departments=departments)
    users = load_users(settings)
    if not users:
        log.warning(
            "no console users configured (PIPELINE_CONSOLE_USERS[_PATH]): nobody can log in"
        )
    secret = settings.console_session_secret
    store = _fresh_store(db_path(settings))
    console = Console(settings=settings, store=store, users=users, departments=departments)
    if secret is not None:
        console.secret = secret.get_secret_value().encode("utf-8")
    follower = asyncio.create_task(follow(settings, store, departments, console.ready))
    watch = asyncio.create_task(watch_broker(settings, console))
    runner = web.AppRunner(build_app(console), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.console_host, settings.console_port)
    await site.start()
    log.info("console: http://%s:%d/", settings.console_host, settings.console_port)
    try:
        await stop.wait()
    finally:
        for task in (follower, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        if console.publisher is not None:
            await console.publisher.close()
        store.close()


def run_console(settings: Settings) -> int:
    """``pipeline console``: serve until SIGTERM/SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
    return 0
