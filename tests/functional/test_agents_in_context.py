"""The real Faust agents in ``test_context``: records in, outputs captured in memory (no Kafka).

The agents run with their real tables (memory store); what they send goes to an in-memory
publisher in place of the aiokafka one (``Context.publisher``, the seam). Faust's producer is
never started, so the one thing patched is its key → partition lookup for table changelogs.
The chain is the seed scenario: classify → route → the case keeper → the combined answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from faust.types import TP, Message

from pipeline.app import create_app
from pipeline.bus import partition_for
from pipeline.classify import dedup
from pipeline.codec import decode, encode
from pipeline.config import Settings
from pipeline.context import AckBehind, Context
from pipeline.domain.cases import CaseState
from pipeline.errors import BrokerUnavailable
from pipeline.events import (
    CaseEvents,
    CaseEventType,
    CaseSnapshot,
    ClassifiedMessage,
    DeadLetter,
    Event,
    InboundMessage,
    IncidentLink,
    IncidentSignal,
    Outcome,
    OutcomeKind,
    Reply,
    ReplyKind,
    Similarity,
    SubRequest,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.metrics import Metrics
from pipeline.route import agents, sla
from pipeline.route.agents import CaseKeeper
from pipeline.route.core import route_message
from pipeline.stage import RawRecord

if TYPE_CHECKING:
    from tests.plugins.inbound import TelegramInbound
    from tests.plugins.route import RouteKit
    from tests.plugins.waiting import Patience, Quiet

SEED = (
    "Добрый день. В магазине на Садовой, 12 продают несвежие огурцы. "
    "А ещё на кассе не списались бонусы с карты лояльности."
)


@dataclass
class MemoryPublisher:
    """Stands in for ``bus.Publisher``: every record is kept, every ack is immediate."""

    records: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    lost: str | None = None  # a broker that never loses what it acknowledged

    async def enqueue(self, topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        self.records.append((topic, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def close(self) -> None:
        return None

    def take(self, topic: str, model: type[Any]) -> list[Any]:
        """Decode and remove the records sent to ``topic``."""
        mine = [r for r in self.records if r[0] == topic]
        self.records = [r for r in self.records if r[0] != topic]
        return [decode(model, value) for _, _, value in mine]


@pytest.fixture
async def ctx(tmp_path: Any) -> AsyncIterator[Context]:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",  # never contacted
        topic_prefix="tc.",
        app_id="test-context",
        data_dir=Settings().data_dir,  # shares the cached default model with the other tiers
    )
    context = create_app(settings)
    context.publisher = MemoryPublisher()  # type: ignore[assignment]
    app = context.app
    app.finalize()
    app.flow_control.resume()
    # Table changelogs ask Faust's (unstarted) producer for a key's partition.
    app.producer.key_partition = lambda topic, key: TP(topic, 0)  # type: ignore[method-assign]
    # This worker is assigned every partition: the timers walk the keys of its own
    # (DirectTable.own_keys); a test narrows it with ``_assign``.
    _assign(context, range(settings.partitions))
    yield context


def _assign(ctx: Context, partitions: Iterable[int]) -> None:
    """The partitions of every table this worker is assigned (its active assignment)."""
    app = ctx.app
    owned = {
        TP(table.changelog_topic.get_topic_name(), p)
        for table in app.tables.values()
        for p in partitions
    }
    app.assignor.assigned_actives = lambda: owned  # type: ignore[method-assign]


def _out(ctx: Context) -> MemoryPublisher:
    assert isinstance(ctx.publisher, MemoryPublisher)
    return ctx.publisher


Records = list[tuple[str, str, bytes | Event]]
Feed = Callable[[str, Records, Callable[[], bool]], Awaitable[None]]


@pytest.fixture
def feed(ctx: Context, quiet: Quiet, patience: Patience) -> Feed:
    """``await feed(agent, records, until)``: see ``_feed``."""

    async def _run(agent: str, records: Records, until: Callable[[], bool]) -> None:
        await _feed(ctx, agent, records, until, quiet, patience.memory_settle_s)

    return _run


async def _feed(
    ctx: Context,
    agent: str,
    records: Records,
    until: Callable[[], bool],
    quiet: Quiet,
    settle_s: float,
) -> None:
    """Put (topic, key, value) records into a running copy of ``agent``; wait for ``until``.

    Like ``AgentTestWrapper.put``, but with the source topic named: our agents read two topics
    each and tell them apart by name. (``put(wait=True)`` returns when a value enters a
    non-yielding agent, not when the agent is done with it, so the test waits for outputs.)
    Then the agent keeps running until its output has stayed the same for the settle period,
    so a second copy of an output sent a moment later is seen by the "exactly one" checks.
    """
    async with ctx.app.agents[agent].test_context() as running:
        wrapper: Any = running
        channel = wrapper.stream().channel
        for topic, key, value in records:
            raw = value if isinstance(value, bytes) else encode(value)
            message = Message(
                topic=ctx.settings.topic(topic),
                partition=0,
                offset=wrapper.sent_offset,
                timestamp=time.time(),
                timestamp_type=0,
                headers=None,
                key=key.encode(),
                value=raw,
                checksum=b"",
                serialized_key_size=0,
                serialized_value_size=0,
                generation_id=ctx.app.consumer_generation_id,  # else the stream drops it
            )
            await channel.put(await channel.decode(message))
            wrapper.sent_offset += 1
        deadline = time.monotonic() + 60
        while not until():
            assert time.monotonic() < deadline, f"{agent} did not produce what was expected"
            await asyncio.sleep(0.01)
        out = _out(ctx)
        await quiet.count(lambda: len(out.records), settle_s=settle_s)


def _count(ctx: Context, topic: str) -> Callable[[], int]:
    out = _out(ctx)
    return lambda: sum(1 for r in out.records if r[0] == ctx.settings.topic(topic))


Telegram = Callable[..., InboundMessage]
Unreadable = Callable[[Metrics, str], float]


@pytest.fixture
def tg(telegram_inbound: TelegramInbound) -> Telegram:
    """``tg(settings, chat, text, msg_id=1)``: a Telegram message from Анна, received now."""

    def _telegram(settings: Settings, chat: int, text: str, msg_id: int = 1) -> InboundMessage:
        return telegram_inbound(settings, chat, msg_id, text, utcnow(), name="Анна")

    return _telegram


async def test_the_seed_scenario_through_the_real_agents(
    ctx: Context, feed: Feed, tg: Telegram, kit: RouteKit
) -> None:
    out = _out(ctx)
    inbound = tg(ctx.settings, 7001, SEED)
    key = inbound.customer_id

    # classify: two requests, the store resolved; a store-quality complaint goes to its
    # incident bucket's detector first, keyed by the bucket, which forwards it to route
    signals, classified = _count(ctx, "incident-signals"), _count(ctx, "classified")
    await feed("classify", [("inbound", key, inbound)], lambda: signals() == 1)
    [signal] = out.take(ctx.settings.topic("incident-signals"), IncidentSignal)
    assert signal.bucket == "STORE_QUALITY|store:SPB-012" and classified() == 0
    await feed("incidents", [("incident-signals", signal.bucket, signal)], classified)
    [cm] = out.take(ctx.settings.topic("classified"), ClassifiedMessage)
    assert [i.category for i in cm.intents] == ["STORE_QUALITY", "LOYALTY"]
    assert any(e.kind == "store" and e.value == "SPB-012" for e in cm.entities)
    assert cm.similarity.incident_id is None  # one reporter is not an incident

    # the same record again (a redelivery) derives the same decision; the customer sending
    # the same text again is a duplicate of it, in the same case (the dedup table)
    resent = tg(ctx.settings, 7001, SEED, msg_id=2)
    await feed(
        "classify",
        [("inbound", key, inbound), ("inbound", key, resent)],
        lambda: signals() == 2,
    )
    again = out.take(ctx.settings.topic("incident-signals"), IncidentSignal)
    await feed(
        "incidents",
        [("incident-signals", s.bucket, s) for s in again],
        lambda: classified() == 2,
    )
    replay, dup = out.take(ctx.settings.topic("classified"), ClassifiedMessage)
    assert replay.similarity == cm.similarity
    assert dup.similarity.duplicate_of == inbound.message_id
    assert dup.similarity.case_id == cm.similarity.case_id

    # route: one case, an internal and an external sub-request, an acknowledgement
    outcomes = _count(ctx, "outcomes")
    await feed("route", [("classified", key, cm)], lambda: outcomes() == 1)
    [outcome] = out.take(ctx.settings.topic("outcomes"), Outcome)
    assert outcome.outcome is OutcomeKind.routed
    internal = out.take(ctx.settings.topic("tasks.loyalty-it"), SubRequest)
    external = out.take(ctx.settings.topic("external"), SubRequest)
    assert len(internal) == 1 and len(external) == 1
    assert external[0].recipient == "director.spb-sadovaya@example.com"
    [ack] = out.take(ctx.settings.topic("replies"), Reply)
    assert ack.kind is ReplyKind.acknowledgement
    [snapshot] = out.take(ctx.settings.topic("case-state"), CaseSnapshot)
    # the decision's case events travel together: one record for the case, in order
    [trail] = out.take(ctx.settings.topic("case-events"), CaseEvents)
    assert trail.case_id == outcome.case_id
    assert [e.type for e in trail.events] == [
        CaseEventType.opened,
        CaseEventType.sub_request_created,
        CaseEventType.sub_request_created,
    ]

    # the case keeper: the snapshot, then both answers → ONE combined answer
    updates = [
        kit.resolved(sub.case_id, sub.sub_request_id, f"u{n}", text, source)
        for n, (sub, text, source) in enumerate(
            [
                (internal[0], "Бонусы начислены.", "department"),
                (external[0], "Огурцы сняли с продажи.", "email"),
            ]
        )
    ]
    await feed(
        "cases",
        [("case-state", snapshot.case_id, snapshot)]
        + [("task-updates", u.case_id, u) for u in updates]
        + [("task-updates", updates[0].case_id, updates[0])],  # a department retries
        lambda: ctx.metrics.messages.labels(stage="cases", outcome="applied")._value.get() >= 4,
    )
    replies = out.take(ctx.settings.topic("replies"), Reply)
    answers = [r for r in replies if r.kind is ReplyKind.resolution]
    assert len(answers) == 1
    assert "Бонусы начислены." in answers[0].text and "Огурцы сняли" in answers[0].text
    assert answers[0].reply_to == inbound.reply_to  # in the channel the customer wrote from
    assert any(r.kind is ReplyKind.survey for r in replies)


async def test_the_incident_keeper_closes_its_reports_cases_by_their_links(
    ctx: Context, feed: Feed, kit: RouteKit
) -> None:
    """Route links each report's case to the incident's case; a link that overtakes the
    incident's case waits for it; the incident's resolution goes out as one TaskUpdate per
    linked sub-request, keyed by the report's case (on any worker), applied once."""
    out = _out(ctx)
    sim = Similarity(incident_id="inc_f")
    opening = sim.model_copy(update={"incident_new": True})
    opener = kit.seed_message(similarity=opening, key="f1", customer="f-1")
    later = kit.seed_message(similarity=sim, key="f2", customer="f-2")
    outcomes = _count(ctx, "outcomes")
    await feed(
        "route",
        [("classified", m.customer_id, m) for m in (opener, later)],
        lambda: outcomes() == 2,
    )
    links = out.take(ctx.settings.topic("case-commands"), IncidentLink)
    snaps = out.take(ctx.settings.topic("case-state"), CaseSnapshot)
    broadcast = [
        s
        for s in out.take(ctx.settings.topic("external"), SubRequest)
        if s.kind.value == "broadcast"
    ]
    incident_case = derive_id("case", "inc_f")
    assert {ln.case_id for ln in links} == {incident_case} and len(links) == 2
    [inc] = [s for s in snaps if s.case_id == incident_case]
    members = [s for s in snaps if s.case_id != incident_case]
    answers = [
        TaskUpdate(
            update_id=f"b{n}",
            sub_request_id=sub.sub_request_id,
            case_id=sub.case_id,
            status=TaskStatus.resolved,
            resolution="Партию заменили.",
            author="director",
            source="email",
            at=utcnow(),
        )
        for n, sub in enumerate(broadcast)
    ]
    told = _count(ctx, "task-updates")
    await feed(
        "cases",
        [("case-commands", ln.case_id, ln) for ln in links]  # before the incident's case
        + [("case-state", s.case_id, s) for s in [inc, *members]]
        + [("task-updates", u.case_id, u) for u in answers],
        lambda: told() == 2,
    )
    updates = out.take(ctx.settings.topic("task-updates"), TaskUpdate)
    assert {u.case_id for u in updates} == {s.case_id for s in members}
    assert all(u.resolution == "Партию заменили." for u in updates)
    out.records.clear()
    resolved = _count(ctx, "case-events")
    await feed(
        "cases",
        [("task-updates", u.case_id, u) for u in updates * 2],  # and a replay of them
        lambda: resolved() == 2,
    )
    trails = out.take(ctx.settings.topic("case-events"), CaseEvents)
    assert sorted(t.case_id for t in trails) == sorted(s.case_id for s in members)
    for trail in trails:  # each report's store-quality request closed once
        assert [e.type for e in trail.events] == [
            CaseEventType.task_updated,
            CaseEventType.sub_request_resolved,
        ]


