"""Retry policy of the Deliverer with a fake sleep and rng, and channel target resolution."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from pipeline.config import Settings
from pipeline.errors import DeliveryError
from pipeline.events import Channel, Reply, ReplyKind
from pipeline.metrics import Metrics
from pipeline.notify import channels, delivery
from pipeline.notify.channels import (
    Target,
    message_text,
    reply_parts,
    resolve_target,
    split_text,
)
from pipeline.notify.delivery import Deliverer, backoff_delay, retry_delay
from pipeline.notify.ratelimit import RateLimiter

if TYPE_CHECKING:
    from tests.plugins.events import MakeSubRequest
    from tests.plugins.tables import StoredTable

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class MaxRng(random.Random):
    """uniform() returns its upper bound and records the bounds it was asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def settings(**update: Any) -> Settings:
    base: dict[str, Any] = {
        "delivery_max_attempts": 5,
        "delivery_backoff_s": 0.5,
        "delivery_backoff_max_s": 3.0,
        "delivery_rate_limits": {},
    }
    base.update(update)
    return Settings(**base)


def make_reply(channel: Channel, reply_to: dict[str, str], **update: Any) -> Reply:
    base: dict[str, Any] = {
        "reply_id": "rep_1",
        "message_id": "msg_1",
        "customer_id": "c1",
        "channel": channel,
        "reply_to": reply_to,
        "language": "ru",
        "kind": ReplyKind.resolution,
        "text": "Готово",
        "created_at": NOW,
    }
    base.update(update)
    return Reply(**base)


class ScriptedSend:
    """Stands in for channels.send_email: raises the scripted errors, then succeeds."""

    def __init__(self, errors: list[DeliveryError]) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, _settings: Settings, _message: EmailMessage) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "<id@x>"


def deliverer(s: Settings, sleeps: Sleeps, rng: random.Random) -> Deliverer:
    return Deliverer(s, session=None, sleep=sleeps, rng=rng, now=lambda: NOW)  # type: ignore[arg-type]


# ---------------------------------------------------------------- pure schedule


