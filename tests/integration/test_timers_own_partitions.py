"""Two workers keeping standby copies of each other's tables: the timers act on their own
cases only.

A standby copy (``PIPELINE_TABLE_STANDBY_REPLICAS``, default 1) lives in the same dict as the
worker's own partitions: Faust's memory store applies the other worker's changelog records
to it, a thousand at a time (``standby_buffer_size``), so the copy lags. The SLA check and the
retention sweeps are timers, not streams: walking every key, a worker checked the cases
another worker owns, from that lagging copy, emitted their warnings a second time and wrote
its copy to the owner's changelog.

Two tests on one pair of workers: enough cases that each worker applies a batch of the
other's (the open-cases gauges, set by each worker's SLA check, must add up to the open cases),
and a few customers' cases whose SLA warnings must each come once.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline import bus
from pipeline.config import Settings
from pipeline.events import CaseEvent, CaseSnapshot, Outcome, OutcomeKind, derive_id, utcnow
from pipeline.outbox import Outbox
from pipeline.route.core import route_message
from pipeline.runtime import Children

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit
    from tests.plugins.stack import AddWorker, GetText, RunningStack, Telegram
    from tests.plugins.topics import Records
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration

#: Customers, each with one case routed to loyalty IT (a blocking internal sub-request).
CASES = 12
#: Cases written straight to ``case-state``: over twice Faust's standby batch (1,000 records),
#: so each worker applies at least one batch of the other's cases to its table.
MANY = 2_400
TEXT = "Мне не начислили бонусы на карту лояльности после покупки."
GAUGE = re.compile(r"^pipeline_open_cases (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def two_workers(
    broker_settings: Settings,
    fast_sla_rules: Path,
    outbox: Outbox,
    running_stack: RunningStack,
    add_worker: AddWorker,
) -> Iterator[tuple[Settings, Children, list[int]]]:
    update = {"partitions": 4, "table_standby_replicas": 1, "rules_path": fast_sla_rules}
    base = broker_settings.model_copy(update=update)
    with running_stack(base, outbox, "own") as (stack, group):
        second = add_worker(stack, group, outbox)
        yield stack, group, [stack.web_port, second]


def _open_cases(get_text: GetText, host: str, port: int) -> float:
    _, text = get_text(f"http://{host}:{port}/metrics")
    found = GAUGE.search(text)
    assert found is not None, "no pipeline_open_cases gauge"
    return float(found.group(1))


async def test_each_case_is_checked_by_its_owner_alone(
    two_workers: tuple[Settings, Children, list[int]],
    records: Records,
    telegram: Telegram,
) -> None:
    stack, _, _ = two_workers
    base = 9_000_000 + int(uuid.uuid4().int % 900_000) * 10
    chats = [base + n for n in range(CASES)]
    mids = {derive_id("msg", "telegram", f"{chat}:1") for chat in chats}
    for chat in chats:
        status, _ = telegram(stack, chat, 1, TEXT)
        assert status == 200
    outcomes = await records.settled(
        stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id in mids, len(mids)
    )
    routed = {o.case_id for o in outcomes if o.outcome == OutcomeKind.routed}
    assert len(routed) == CASES, [o.outcome for o in outcomes]

    # The first-response warning comes half a minute after the case opened (warn_before 0.5
    # of a minute), at the next SLA check of the case's owner (every 30 s); a check after the
    # deadline emits the breach instead. Each at most once per sub-request.
    sla = {"sla_warning", "sla_breached"}
    emitted = await records.settled(
        stack,
        stack.topic("case-events"),
        CaseEvent,
        lambda e: (
            e.case_id in routed
            and e.type.value in sla
            and e.detail.get("deadline") == "first_response"
        ),
        lambda seen: {e.case_id for e in seen} >= routed,
        settle_s=40.0,  # more than one SLA interval: the other worker's check included
    )
    assert {e.case_id for e in emitted} == routed  # every case's owner checked it
    seen = Counter((e.sub_request_id, e.type.value) for e in emitted)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert twice == {}, f"{len(twice)} SLA events emitted more than once: {list(twice)[:3]}"


async def test_a_worker_counts_its_own_cases_not_its_standby_copies(
    two_workers: tuple[Settings, Children, list[int]],
    kit: RouteKit,
    get_text: GetText,
    wait_until: WaitUntil,
) -> None:
    stack, _, ports = two_workers
    host = stack.web_host

    def counted() -> list[float]:
        return [_open_cases(get_text, host, port) for port in ports]

    before = sum(counted())  # the other test's cases, if it ran first
    # Cases as route writes them (deadlines hours away: the SLA check only counts them).
    case = route_message(kit.seed_message(), kit.workflow, now=utcnow()).case
    assert case is not None and case.status != "resolved"
    run = uuid.uuid4().hex[:8]
    snapshots = []
    for n in range(MANY):
        state = case.model_copy(update={"case_id": f"c-{run}-{n}", "customer_id": f"u-{run}-{n}"})
        snapshot = CaseSnapshot(
            case_id=state.case_id,
            customer_id=state.customer_id,
            state=state.model_dump(mode="json"),
            by="route",
            at=utcnow(),
        )
        snapshots.append((state.case_id, snapshot))
    await bus.publish(stack, stack.topic("case-state"), snapshots)

    # Each worker's SLA check runs every 30 s; the count settles once both ran after the
    # keepers stored every case and the standby batches were applied.
    await wait_until(
        lambda: sum(counted()) >= before + MANY,
        timeout_s=120,
        what="both SLA checks after the cases",
    )
    await asyncio.sleep(35)  # one more check of each worker, with every standby batch in
    assert sum(counted()) == before + MANY, (before, counted())
