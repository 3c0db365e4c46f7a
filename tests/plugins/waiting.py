"""Waiting in tests: poll a condition up to a deadline; collect items until the source is quiet.

A deadline here is a failure bound (how long before the test gives up), never a timing
assertion: nothing fails for being slow as long as it happens before the deadline.

"Exactly once" cannot be shown by stopping at the expected count: a duplicate may come a moment
later. ``collect_until_quiet`` reads until the expected items are there AND no new item has
arrived for the settle period (``--settle-s``, default 2.5 s), and returns everything it saw,
so the caller's ``len(...) == n`` also sees a late duplicate.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest

T = TypeVar("T")

WaitUntil = Callable[..., Awaitable[Any]]
WaitUntilSync = Callable[..., Any]

#: Default settle period: how long a source must stay quiet before "nothing more" is believed.
SETTLE_S = 2.5


@dataclass(frozen=True)
class Batch(Generic[T]):
    """What one poll of a source gave: the new items, and whether it has read all there is."""

    items: Sequence[T]
    caught_up: bool = True


@dataclass(frozen=True)
class Patience:
    """How tests wait: the failure bound, the settle period, the poll interval."""

    timeout_s: float = 120.0
    settle_s: float = SETTLE_S
    poll_s: float = 0.2
    #: In-memory tier: nothing crosses a network or a process, so a short quiet period
    #: shows that the agent has nothing more to send.
    memory_settle_s: float = 0.5


async def collect_until_quiet(
    fetch: Callable[[], Awaitable[Batch[T]]],
    *,
    enough: Callable[[list[T]], bool],
    settle_s: float,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[T]:
    """Every item ``fetch`` yields until ``enough`` holds and nothing new came for ``settle_s``.

    ``fetch`` returns the items that arrived since its last call (waiting up to its own poll
    interval) and whether the source is caught up (has read all there was). Quiet is counted
    from the later of the last new item and the first time the source was caught up, so a
    duplicate still unread behind older records, or written just after the reader caught up,
    is not missed. At ``timeout_s`` it returns what it has: the caller's assertion says what
    was missing or extra.
    """
    seen: list[T] = []
    deadline = clock() + timeout_s
    last_new = clock()
    caught_up_at: float | None = None
    while True:
        batch = await fetch()
        now = clock()
        if batch.items:
            seen.extend(batch.items)
            last_new = now
        if batch.caught_up and caught_up_at is None:
            caught_up_at = now
        if enough(seen):
            if settle_s <= 0:
                return seen  # "at least": returned as soon as there are enough
            if caught_up_at is not None and now - max(last_new, caught_up_at) >= settle_s:
                return seen
        if now >= deadline:
            return seen


async def poll(
    condition: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
) -> T:
    """The first truthy value of ``condition()`` (plain or awaitable).

    AssertionError naming ``what`` if there is none by the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {value!r})")
        await asyncio.sleep(interval_s)


def poll_sync(
    condition: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.2
) -> T:
    """``poll`` for synchronous tests."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {value!r})")
        time.sleep(interval_s)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--settle-s",
        type=float,
        default=SETTLE_S,
        help="seconds a topic or the outbox must stay quiet before a test believes that "
        f"nothing more arrives (exactly-once assertions; default {SETTLE_S})",
    )


@pytest.fixture(scope="session")
def patience(pytestconfig: pytest.Config) -> Patience:
    """The suite's waiting settings (settle period from ``--settle-s``)."""
    return Patience(settle_s=float(pytestconfig.getoption("--settle-s")))


@dataclass(frozen=True)
class Quiet:
    """Waits for a count that has reached what is expected and then stays put."""

    patience: Patience

    async def count(
        self, current: Callable[[], int], enough: int = 0, settle_s: float | None = None
    ) -> int:
        """``current()`` once it is at least ``enough`` and unchanged for the settle period."""
        last = 0

        async def fetch() -> Batch[int]:
            nonlocal last
            await asyncio.sleep(self.patience.poll_s / 4)
            now, before = current(), last
            last = now
            return Batch([now] if now != before else [])

        await collect_until_quiet(
            fetch,
            enough=lambda _: current() >= enough,
            settle_s=self.patience.settle_s if settle_s is None else settle_s,
            timeout_s=self.patience.timeout_s,
        )
        return current()


@pytest.fixture(scope="session")
def until_quiet() -> Callable[..., Awaitable[list[Any]]]:
    """``collect_until_quiet`` itself, for the tests of this plugin."""
    return collect_until_quiet


@pytest.fixture(scope="session")
def quiet(patience: Patience) -> Quiet:
    """``await quiet.count(current, enough)``: an in-memory count once it has settled."""
    return Quiet(patience)


@pytest.fixture(scope="session")
def wait_until() -> WaitUntil:
    """``await wait_until(condition, timeout_s=, what=, interval_s=0.2)``: see ``poll``."""
    return poll


@pytest.fixture(scope="session")
def wait_until_sync() -> WaitUntilSync:
    """``wait_until_sync(condition, timeout_s=, what=, interval_s=0.2)``: see ``poll_sync``."""
    return poll_sync