async def test_an_incident_opener_continuing_its_customers_case_opens_the_incident(
    ctx: Context, feed: Feed, kit: RouteKit
) -> None:
    """The report that reached the threshold is, for route, a follow-up on its customer's
    open case (same category and store): the incident's case and its broadcast still go out,
    so the keeper holds the case the later reports' links name."""
    out = _out(ctx)
    first = kit.seed_message(key="g0", customer="g-1")
    opening = Similarity(incident_id="inc_g", incident_new=True)
    opener = kit.seed_message(similarity=opening, key="g1", customer="g-1")
    outcomes = _count(ctx, "outcomes")
    await feed(
        "route",
        [("classified", m.customer_id, m) for m in (first, opener)],
        lambda: outcomes() == 2,
    )
    by_message = {o.message_id: o for o in out.take(ctx.settings.topic("outcomes"), Outcome)}
    assert by_message[opener.message_id].case_id == by_message[first.message_id].case_id
    incident_case = derive_id("case", "inc_g")
    snaps = out.take(ctx.settings.topic("case-state"), CaseSnapshot)
    assert [s.by for s in snaps if s.case_id == incident_case] == ["route"]
    broadcast = [
        s
        for s in out.take(ctx.settings.topic("external"), SubRequest)
        if s.kind.value == "broadcast"
    ]
    assert len(broadcast) == 6 and {s.case_id for s in broadcast} == {incident_case}


