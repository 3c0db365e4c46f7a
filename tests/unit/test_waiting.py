"""The settle helper catches a duplicate that comes after the expected records (fake clock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.plugins.waiting import Quiet

UntilQuiet = Callable[..., Awaitable[list[Any]]]


@dataclass(frozen=True)
class Polled:
    """One poll's result, shaped like the plugin's ``Batch``."""

    items: list[str]
    caught_up: bool


@dataclass
class Source:
    """Items that arrive at given (fake) times; each poll advances the clock by ``step``."""

    arrivals: list[tuple[float, str]]
    behind_until: float = 0.0  # the reader is not at the end of the source before this time
    step: float = 0.1
    now: float = 0.0
    polls: int = 0
    _given: int = field(default=0)

    def clock(self) -> float:
        return self.now

    async def fetch(self) -> Polled:
        self.polls += 1
        self.now = round(self.now + self.step, 6)
        due = [item for at, item in self.arrivals if at <= self.now]
        new, self._given = due[self._given :], len(due)
        return Polled(new, caught_up=self.now >= self.behind_until)


async def _collect(until_quiet: UntilQuiet, src: Source, **kw: Any) -> list[str]:
    return await until_quiet(src.fetch, clock=src.clock, **kw)


async def test_a_late_duplicate_within_the_settle_period_is_returned(
    until_quiet: UntilQuiet,
) -> None:
    arrivals = [(0.3, "outcome-1"), (1.5, "outcome-1")]  # the copy comes 1.2 s later
    at_least = await _collect(
        until_quiet, Source(arrivals), enough=lambda s: len(s) >= 1, settle_s=0, timeout_s=60
    )
    assert at_least == ["outcome-1"]  # stopping at the expected count misses the copy
    settled = await _collect(
        until_quiet, Source(arrivals), enough=lambda s: len(s) >= 1, settle_s=2.0, timeout_s=60
    )
    assert settled == ["outcome-1", "outcome-1"]


async def test_it_returns_once_quiet_for_the_settle_period_not_at_the_deadline(
    until_quiet: UntilQuiet,
) -> None:
    src = Source([(0.2, "a"), (0.4, "b")])
    seen = await _collect(
        until_quiet, src, enough=lambda s: len(s) >= 2, settle_s=2.0, timeout_s=60
    )
    assert seen == ["a", "b"]
    assert 2.4 <= src.now < 2.6  # the last item plus the settle period, far from the deadline


async def test_quiet_counts_only_while_the_reader_is_caught_up(until_quiet: UntilQuiet) -> None:
    # The reader is still reading older records until t=5: no new match meanwhile is not
    # "quiet", and the duplicate it then reaches is still in the result.
    src = Source([(0.1, "x"), (5.0, "x")], behind_until=5.0)
    seen = await _collect(
        until_quiet, src, enough=lambda s: len(s) >= 1, settle_s=2.0, timeout_s=60
    )
    assert seen == ["x", "x"]


async def test_quiet_starts_when_the_reader_has_caught_up(until_quiet: UntilQuiet) -> None:
    # Nothing new while the reader works through older records until t=3; a copy written at
    # t=4, within the settle period after catching up, is still seen.
    src = Source([(0.1, "x"), (4.0, "x")], behind_until=3.0)
    seen = await _collect(
        until_quiet, src, enough=lambda s: len(s) >= 1, settle_s=2.0, timeout_s=60
    )
    assert seen == ["x", "x"]


async def test_at_the_deadline_it_returns_what_it_has(until_quiet: UntilQuiet) -> None:
    src = Source([(0.1, "only-one")])
    seen = await _collect(
        until_quiet, src, enough=lambda s: len(s) >= 2, settle_s=1.0, timeout_s=3.0
    )
    assert seen == ["only-one"]
    assert 3.0 <= src.now < 3.2


async def test_quiet_count_waits_for_a_late_increment(quiet: Quiet) -> None:
    ticks = {"n": 0}

    def current() -> int:  # one record at once, a second one after ~0.3 s of polling
        ticks["n"] += 1
        return 1 if ticks["n"] < 6 else 2

    assert await quiet.count(current, enough=1, settle_s=0.5) == 2