def test_backoff_is_full_jitter_over_capped_exponential() -> None:
    rng = MaxRng()
    delays = [backoff_delay(a, 0.5, 3.0, rng) for a in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert all(lo == 0.0 for lo, _ in rng.bounds)


def test_backoff_with_real_rng_stays_in_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(1, 10):
        assert 0.0 <= backoff_delay(attempt, 0.5, 3.0, rng) <= min(3.0, 0.5 * 2 ** (attempt - 1))


def test_retry_delay_policy() -> None:
    s, rng = settings(), MaxRng()
    transient, permanent = DeliveryError("x"), DeliveryError("x", transient=False)
    assert retry_delay(permanent, 1, s, rng) is None
    assert retry_delay(transient, 5, s, rng) is None  # last attempt
    assert retry_delay(transient, 1, s, rng) == 0.5
    assert retry_delay(DeliveryError("x", retry_after=2.5), 1, s, rng) == 2.5  # longer: honoured
    assert retry_delay(DeliveryError("x", retry_after=0.1), 3, s, rng) == 2.0  # shorter: backoff
    assert retry_delay(DeliveryError("x", retry_after=60), 1, s, rng) is None  # too long: fail now


# ---------------------------------------------------------------- Deliverer


async def test_transient_failures_retried_then_delivered(
    monkeypatch: pytest.MonkeyPatch,
    make_sub_request: MakeSubRequest,
) -> None:
    send = ScriptedSend([DeliveryError("500", status=500), DeliveryError("429", status=429)])
    monkeypatch.setattr(delivery, "send_email", send)
    sleeps, rng = Sleeps(), MaxRng()
    receipt = await deliverer(settings(), sleeps, rng).deliver_external(
        make_sub_request(sub_request_id="sr_1"), EmailMessage()
    )
    assert receipt.status == "delivered" and receipt.attempts == 3 and receipt.error is None
    assert receipt.delivery_id == "sr_1" and receipt.channel == "email" and receipt.at == NOW
    assert sleeps.delays == [0.5, 1.0]
    assert send.calls == 3


async def test_gives_up_after_max_attempts(
    monkeypatch: pytest.MonkeyPatch,
    make_sub_request: MakeSubRequest,
) -> None:
    send = ScriptedSend([DeliveryError(f"down {i}", status=503) for i in range(10)])
    monkeypatch.setattr(delivery, "send_email", send)
    sleeps = Sleeps()
    receipt = await deliverer(settings(delivery_max_attempts=4), sleeps, MaxRng()).deliver_external(
        make_sub_request(), EmailMessage()
    )
    assert receipt.status == "failed" and receipt.attempts == 4 == send.calls
    assert receipt.error == "transient: down 3"
    assert sleeps.delays == [0.5, 1.0, 2.0]


async def test_permanent_failure_not_retried(
    monkeypatch: pytest.MonkeyPatch,
    make_sub_request: MakeSubRequest,
) -> None:
    send = ScriptedSend([DeliveryError("550 no such user", status=550, transient=False)])
    monkeypatch.setattr(delivery, "send_email", send)
    sleeps = Sleeps()
    receipt = await deliverer(settings(), sleeps, MaxRng()).deliver_external(
        make_sub_request(), EmailMessage()
    )
    assert receipt.status == "failed" and receipt.attempts == 1 == send.calls
    assert receipt.error is not None and receipt.error.startswith("permanent: 550")
    assert sleeps.delays == []


async def test_retry_after_is_honoured(
    monkeypatch: pytest.MonkeyPatch,
    make_sub_request: MakeSubRequest,
) -> None:
    send = ScriptedSend([DeliveryError("slow down", status=429, retry_after=2.75)])
    monkeypatch.setattr(delivery, "send_email", send)
    sleeps = Sleeps()
    receipt = await deliverer(settings(), sleeps, MaxRng()).deliver_external(
        make_sub_request(), EmailMessage()
    )
    assert receipt.status == "delivered" and sleeps.delays == [2.75]


async def test_rate_limiter_consulted_before_each_attempt(
    monkeypatch: pytest.MonkeyPatch,
    make_sub_request: MakeSubRequest,
) -> None:
    send = ScriptedSend([DeliveryError("500")])
    monkeypatch.setattr(delivery, "send_email", send)
    seen: list[str] = []

    class RecordingLimiter(RateLimiter):
        async def acquire(self, transport: str) -> float:
            seen.append(transport)
            return 0.0

    d = Deliverer(
        settings(),
        None,  # type: ignore[arg-type]
        sleep=Sleeps(),
        rng=MaxRng(),
        limiter=RecordingLimiter({}),
    )
    await d.deliver_external(make_sub_request(), EmailMessage())
    assert seen == ["email", "email"]


async def test_reply_without_address_fails_without_attempt() -> None:
    sleeps = Sleeps()
    receipt = await deliverer(settings(), sleeps, MaxRng()).deliver_reply(
        make_reply(Channel.telegram, {})
    )
    assert receipt.status == "failed" and receipt.attempts == 0
    assert receipt.error is not None and "chat_id" in receipt.error


async def test_reply_dispatch_uses_resolved_target(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Target] = []

    async def fake_send_reply(_session: Any, _s: Settings, _r: Reply, *, target: Target) -> str:
        seen.append(target)
        return "42"

    monkeypatch.setattr(delivery, "send_reply", fake_send_reply)
    receipt = await deliverer(settings(), Sleeps(), MaxRng()).deliver_reply(
        make_reply(Channel.sms, {"phone": "+79161234567"})
    )
    assert receipt.status == "delivered" and receipt.channel == "sms"
    assert seen == [Target("twilio", "+79161234567")]


# ---------------------------------------------------------------- channel resolution


@pytest.mark.parametrize(
    ("channel", "reply_to", "expected"),
    [
        (
            Channel.telegram,
            {"chat_id": "-100123", "message_id": "7"},
            Target("telegram", "-100123"),
        ),
        (Channel.chatwoot, {"conversation_id": "55"}, Target("chatwoot", "55")),
        (Channel.sms, {"from": "+79161234567"}, Target("twilio", "+79161234567")),
        (Channel.voice, {"phone": "+79161234567"}, Target("twilio", "+79161234567")),
        (Channel.email, {"address": "a@b.ru"}, Target("email", "a@b.ru")),
        (Channel.webform, {"email": "a@b.ru"}, Target("email", "a@b.ru")),
    ],
)
def test_resolve_target(channel: Channel, reply_to: dict[str, str], expected: Target) -> None:
    assert resolve_target(make_reply(channel, reply_to), settings()) == expected


def test_webhook_channels_need_configured_url() -> None:
    reply = make_reply(Channel.webchat, {"session": "s1"})
    with pytest.raises(DeliveryError) as info:
        resolve_target(reply, settings())
    assert info.value.transient is False
    s = settings(outbound_webhook_url="http://127.0.0.1:9/hook")
    assert resolve_target(reply, s) == Target("webhook", "http://127.0.0.1:9/hook")


def test_message_text_appends_the_link_once() -> None:
    reply = make_reply(Channel.telegram, {}, text="Ответ", link="https://kb/1")
    assert message_text(reply) == "Ответ\nhttps://kb/1"
    assert (
        message_text(make_reply(Channel.telegram, {}, text="see https://kb/1", link="https://kb/1"))
        == "see https://kb/1"
    )


PARAGRAPH = "Мы проверили ваш заказ. Курьер приедет завтра с 10 до 14 часов! Спасибо за терпение."


def test_split_text_cuts_at_the_best_break_and_loses_nothing() -> None:
    text = "\n\n".join([PARAGRAPH] * 40)
    parts = split_text(text, 1600)
    assert len(parts) > 1 and all(0 < len(p) <= 1600 for p in parts)
    assert all(p.endswith("терпение.") for p in parts)  # whole paragraphs
    assert "\n\n".join(parts) == text
    words = " ".join(["слово"] * 1000)
    parts = split_text(words, 100)
    assert all(p.startswith("слово") and p.endswith("слово") for p in parts)
    assert " ".join(parts) == words
    assert split_text("я" * 250, 100) == ["я" * 100, "я" * 100, "я" * 50]  # no break at all
    assert split_text("", 10) == [""] and split_text("short", 10) == ["short"]


@given(st.text(max_size=3000), st.integers(min_value=1, max_value=500))
def test_split_text_parts_fit_and_keep_every_non_space_character(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(len(p) <= limit for p in parts)
    if len(text) <= limit:
        assert parts == [text]
    else:
        assert parts == [""] or all(p.strip() for p in parts)  # no blank message
    assert "".join("".join(parts).split()) == "".join(text.split())


def test_reply_parts_follow_the_platform_limit() -> None:
    long = make_reply(Channel.telegram, {}, text="\n".join([PARAGRAPH] * 100))
    assert [len(p) <= channels.TELEGRAM_MAX_CHARS for p in reply_parts(long, "telegram")] == [
        True,
        True,
        True,
    ]
    assert len(reply_parts(long, "twilio")) == 6
    assert reply_parts(long, "chatwoot") == [message_text(long)]


async def test_a_long_reply_goes_out_in_parts_and_resumes_after_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[str] = []
    fail_at: set[int] = set()

    async def fake_send_reply(
        _session: Any, _s: Settings, _r: Reply, *, target: Target, text: str | None = None
    ) -> str:
        if len(sent) in fail_at:
            raise DeliveryError("bad request", status=400, transient=False)
        sent.append(text or "")
        return str(len(sent))

    monkeypatch.setattr(delivery, "send_reply", fake_send_reply)
    reply = make_reply(Channel.sms, {"phone": "+79161234567"}, text="\n".join([PARAGRAPH] * 60))
    parts = reply_parts(reply, "twilio")
    assert len(parts) == 4
    remembered: list[str] = []

    async def remember(part_id: str) -> None:
        remembered.append(part_id)

    receipt = await deliverer(settings(), Sleeps(), MaxRng()).deliver_reply(reply, on_part=remember)
    assert receipt.status == "delivered" and receipt.delivery_id == reply.reply_id
    assert sent == parts and receipt.attempts == 4
    assert remembered == [f"{reply.reply_id}#{n}" for n in (1, 2, 3, 4)]

    # A replay after a crash that came after part 2: only parts 3 and 4 go out again.
    sent.clear()
    receipt = await deliverer(settings(), Sleeps(), MaxRng()).deliver_reply(
        reply, sent_parts=remembered[:2]
    )
    assert receipt.status == "delivered" and sent == parts[2:]

    # A part the platform refuses ends the delivery; the parts after it are not sent.
    sent.clear()
    fail_at.add(1)
    receipt = await deliverer(settings(), Sleeps(), MaxRng()).deliver_reply(reply)
    assert receipt.status == "failed" and sent == parts[:1]
    assert receipt.error is not None and receipt.error.startswith("part 2 of 4:")
    assert receipt.delivery_id == reply.reply_id


def test_retry_after_parsing() -> None:
    assert channels._retry_after(CIMultiDict({"Retry-After": "7"}), None) == 7.0
    assert (
        channels._retry_after(CIMultiDict(), {"ok": False, "parameters": {"retry_after": 3}}) == 3.0
    )
    assert channels._retry_after(CIMultiDict({"Retry-After": "soon"}), None) is None
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert channels._retry_after(CIMultiDict({"Retry-After": past}), None) == 0.0
    assert channels._retry_after(CIMultiDict(), None) is None


async def test_delivered_ids_keep_a_timestamp_and_idle_keys_are_swept() -> None:
    import orjson

    from pipeline.notify.agents import _delivered, _marked, sweep_delivered

    table: dict[str, str] = {"legacy": orjson.dumps(["reply_old"]).decode()}
    assert _delivered(table, "legacy") == ["reply_old"]  # the format before timestamps

    def remember(key: str, delivery_id: str, now: float) -> None:
        table[key] = _marked([*_delivered(table, key), delivery_id], now)

    remember("cust-1", "reply_1", now=1_000.0)
    remember("cust-1", "reply_1#2", now=2_000.0)
    remember("cust-2", "reply_2", now=5_000.0)
    remember("legacy", "reply_new", now=5_000.0)  # rewritten with a timestamp
    assert _delivered(table, "cust-1") == ["reply_1", "reply_1#2"]
    assert _delivered(table, "legacy") == ["reply_old", "reply_new"]
    assert await sweep_delivered(table, cutoff_s=3_000.0) == 1
    assert set(table) == {"cust-2", "legacy"}


async def test_the_delivered_ids_sweep_forgets_unreadable_values_and_goes_on(
    stored_table: Callable[..., StoredTable], unreadable: Callable[[Metrics, str], float]
) -> None:
    """Not JSON, a timestamp that is no number, neither shape: forgotten and counted; the
    other keys swept as usual. Before, the first raised in the sweep's timer (a dead worker)."""
    import orjson

    from pipeline.notify.agents import sweep_delivered

    def marks(at: object, *ids: str) -> str:
        return orjson.dumps({"at": at, "ids": list(ids)}).decode()

    table = stored_table(
        "delivered-replies",
        {
            "not-json": '{"at": 5000, "ids": ["reply_',
            "idle": marks(1_000.0, "reply_1"),
            "at-text": marks("yesterday", "reply_2"),
            "at-null": marks(None, "reply_3"),
            "fresh": marks(5_000.0, "reply_4"),
            "a-number": "7",
            "legacy": orjson.dumps(["reply_old"]).decode(),
            "empty": "[]",
        },
    )
    metrics = Metrics()
    assert await sweep_delivered(table, 3_000.0, metrics) == 6
    assert set(table) == {"fresh", "legacy"}
    assert unreadable(metrics, "delivered-replies") == 4