async def test_an_incident_opener_whose_routing_fails_still_opens_the_incident(
    ctx: Context, feed: Feed, kit: RouteKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug routing the report that reached the threshold dead-letters that message (its
    rejected Outcome), not the incident: its case and broadcast go out, so the later
    reports' links find the case and the group hears of it."""
    out = _out(ctx)
    opener = kit.seed_message(
        similarity=Similarity(incident_id="inc_h", incident_new=True), key="h1", customer="h-1"
    )

    def broken(cm: ClassifiedMessage, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug routing {cm.message_id}")

    monkeypatch.setattr(agents, "route_message", broken)
    outcomes = _count(ctx, "outcomes")
    await feed("route", [("classified", opener.customer_id, opener)], lambda: outcomes() == 1)
    [dead] = out.take(ctx.settings.topic("dlq"), DeadLetter)
    assert dead.stage == "route" and "a bug routing" in dead.error
    [outcome] = out.take(ctx.settings.topic("outcomes"), Outcome)
    assert outcome.outcome is OutcomeKind.rejected
    incident_case = derive_id("case", "inc_h")
    [snap] = out.take(ctx.settings.topic("case-state"), CaseSnapshot)
    assert snap.case_id == incident_case
    broadcast = out.take(ctx.settings.topic("external"), SubRequest)
    assert len(broadcast) == 6 and {s.case_id for s in broadcast} == {incident_case}
    trails = out.take(ctx.settings.topic("case-events"), CaseEvents)
    assert [e.type for t in trails for e in t.events] == [CaseEventType.incident_detected]


async def test_when_the_incident_cannot_open_either_the_messages_own_error_is_dead_lettered(
    ctx: Context, feed: Feed, kit: RouteKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's own failure is logged: the DLQ record names what broke the message."""
    out = _out(ctx)
    opener = kit.seed_message(
        similarity=Similarity(incident_id="inc_i", incident_new=True), key="i1", customer="i-1"
    )

    def broken(what: str) -> Callable[..., Any]:
        def fail(cm: ClassifiedMessage, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"a bug {what} {cm.message_id}")

        return fail

    monkeypatch.setattr(agents, "route_message", broken("routing"))
    monkeypatch.setattr(agents, "incident_opening", broken("opening"))
    outcomes = _count(ctx, "outcomes")
    await feed("route", [("classified", opener.customer_id, opener)], lambda: outcomes() == 1)
    [dead] = out.take(ctx.settings.topic("dlq"), DeadLetter)
    assert "a bug routing" in dead.error and "opening" not in dead.error
    assert out.take(ctx.settings.topic("case-state"), CaseSnapshot) == []
    assert out.take(ctx.settings.topic("external"), SubRequest) == []


async def test_a_broker_lost_while_the_incident_opens_alone_stops_the_step_with_nothing_rejected(
    ctx: Context, kit: RouteKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routing the opener fails and the broker goes while its incident goes out alone: the
    broker error, not the bug, decides (stop: the agent ends before acknowledging, and the
    record is read again after the restart). Nothing is rejected or dead-lettered, so the
    message is not marked done while its incident's case is missing; the bug rides along
    as the broker error's context in the log."""
    out = _out(ctx)
    opener = kit.seed_message(
        similarity=Similarity(incident_id="inc_k", incident_new=True), key="k1", customer="k-1"
    )

    def broken(cm: ClassifiedMessage, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug routing {cm.message_id}")

    sent = out.enqueue

    async def enqueue(topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        if topic == ctx.settings.topic("case-state"):
            raise BrokerUnavailable("case-state record not acknowledged")
        return await sent(topic, key, value)

    monkeypatch.setattr(agents, "route_message", broken)
    monkeypatch.setattr(out, "enqueue", enqueue)
    router = ctx.app.agents["route"].fun.__self__
    record = RawRecord(ctx.settings.topic("inbound"), 0, 7, b"k-1", encode(opener.inbound))
    with pytest.raises(BrokerUnavailable, match="case-state") as raised:
        await router.handle_classified([(record, opener)])
    assert isinstance(raised.value.__context__, RuntimeError)
    assert "a bug routing" in str(raised.value.__context__)
    assert out.take(ctx.settings.topic("dlq"), DeadLetter) == []
    assert out.take(ctx.settings.topic("outcomes"), Outcome) == []
    # what went out before the broker went is sent again with the record after the restart
    assert out.take(ctx.settings.topic("case-state"), CaseSnapshot) == []


async def test_poison_is_dead_lettered_and_the_agent_goes_on(
    ctx: Context, feed: Feed, tg: Telegram
) -> None:
    out = _out(ctx)
    good = tg(ctx.settings, 7002, "Где мой заказ 12345?")
    poison = [b"\xff\xfe not utf-8", b"{broken json", b'{"schema_version": 1}', b"null"]
    await feed(
        "classify",
        [("inbound", "p", value) for value in poison] + [("inbound", good.customer_id, good)],
        lambda: _count(ctx, "classifications")() == 1,
    )
    dead = out.take(ctx.settings.topic("dlq"), DeadLetter)
    assert len(dead) == len(poison) and {d.stage for d in dead} == {"classify"}
    assert all(d.topic == ctx.settings.topic("inbound") and d.offset is not None for d in dead)
    assert len(out.take(ctx.settings.topic("classifications"), ClassifiedMessage)) == 1
    dlq = _count(ctx, "dlq")
    await feed("cases", [("task-updates", "c", b"{not an update")], lambda: dlq() == 1)
    [dl] = out.take(ctx.settings.topic("dlq"), DeadLetter)
    assert dl.stage == "cases" and dl.error


async def test_classify_routes_its_messages_in_the_same_step(
    ctx: Context, feed: Feed, tg: Telegram
) -> None:
    """A message of no incident category is classified and routed in the classify agent's
    step: its classification is recorded on ``classifications``, nothing goes through
    ``classified`` (no hop), it gets one outcome from route and its case is in route's table."""
    out = _out(ctx)
    msg = tg(ctx.settings, 7005, "Где мой заказ 12345? Оплатил неделю назад.")
    outcomes = _count(ctx, "outcomes")
    await feed("classify", [("inbound", msg.customer_id, msg)], lambda: outcomes() == 1)
    [cm] = out.take(ctx.settings.topic("classifications"), ClassifiedMessage)
    assert cm.message_id == msg.message_id and cm.intents
    assert _count(ctx, "classified")() == 0
    [outcome] = out.take(ctx.settings.topic("outcomes"), Outcome)
    assert outcome.message_id == msg.message_id and outcome.stage == "route"
    assert outcome.outcome in (OutcomeKind.routed, OutcomeKind.auto_resolved)
    if outcome.case_id is not None:
        cases = orjson.loads(ctx.app.tables["customer-cases"][msg.customer_id])
        assert [c["case_id"] for c in cases] == [outcome.case_id]
    assert out.take(ctx.settings.topic("dlq"), DeadLetter) == []


async def test_a_routing_failure_in_the_classify_step_rejects_its_messages_once(
    ctx: Context, feed: Feed, tg: Telegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routing fails for a whole hand-off (its KB search raises): each message is dead-lettered
    from its inbound record with the route stage and gets one ``rejected`` outcome; its
    classification stays recorded; the agent goes on with the next batch."""
    out = _out(ctx)
    router = ctx.app.agents["route"].fun.__self__

    def kb_down(events: object) -> None:
        raise RuntimeError("KB index unavailable")

    first = tg(ctx.settings, 7006, "Где мой заказ 777?")
    outcomes = _count(ctx, "outcomes")
    with monkeypatch.context() as patch:
        patch.setattr(router, "kb_hits", kb_down)
        await feed("classify", [("inbound", first.customer_id, first)], lambda: outcomes() == 1)
    [dead] = out.take(ctx.settings.topic("dlq"), DeadLetter)
    assert dead.stage == "route" and "KB index unavailable" in dead.error
    assert dead.topic == ctx.settings.topic("inbound") and dead.offset is not None
    [rejected] = out.take(ctx.settings.topic("outcomes"), Outcome)
    assert rejected.message_id == first.message_id and rejected.outcome is OutcomeKind.rejected
    assert len(out.take(ctx.settings.topic("classifications"), ClassifiedMessage)) == 1
    later = tg(ctx.settings, 7007, "Где мой заказ 778?")
    await feed("classify", [("inbound", later.customer_id, later)], lambda: outcomes() == 1)
    [routed] = out.take(ctx.settings.topic("outcomes"), Outcome)
    assert routed.message_id == later.message_id and routed.outcome is not OutcomeKind.rejected


async def test_an_unreadable_dedup_state_costs_only_its_customers_memory(
    ctx: Context, feed: Feed, tg: Telegram
) -> None:
    out = _out(ctx)
    spoiled, other = tg(ctx.settings, 7003, "Где мой заказ 555?"), tg(ctx.settings, 7004, "Hi")
    dedup_table = ctx.app.tables["dedup"]
    dedup_table[spoiled.customer_id] = '{"entries": [{"sig": "not a state"}]}'
    await feed(
        "classify",
        [("inbound", m.customer_id, m) for m in (spoiled, other)],
        lambda: _count(ctx, "classifications")() == 2,
    )
    # both classified, neither rejected; the spoiled customer's state starts afresh
    assert out.take(ctx.settings.topic("dlq"), DeadLetter) == []
    assert len(out.take(ctx.settings.topic("classifications"), ClassifiedMessage)) == 2
    state = dedup.CustomerDedupState.model_validate_json(dedup_table[spoiled.customer_id])
    assert [e.message_id for e in state.entries] == [spoiled.message_id]


async def test_an_unreadable_case_does_not_stop_the_sla_check_of_the_others(
    ctx: Context, kit: RouteKit, unreadable: Unreadable
) -> None:
    """The SLA timer skips a case it cannot read (not JSON, another shape, a field this
    version does not know: a newer release's) until its value changes, and checks every
    other: the due case is still breached and escalated. Before, the first raised in the
    timer, which kills the worker; and the spoiled values stay for the keeper (only the
    retention sweep forgets)."""
    out = _out(ctx)
    keeper = ctx.app.agents["cases"].fun.__self__
    assert isinstance(keeper, CaseKeeper)
    d = route_message(kit.seed_message(), kit.workflow, now=utcnow() - timedelta(days=30))
    assert d.case is not None and d.case.sub_requests
    due = d.case
    table = ctx.app.tables["cases"]
    spoiled = {
        "case-not-json": '{"case_id": "x", "status": "op',
        "case-list": "[1, 2]",
        "case-newer": orjson.dumps(
            {**due.model_dump(mode="json"), "case_id": "case-newer", "a_newer_field": 1}
        ).decode(),
    }
    for key, value in spoiled.items():
        table[key] = value
    table[due.case_id] = due.model_dump_json()
    await keeper.check_sla()
    [trail] = out.take(ctx.settings.topic("case-events"), CaseEvents)
    assert trail.case_id == due.case_id
    types = {e.type for e in trail.events}
    assert {CaseEventType.sla_breached, CaseEventType.escalated} <= types
    assert {key: table[key] for key in spoiled} == spoiled
    assert unreadable(ctx.metrics, "cases") == len(spoiled)
    assert ctx.metrics.open_cases._value.get() == 1


async def test_the_sla_check_reads_a_case_again_only_when_it_changed(
    ctx: Context, kit: RouteKit, unreadable: Unreadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SLA check keeps each case's next check time with the value it read: an unchanged
    case is checked when that time comes, without being read again (an unreadable value is
    counted once, not at every check); a new value is read at the next check."""
    out = _out(ctx)
    keeper = ctx.app.agents["cases"].fun.__self__
    assert isinstance(keeper, CaseKeeper)
    table = ctx.app.tables["cases"]
    start = utcnow()
    case = route_message(kit.seed_message(), kit.workflow, now=start).case
    assert case is not None
    table[case.case_id] = case.model_dump_json()
    table["case-not-json"] = '{"case_id": "x", "status": "op'
    first = sla.next_check_at(case, kit.workflow)
    assert first is not None and first > start

    await keeper.check_sla()
    await keeper.check_sla()
    assert out.take(ctx.settings.topic("case-events"), CaseEvents) == []
    assert unreadable(ctx.metrics, "cases") == 1  # read once: the value did not change
    assert ctx.metrics.open_cases._value.get() == 1

    monkeypatch.setattr(agents, "utcnow", lambda: first)  # the warning's time has come
    await keeper.check_sla()
    [trail] = out.take(ctx.settings.topic("case-events"), CaseEvents)
    assert [e.type for e in trail.events] == [CaseEventType.sla_warning]
    after = sla.next_check_at(CaseState.model_validate_json(table[case.case_id]), kit.workflow)
    assert after is not None and after > first  # the keeper wrote the warned case: read again

    # another value of the spoiled key is read (and counted) at the next check
    table["case-not-json"] = "[1, 2]"
    await keeper.check_sla()
    assert unreadable(ctx.metrics, "cases") == 2
    assert out.take(ctx.settings.topic("case-events"), CaseEvents) == []


async def test_the_timers_leave_the_cases_of_partitions_assigned_elsewhere(
    ctx: Context, kit: RouteKit
) -> None:
    """Faust's memory store keeps the standby copy of another worker's partition in the same
    table. The SLA check neither checks nor counts its cases and the retention sweep keeps
    them; the case in this worker's own partition is breached and counted, and forgotten once
    resolved long ago. Before, both were checked: each worker emitted the SLA events of the
    other's cases from a lagging copy and wrote that copy to the owner's changelog."""
    out = _out(ctx)
    keeper = ctx.app.agents["cases"].fun.__self__
    assert isinstance(keeper, CaseKeeper)
    table = ctx.app.tables["cases"]
    d = route_message(kit.seed_message(), kit.workflow, now=utcnow() - timedelta(days=30))
    assert d.case is not None and d.case.sub_requests
    in_partition: dict[int, str] = {}  # a case id in each partition
    for n in range(100):
        case_id = f"case-{n}"
        in_partition.setdefault(partition_for(case_id.encode(), ctx.settings.partitions), case_id)
    mine, theirs = in_partition[0], in_partition[1]
    for case_id in (mine, theirs):
        table[case_id] = d.case.model_copy(update={"case_id": case_id}).model_dump_json()
    _assign(ctx, [0])

    await keeper.check_sla()
    trails = out.take(ctx.settings.topic("case-events"), CaseEvents)
    assert {t.case_id for t in trails} == {mine}
    assert ctx.metrics.open_cases._value.get() == 1
    assert orjson.loads(table[theirs]) == d.case.model_copy(update={"case_id": theirs}).model_dump(
        mode="json"
    )

    old = utcnow() - timedelta(days=90)
    for case_id in (mine, theirs):
        resolved = d.case.model_copy(
            update={"case_id": case_id, "status": "resolved", "resolved_at": old}
        )
        table[case_id] = resolved.model_dump_json()
    cutoff = utcnow() - timedelta(days=ctx.settings.case_retention_days)
    customer_cases = ctx.app.tables["customer-cases"]
    pending = ctx.app.tables["pending-updates"]
    assert await agents.sweep_case_tables(table, customer_cases, pending, cutoff) == 1
    assert mine not in table and theirs in table


async def test_a_rebalance_forgets_the_keys_of_partitions_assigned_elsewhere(
    ctx: Context,
) -> None:
    """At a rebalance's end a table keeps the keys of the partitions this worker owns now: the
    ones it wrote in a partition that went to another worker are forgotten here, and only here
    (no tombstone: the new owner's state stays)."""
    table = ctx.app.tables["dedup"]
    topic = table.changelog_topic.get_topic_name()
    in_partition: dict[int, str] = {}
    for n in range(100):
        key = f"customer-{n}"
        in_partition.setdefault(partition_for(key.encode(), ctx.settings.partitions), key)
    written: list[tuple[str, str, bytes | None]] = []
    table.write = lambda topic, key, value: written.append((topic, key, value))
    for key in in_partition.values():
        table[key] = '{"entries": []}'
    assert len(written) == len(in_partition)
    written.clear()

    await table.on_recovery_completed({TP(topic, 0)}, {TP(topic, 1)})
    assert set(table.keys()) == {in_partition[0]}
    assert written == []


async def test_unreadable_held_records_cost_only_themselves(
    ctx: Context, feed: Feed, kit: RouteKit, unreadable: Unreadable
) -> None:
    """Records held for a case not created yet: a spoiled held value is replaced by the next
    record held (not the record dead-lettered), and a held record this version cannot read is
    dropped while its case's other held records are applied when the case comes."""
    out = _out(ctx)
    pending = ctx.app.tables["pending-updates"]
    now = utcnow()
    cases = []
    for n in (1, 2):
        d = route_message(kit.seed_message(key=f"h{n}", customer=f"h-{n}"), kit.workflow, now=now)
        assert d.case is not None
        cases.append(d.case)
    first, second = cases

    def answer(case: CaseState, update_id: str) -> TaskUpdate:
        return TaskUpdate(
            update_id=update_id,
            sub_request_id=case.sub_requests[0].sub_request_id,
            case_id=case.case_id,
            status=TaskStatus.in_progress,
            author="test",
            source="department",
            at=now,
        )

    held = answer(second, "held-2").model_dump(mode="json")
    newer = {**held, "update_id": "newer", "a_newer_field": 1}  # a newer release's
    pending[first.case_id] = "[{"
    pending[second.case_id] = orjson.dumps([newer, held]).decode()
    trails, dlq = _count(ctx, "case-events"), _count(ctx, "dlq")
    await feed(
        "cases",
        [("task-updates", first.case_id, answer(first, "held-1"))]
        + [
            (
                "case-state",
                c.case_id,
                CaseSnapshot(
                    case_id=c.case_id,
                    customer_id=c.customer_id,
                    state=c.model_dump(mode="json"),
                    by="route",
                    at=now,
                ),
            )
            for c in cases
        ],
        lambda: trails() == 2 or dlq() > 0,
    )
    assert out.take(ctx.settings.topic("dlq"), DeadLetter) == []
    stored = ctx.app.tables["cases"]
    applied = [CaseState.model_validate_json(stored[c.case_id]).seen_update_ids for c in cases]
    assert applied == [["held-1"], ["held-2"]]
    assert {pending[c.case_id] for c in cases} == {""}  # nothing waits any more
    assert unreadable(ctx.metrics, "pending-updates") == 2


@dataclass
class RefusingPublisher(MemoryPublisher):
    """A ``MemoryPublisher`` whose broker refuses the records of ``refused`` topics (their
    futures fail, as a partition whose leader is down): the others are kept and acknowledged."""

    refused: set[str] = field(default_factory=set)

    async def enqueue(self, topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        if topic not in self.refused:
            return await super().enqueue(topic, key, value)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(BrokerUnavailable(f"{topic}: leader not available"))
        return fut


async def test_a_case_state_reaches_the_changelog_only_after_its_outputs(
    ctx: Context, kit: RouteKit
) -> None:
    """The keeper's new state of a case goes to its changelog only once the records the
    transition sent are acknowledged. The state says what was sent (a warning emitted, an
    update applied), so a state durable without its records would never send them: after the
    restart the timer sees the warning as emitted, and a replayed update is one the case has
    seen. Here the broker refuses the case events: the check fails, the changelog keeps the
    case as it was, and the check of the restarted keeper (the table restored from the
    changelog) sends the warning, with the same event id."""
    keeper = ctx.app.agents["cases"].fun.__self__
    assert isinstance(keeper, CaseKeeper)
    table = ctx.app.tables["cases"]
    changelog = table.changelog_topic.get_topic_name()
    case = route_message(kit.seed_message(), kit.workflow, now=utcnow() - timedelta(days=30)).case
    assert case is not None and case.sub_requests
    table[case.case_id] = case.model_dump_json()
    await ctx.drain_changelogs()  # the case as it was is on the changelog
    events = ctx.settings.topic("case-events")
    refusing = RefusingPublisher(refused={events})
    ctx.publisher = refusing  # type: ignore[assignment]

    with pytest.raises(BrokerUnavailable):
        await keeper.check_sla()
    await ctx.drain_changelogs()  # whatever the check queued is in the producer now
    assert [r for r in refusing.records if r[0] == changelog] == []

    # the restart: the table as its changelog has it, a broker that takes everything
    ctx.publisher = MemoryPublisher()  # type: ignore[assignment]
    table[case.case_id] = case.model_dump_json()
    await ctx.drain_changelogs()
    _out(ctx).records.clear()
    await keeper.check_sla()
    [trail] = _out(ctx).take(events, CaseEvents)
    assert trail.case_id == case.case_id
    assert CaseEventType.sla_breached in {e.type for e in trail.events}
    saved = [r for r in _out(ctx).records if r[0] == changelog and r[1] == case.case_id]
    assert len(saved) == 1 and saved[0][2] is not None
    stored = CaseState.model_validate_json(orjson.loads(saved[0][2]))
    assert any(s.breached for s in stored.sub_requests)


async def test_an_update_replayed_after_its_answer_was_refused_answers_the_customer(
    ctx: Context, kit: RouteKit
) -> None:
    """The last department's update resolves the case and answers the customer. The broker
    refuses the answer: the case's new state (the update seen, the case resolved) is not on the
    changelog, so the update read again after the restart is applied again and the answer goes
    out, with the id it had. Before, the state was written first: the replayed update was one
    the case had seen, and the customer never heard."""
    keeper = ctx.app.agents["cases"].fun.__self__
    assert isinstance(keeper, CaseKeeper)
    table = ctx.app.tables["cases"]
    changelog = table.changelog_topic.get_topic_name()
    case = route_message(kit.seed_message(), kit.workflow, now=utcnow()).case
    assert case is not None and case.sub_requests
    table[case.case_id] = case.model_dump_json()
    await ctx.drain_changelogs()
    updates = [
        kit.resolved(case.case_id, sub.sub_request_id, f"done-{n}", f"Сделано ({n}).")
        for n, sub in enumerate(case.sub_requests)
    ]
    *earlier, last = updates
    async with keeper.states_after():
        for update in earlier:
            await keeper.take_update(update)
    answered = table[case.case_id]  # every sub-request but the last answered
    replies = ctx.settings.topic("replies")
    refusing = RefusingPublisher(refused={replies})
    ctx.publisher = refusing  # type: ignore[assignment]

    with pytest.raises(BrokerUnavailable):
        async with keeper.states_after():
            await keeper.take_update(last)
    await ctx.drain_changelogs()
    assert [r for r in refusing.records if r[0] == changelog] == []

    ctx.publisher = MemoryPublisher()  # type: ignore[assignment]
    table[case.case_id] = answered  # the restart: the table as its changelog has it
    async with keeper.states_after():
        await keeper.take_update(last)  # the update read again
    answers = [r for r in _out(ctx).take(replies, Reply) if r.kind is ReplyKind.resolution]
    assert len(answers) == 1 and "Сделано (0)." in answers[0].text
    assert CaseState.model_validate_json(table[case.case_id]).status == "resolved"


async def test_held_writes_go_as_the_values_the_batch_left_in_order_and_in_own_partitions(
    ctx: Context,
) -> None:
    """``DirectTable.holding``: writes change the table at once; their changelog records wait
    in a ``Held`` (``take_held``) with each key's value as the batch left it (deleted: a
    tombstone), once per key. A table's ``Held`` are written in the order they were taken (a
    later one waits for the earlier, written or dropped). A rebalance's end drops the keys of
    partitions assigned elsewhere: the new owner's state is not overwritten from here."""
    table = ctx.app.tables["cases"]
    topic = table.changelog_topic.get_topic_name()
    keys: dict[int, list[str]] = {}
    for n in range(100):
        key = f"case-{n}"
        keys.setdefault(partition_for(key.encode(), ctx.settings.partitions), []).append(key)
    (mine, gone, *_), (theirs, *_) = keys[0], keys[1]
    written: list[tuple[str, str | None]] = []
    table.write = lambda topic, key, value: written.append(
        (key, None if value is None else orjson.loads(value))
    )
    table[gone] = '"x"'
    written.clear()

    table.holding = True
    table[mine] = '"first"'
    table[mine] = '"second"'
    table[theirs] = '"theirs"'
    del table[gone]
    first = table.take_held()
    table.holding = True
    table[mine] = '"third"'
    second = table.take_held()
    assert written == [] and table[mine] == '"third"' and gone not in table

    await table.on_recovery_completed({TP(topic, 0)}, {TP(topic, 1)})
    later = asyncio.ensure_future(second.write())
    await asyncio.sleep(0.01)
    assert written == [] and not later.done()  # waits for the one taken before
    await first.write()
    await later
    assert written == [(mine, '"second"'), (gone, None), (mine, '"third"')]
    assert table.pending_held == []

    # a dropped one (its outputs failed) is not written, and the next goes
    table.holding = True
    table[mine] = '"fourth"'
    failed = table.take_held()
    table.holding = True
    table[mine] = '"fifth"'
    after = table.take_held()
    failed.drop()
    await after.write()
    assert written[3:] == [(mine, '"fifth"')]


async def test_a_follow_up_replayed_after_its_outputs_were_refused_reaches_a_human(
    ctx: Context, kit: RouteKit
) -> None:
    """ "Your answer did not help" on an open case sends a triage sub-request. The broker
    refuses it: the customer's cases (which now list the message) are not on the changelog,
    so the message routed again after the restart is a follow-up again and the sub-request
    goes out. Before, the cases were stored first: the replayed message was one the case had
    seen, nothing was sent, and nobody was told."""
    router = ctx.app.agents["route"].fun.__self__
    assert isinstance(router, agents.RouteAgent)
    table = ctx.app.tables["customer-cases"]
    changelog = table.changelog_topic.get_topic_name()

    def record(cm: ClassifiedMessage) -> RawRecord:
        return RawRecord(ctx.settings.topic("classified"), 0, 0, cm.customer_id.encode(), b"")

    seed = kit.seed_message()
    await ctx.flush_states(await router.handle_classified([(record(seed), seed)]))
    stored = table[seed.customer_id]
    text = "Ваш ответ не помог"
    angry = kit.message(text, [kit.intent(text, text, "unknown", "UNKNOWN")], key="angry")
    triage = ctx.settings.topic("tasks.triage")
    refusing = RefusingPublisher(refused={triage})
    ctx.publisher = refusing  # type: ignore[assignment]

    with pytest.raises(BrokerUnavailable):
        await ctx.flush_states(await router.handle_classified([(record(angry), angry)]))
    await ctx.drain_changelogs()
    assert [r for r in refusing.records if r[0] == changelog] == []
    assert angry.message_id in table[seed.customer_id]  # routed: in memory at once

    ctx.publisher = MemoryPublisher()  # type: ignore[assignment]
    table[seed.customer_id] = stored  # the restart: the table as its changelog has it
    await ctx.drain_changelogs()
    await ctx.flush_states(await router.handle_classified([(record(angry), angry)]))
    [sub] = _out(ctx).take(triage, SubRequest)
    assert sub.message_id == angry.message_id


def _changelog_keys(ctx: Context, table: Any) -> list[str | None]:
    """The keys of the records sent to ``table``'s changelog so far (its values in order)."""
    topic = table.changelog_topic.get_topic_name()
    return [key for name, key, _ in _out(ctx).records if name == topic]


@pytest.mark.parametrize("settling", [False, True], ids=["before-settle", "while-settling"])
async def test_a_batch_abandoned_before_its_acks_writes_none_of_its_held_states(
    ctx: Context, settling: bool
) -> None:
    """``AckBehind``: the agent stops while its last batch still waits for its outputs' acks
    (before the settle task ran, or while it waits). The batch is not acknowledged (read
    again), its held states are dropped, not written, and they do not stop the next batch's
    held states from going out (a later ``Held`` waits for the one taken before it)."""
    table = ctx.app.tables["customer-cases"]
    acked: list[str] = []

    class Stream:
        async def ack(self, event: str) -> None:
            acked.append(event)

    ctx.own_outputs(fresh=True)
    behind = AckBehind(ctx, Stream())
    table.holding = True
    table["cust-abandoned"] = "[]"
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    ctx.own_outputs().append(never)  # the batch's output: its partition never answers
    await behind.done(["record-1"], [table.take_held()])
    if settling:
        await asyncio.sleep(0.05)  # the settle task runs and waits for the output
    behind.abandon()
    await ctx.drain_changelogs()  # returns: nothing of this table waits any more
    assert acked == [] and table.pending_held == []
    assert _changelog_keys(ctx, table) == []

    table.holding = True
    table["cust-next"] = "[]"
    await ctx.flush_states([table.take_held()])
    assert _changelog_keys(ctx, table) == ["cust-next"]


async def test_a_routing_batch_that_raises_writes_none_of_its_held_states(ctx: Context) -> None:
    """``RouteAgent.routing``: a batch raising out of it yields no ``Held`` and leaves none
    waiting; its writes stay in memory only (the worker reads its inputs again). The next
    batch's held states go out as usual, its own keys only."""
    router = ctx.app.agents["route"].fun.__self__
    assert isinstance(router, agents.RouteAgent)
    table = ctx.app.tables["customer-cases"]
    with pytest.raises(RuntimeError, match="routing failed"):
        async with router.routing() as failed:
            table["cust-failed"] = "[]"
            raise RuntimeError("routing failed")
    assert failed == [] and table.pending_held == [] and not table.holding
    await ctx.drain_changelogs()
    assert _changelog_keys(ctx, table) == []

    async with router.routing() as held:
        table["cust-next"] = "[]"
    await ctx.flush_states(held)
    assert _changelog_keys(ctx, table) == ["cust-next"]


async def test_a_keeper_batch_that_raises_writes_none_of_its_held_states(ctx: Context) -> None:
    """``CaseKeeper.states_after``: a batch (or SLA check) raising out of it writes neither
    table's held states and leaves none waiting; the next one's go out, and the lock is free."""
    keeper = ctx.app.agents["cases"].fun.__self__
    assert isinstance(keeper, CaseKeeper)
    cases, pending = ctx.app.tables["cases"], ctx.app.tables["pending-updates"]
    with pytest.raises(RuntimeError, match="transition failed"):
        async with keeper.states_after():
            cases["case-failed"] = "{}"
            pending["case-failed"] = "[]"
            raise RuntimeError("transition failed")
    await ctx.drain_changelogs()
    assert cases.pending_held == [] and pending.pending_held == []
    assert _changelog_keys(ctx, cases) == [] and _changelog_keys(ctx, pending) == []

    async with keeper.states_after():
        cases["case-next"] = "{}"
    assert _changelog_keys(ctx, cases) == ["case-next"]


async def test_a_revocation_waits_for_held_states_at_most_the_produce_timeout(
    ctx: Context,
) -> None:
    """Faust's producer flush (before a commit, at a revocation) waits for records held for
    their outputs' acks, but not forever: outputs that never come back hold it at most the
    produce timeout, and the held states stay unwritten (the batch is read again)."""
    ctx.settings = ctx.settings.model_copy(update={"produce_timeout_s": 0.2})
    table = ctx.app.tables["cases"]
    table.holding = True
    table["case-stuck"] = "{}"
    stuck = table.take_held()  # its batch's flush never returns
    await asyncio.wait_for(ctx.drain_changelogs(), 60)  # a hang guard, not a timing check
    assert table.pending_held == [stuck] and not stuck.done.done()
    assert _changelog_keys(ctx, table) == []
    stuck.drop()
