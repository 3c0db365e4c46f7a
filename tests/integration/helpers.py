"""Reading records back from the real topics in integration tests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline import bus
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.errors import DecodeError
from pipeline.events import Event

E = TypeVar("E", bound=Event)


async def wait_for(
    settings: Settings,
    topic: str,
    model: type[E],
    predicate: Callable[[E], bool],
    count: int,
    timeout_s: float = 120.0,
) -> list[E]:
    """Read ``topic`` from the beginning until ``count`` events match ``predicate``."""
    found: list[E] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with bus.reader(settings, topic) as consumer:
        while loop.time() < deadline and len(found) < count:
            batch = await consumer.getmany(timeout_ms=300)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        ev = decode(model, m.value)
                    except DecodeError:
                        continue
                    if predicate(ev):
                        found.append(ev)
    return found


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON; returns (status, parsed body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


def get_text(url: str) -> tuple[int, str]:
    """GET a URL; returns (status, body text)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()
