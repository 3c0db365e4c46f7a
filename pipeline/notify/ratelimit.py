"""Per-transport token buckets so delivery stays under the platforms' send limits.

Rates come from ``Settings.delivery_rate_limits`` (sends per second per transport:
``telegram``, ``chatwoot``, ``twilio``, ``email``, ``webhook``). Defaults follow the
platforms' documented limits: the Telegram Bot API allows about 30 messages/s per bot
(25 leaves headroom), a Twilio long-code number sends 1 segment/s. A transport without
a rate is not limited. The clock and sleep are injected so tests need no real time.

A bucket reserves a token at once and returns how long the caller must wait for it, so
concurrent callers queue fairly in arrival order (tokens may go negative = queue depth).

The limits are the platforms' limits for the whole deployment. With several workers, each
worker runs its ``share`` of them: the fraction of the notify topics' partitions it holds
(set again at every rebalance), so together they stay under the platform's limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

from pipeline.errors import ConfigError

__all__ = ["RateLimiter", "TokenBucket", "rate_share"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic):
        if rate <= 0:
            raise ConfigError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = max(1.0, rate) if burst is None else burst
        if self.burst < 1:
            raise ConfigError(f"burst must be at least 1, got {self.burst}")
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before using it (0 if available now)."""
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    @property
    def tokens(self) -> float:
        """Tokens left at the last reservation (negative = callers queued)."""
        return self._tokens


class RateLimiter:
    """One token bucket per transport name."""

    def __init__(
        self,
        rates: Mapping[str, float],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._rates = dict(rates)
        self._buckets = {name: TokenBucket(rate, clock=clock) for name, rate in rates.items()}
        self._sleep = sleep
        self.share = 1.0

    def set_share(self, share: float) -> None:
        """Run ``share`` (0 < share <= 1) of the configured rates: this worker's part of them."""
        if not 0 < share <= 1:
            raise ConfigError(f"share must be in (0, 1], got {share}")
        self.share = share
        for name, bucket in self._buckets.items():
            bucket.rate = self._rates[name] * share
            bucket.burst = max(1.0, bucket.rate)

    def reserve(self, transport: str) -> float:
        """Reserve a send on ``transport``; seconds to wait first (0 when unlimited)."""
        bucket = self._buckets.get(transport)
        return 0.0 if bucket is None else bucket.reserve()

    async def acquire(self, transport: str) -> float:
        """Wait until a send on ``transport`` is allowed; return the time waited."""
        delay = self.reserve(transport)
        if delay > 0:
            await self._sleep(delay)
        return delay


def rate_share(
    assigned: Iterable[tuple[str, int]], topics: Collection[str], partitions: int
) -> float:
    """A worker's share of the limits: the fraction of ``topics``' partitions it holds.

    At least one partition's worth, so retries of a worker that just lost its partitions
    still go out.
    """
    held = sum(1 for topic, _ in set(assigned) if topic in topics)
    total = max(1, len(topics) * partitions)
    return min(1.0, max(held, 1) / total)
