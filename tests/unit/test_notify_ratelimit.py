"""Token buckets with a fake clock: no real time passes in these tests."""

from __future__ import annotations

import pytest

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.notify.ratelimit import RateLimiter, TokenBucket, rate_share


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_token_per_interval() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=2, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == 0.0
    # empty: the third caller waits half a second, the fourth a full second (queued)
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(1.0)
    clock.now += 1.0  # the two queued tokens are now paid for
    assert bucket.reserve() == pytest.approx(0.5)


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=3, clock=clock)
    clock.now += 3600
    waits = [bucket.reserve() for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(1.0)


def test_default_burst_is_one_second_of_rate() -> None:
    assert TokenBucket(25.0, clock=FakeClock()).burst == 25.0
    assert TokenBucket(0.5, clock=FakeClock()).burst == 1.0


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_bad_rate_rejected(rate: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, clock=FakeClock())


async def test_limiter_sleeps_per_transport_and_ignores_unknown() -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    limiter = RateLimiter({"twilio": 1.0, "telegram": 25.0}, clock=clock, sleep=sleep)
    for _ in range(3):
        await limiter.acquire("twilio")
    for _ in range(25):
        await limiter.acquire("telegram")
    await limiter.acquire("webhook-without-limit")
    assert slept == [pytest.approx(1.0), pytest.approx(1.0)]  # only twilio's 2nd and 3rd send


async def test_sustained_rate_matches_setting() -> None:
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    rates = Settings().delivery_rate_limits
    limiter = RateLimiter(rates, clock=clock, sleep=sleep)
    start = clock.now
    for _ in range(int(rates["telegram"]) * 10 + int(rates["telegram"])):
        await limiter.acquire("telegram")
    # 25 burst + 250 at 25/s = 10 s of fake time
    assert clock.now - start == pytest.approx(10.0)


def test_share_is_the_fraction_of_notify_partitions_held() -> None:
    topics = {"care.replies", "care.external"}
    held = [("care.replies", 0), ("care.external", 0), ("care.inbound", 0), ("care.inbound", 1)]
    assert rate_share(held, topics, 2) == 0.5
    assert rate_share([(t, p) for t in topics for p in (0, 1)], topics, 2) == 1.0
    assert rate_share([], topics, 2) == 0.25  # never zero: retries must still go out
    assert rate_share([("care.inbound", 0)], topics, 1) == 0.5


async def test_two_workers_with_half_each_send_at_the_configured_rate_together() -> None:
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    workers = [RateLimiter({"telegram": 20.0}, clock=clock, sleep=sleep) for _ in range(2)]
    for w in workers:
        w.set_share(0.5)
    start = clock.now
    for _ in range(10 + 100):  # burst of 10, then 100 at 10/s
        await workers[0].acquire("telegram")
    assert clock.now - start == pytest.approx(10.0)
    with pytest.raises(ConfigError):
        workers[1].set_share(0.0)
