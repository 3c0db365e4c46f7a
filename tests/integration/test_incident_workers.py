"""A wave of complaints about one store is one incident, whatever the number of workers.

Issue 11, item 3 (docs/ARCHITECTURE.md, Incidents): twelve customers complain about the same
store (threshold 5) while 2 or 3 workers share the consumer group. The customers' messages
are spread over the workers' partitions, but every complaint goes through its bucket's one
detector: one incident opens, each director is e-mailed the broadcast once, and no complaint
linked to the incident e-mails the store's director on its own. When the directors answer
the broadcast, every report of the incident gets exactly one resolution reply, whichever
worker holds its case. Counts are taken once the topics and the outbox are quiet.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.domain.workflow import load_workflow
from pipeline.events import ClassifiedMessage, Outcome, Reply, SubRequest, derive_id
from pipeline.outbox import Outbox

if TYPE_CHECKING:
    from tests.plugins.stack import (
        AddWorker,
        Cases,
        Deliveries,
        GetJson,
        RunningStack,
        Telegram,
    )
    from tests.plugins.topics import Records
    from tests.plugins.waiting import WaitUntilSync

pytestmark = pytest.mark.integration

COMPLAINTS = 12
STORE = "SPB-012"


@pytest.fixture(params=[2, 3], ids=lambda n: f"{n}-workers")
def workers(
    request: pytest.FixtureRequest,
    broker_settings: Settings,
    outbox: Outbox,
    running_stack: RunningStack,
    add_worker: AddWorker,
    get_json: GetJson,
    wait_until_sync: WaitUntilSync,
) -> Iterator[Settings]:
    # 4 partitions: the twelve customers' messages land on every worker.
    base = broker_settings.model_copy(update={"partitions": 4})
    with running_stack(base, outbox, "iw") as (stack, group):
        ports = [stack.web_port] + [
            add_worker(stack, group, outbox) for _ in range(request.param - 1)
        ]
        # The wave starts once every worker holds its partitions: what is counted here is the
        # detector's decision, not a rebalance in the middle of it (test_rebalance.py).
        for port in ports:
            wait_until_sync(
                lambda port=port: get_json(f"http://{stack.web_host}:{port}/readyz")[0] == 200,
                timeout_s=600,
                what=f"worker on {port} holding its partitions",
            )
        yield stack


async def test_one_incident_and_one_broadcast_per_director_with_several_workers(
    workers: Settings,
    records: Records,
    deliveries: Deliveries,
    telegram: Telegram,
    store_complaints: tuple[str, ...],
    cases: Cases,
) -> None:
    stack = workers
    wf = load_workflow(stack.rules_path)
    [policy] = [p for p in wf.incidents if "STORE_QUALITY" in p.categories]
    directors = set(wf.group_members(policy.group))
    store = wf.store(STORE)
    assert store is not None and store.director_email in directors
    director = store.director_email
    base = 8_600_000 + int(uuid.uuid4().int % 900_000) * 10
    chats = [base + n for n in range(COMPLAINTS)]  # twelve customers
    mids = {derive_id("msg", "telegram", f"{chat}:1") for chat in chats}
    for n, chat in enumerate(chats):
        status, _ = telegram(stack, chat, 1, store_complaints[n % len(store_complaints)])
        assert status == 200

    classified = await records.settled(
        stack,
        stack.topic("classifications"),
        ClassifiedMessage,
        lambda c: c.message_id in mids,
        len(mids),
    )
    for c in classified:  # the premise: every complaint is in the one bucket
        assert "STORE_QUALITY" in {i.category for i in c.intents}, c.inbound.text
        assert ("store", STORE) in {(e.kind, e.value) for e in c.entities}, c.inbound.text
    # A replayed record repeats its decision, never another one.
    decided = {
        (c.message_id, c.similarity.incident_id, c.similarity.incident_new) for c in classified
    }
    assert len(decided) == len(mids), sorted(decided)
    incidents = {c.similarity.incident_id for c in classified if c.similarity.incident_id}
    assert len(incidents) == 1, incidents
    [incident] = incidents
    assert sum(1 for _, _, new in decided if new) == 1, "one report opened it"
    before = {m for m, inc, _ in decided if inc is None}
    assert len(before) == policy.threshold - 1

    broadcast = await records.settled(
        stack,
        stack.topic("external"),
        SubRequest,
        lambda s: s.kind.value == "broadcast" and s.message_id == incident,
        lambda seen: {s.recipient for s in seen} >= directors,
    )
    per_director = Counter(s.recipient for s in {s.sub_request_id: s for s in broadcast}.values())
    assert per_director == Counter(directors), per_director  # one sub-request per director
    assert len(broadcast) == len(directors), "the broadcast is emitted once per incident"
    own = await records.settled(
        stack,
        stack.topic("external"),
        SubRequest,
        lambda s: s.message_id in mids and s.recipient == director,
        len(before),
    )
    assert {s.message_id for s in own} == before, "no own e-mail once the incident opened"

    mail_ids = {s.sub_request_id for s in broadcast} | {s.sub_request_id for s in own}
    mails = await deliveries.settled(
        lambda i: i.channel == "email" and any(sr in (i.subject or "") for sr in mail_ids),
        len(directors) + len(before),
    )
    assert Counter(i.to for i in mails) == Counter(directors) + Counter({director: len(before)})

    outcomes = await records.settled(
        stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id in mids, len(mids)
    )
    assert {o.message_id for o in outcomes} == mids
    assert {o.outcome.value for o in outcomes} == {"routed"}
    replies = await records.settled(
        stack, stack.topic("replies"), Reply, lambda r: r.message_id in mids, len(mids)
    )
    kinds = {r.message_id: r.kind.value for r in replies}
    linked = {m for m, inc, new in decided if inc and not new}
    assert {kinds[m] for m in linked} == {"incident_notice"}  # told it is a known problem
    assert set(kinds) == mids  # everyone is answered

    # Every director answers the broadcast: the incident's case is resolved on the worker
    # holding it, and its resolution reaches every report's case, whichever worker holds it.
    reporters = {m for m, inc, _ in decided if inc == incident}  # the opener and the linked
    text = "Овощи на Садовой, 12 заменили, партию списали."
    await cases.resolve_incident(stack, broadcast, text, reporters)
