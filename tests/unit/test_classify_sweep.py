"""The classify stage's state sweep keeps memory bounded (plain dicts stand in for tables)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pipeline.classify import dedup, incidents
from pipeline.classify.agents import sweep_tables
from pipeline.classify.incident_agent import sweep_windows
from pipeline.events import Channel, InboundMessage, derive_id
from pipeline.metrics import Metrics

if TYPE_CHECKING:
    from tests.plugins.tables import StoredTable

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _state(at: datetime, text: str, contacts: tuple[datetime, ...] = ()) -> str:
    state = dedup.CustomerDedupState(contacts=[c.timestamp() for c in contacts])
    return dedup.remember(state, _message(text, at), "case", at).model_dump_json()


async def test_sweep_removes_only_idle_keys() -> None:
    cfg = dedup.DedupConfig(window_s=3600)
    long_ago, yesterday = NOW - timedelta(days=40), NOW - timedelta(days=1)
    two_hours = NOW - timedelta(hours=2)
    dedup_table = {
        "old": _state(two_hours, "где мой заказ", (long_ago,)),
        "fresh": _state(NOW - timedelta(minutes=5), "where is my order", (long_ago,)),
        # no dedup entry within the window, but a contact the priority still counts
        "contacted": _state(two_hours, "hello", (long_ago, yesterday)),
    }
    idle = incidents.IncidentWindow(key="idle")
    stale_open = incidents.IncidentWindow(
        key="stale",
        incident_id="inc_1",
        reports=[
            incidents.IncidentReport(
                message_id="m", customer_id="c", at=(NOW - timedelta(days=2)).timestamp()
            )
        ],
    )
    live_open = stale_open.model_copy(
        update={
            "key": "live",
            "reports": [
                incidents.IncidentReport(
                    message_id="m2", customer_id="c2", at=(NOW - timedelta(minutes=1)).timestamp()
                )
            ],
        }
    )
    incident_table = {
        "idle": idle.model_dump_json(),
        "stale": stale_open.model_dump_json(),
        "live": live_open.model_dump_json(),
    }
    assert await sweep_tables(dedup_table, cfg, NOW) == 1
    assert set(dedup_table) == {"fresh", "contacted"}
    assert await sweep_windows(incident_table, NOW) == 2  # the detector's own sweep
    assert set(incident_table) == {"live"}


def test_a_replayed_record_decides_as_it_did_the_first_time() -> None:
    from pipeline.classify.agents import case_id_for

    def msg(n: int, text: str) -> InboundMessage:
        return InboundMessage(
            message_id=derive_id("msg", "webchat", str(n)),
            channel=Channel.webchat,
            channel_message_id=str(n),
            customer_id="c",
            text=text,
            received_at=NOW,
        )

    first, resend = msg(1, "Где мой заказ 123?"), msg(2, "Где мой заказ 123?")
    case = case_id_for(first.message_id)
    state = dedup.remember(dedup.CustomerDedupState(), first, case, NOW)
    assert dedup.check_duplicate(state, resend, NOW).is_duplicate
    state = dedup.remember(state, resend, case, NOW)
    again_first = dedup.check_duplicate(state, first, NOW)
    assert not again_first.is_duplicate
    again_resend = dedup.check_duplicate(state, resend, NOW)
    assert again_resend.is_duplicate and again_resend.reason == "exact_id"
    assert dedup.replayed(state, msg(3, "другое")) is None
    assert (again_resend.case_id, again_resend.duplicate_of) == (case, first.message_id)


def test_contacts_live_in_the_dedup_state() -> None:
    """The contact count priority reads shares the customer's one dedup record."""
    day = 86_400.0
    state = dedup.CustomerDedupState(contacts=[(NOW - timedelta(days=40)).timestamp()])
    state, recent = dedup.count_contact(state, NOW, 30 * day, 3, counts=True)
    assert recent == 0 and state.contacts == [NOW.timestamp()]  # the old one left the window
    state, recent = dedup.count_contact(state, NOW, 30 * day, 3, counts=False)  # a duplicate
    assert recent == 1 and state.contacts == [NOW.timestamp()]
    for _ in range(3):
        state, recent = dedup.count_contact(state, NOW, 30 * day, 3, counts=True)
    assert recent == 3 and len(state.contacts) == 3  # capped
    later = NOW + timedelta(days=2)
    kept = dedup.remember(state, _message("again"), "case", later)
    assert kept.contacts == state.contacts and len(kept.entries) == 1
    expired = dedup.expire(kept, later + timedelta(days=2), dedup.DedupConfig())
    assert not expired.entries and expired.contacts == state.contacts


def _message(text: str, at: datetime = NOW) -> InboundMessage:
    return InboundMessage(
        message_id=derive_id("msg", "webchat", text),
        channel=Channel.webchat,
        channel_message_id=text,
        customer_id="c",
        text=text,
        received_at=at,
    )


def test_remember_and_count_is_remember_then_count_contact() -> None:
    """The agent's one-state update equals ``remember`` then ``count_contact`` (states as
    the table stores them, and the counts), through retries, duplicates, expiry and caps."""
    cfg = dedup.DedupConfig(window_s=3600, max_entries=3)
    texts = ["где мой заказ", "где мой заказ", "where is my order", "refund please", "hello"]
    apart = [0, 1, 2, 30, 90, 200, 300]  # minutes: some entries and contacts expire
    one = two = dedup.CustomerDedupState()
    for i, minutes in enumerate(apart):
        at = NOW + timedelta(minutes=minutes)
        msg = _message(texts[i % len(texts)], at)
        fp = dedup.fingerprint(msg)
        d = dedup.check_duplicate(one, msg, at, cfg, fp)
        counts = not d.is_duplicate
        one, n_one = dedup.count_contact(
            dedup.remember(one, msg, f"case{i}", at, cfg, fp), at, 7200.0, 2, counts
        )
        two, n_two = dedup.remember_and_count(
            two, msg, f"case{i}", at, cfg, fp, window_s=7200.0, cap=2, counts=counts
        )
        assert (two.model_dump_json(), n_two) == (one.model_dump_json(), n_one)
    assert one.entries and one.contacts


async def test_sweep_forgets_an_unreadable_state_and_goes_on() -> None:
    fresh = _state(NOW - timedelta(minutes=5), "where is my order")
    table = {"spoiled": "{not json", "wrong": '{"entries": 7}', "fresh": fresh}
    removed = await sweep_tables(table, dedup.DedupConfig(window_s=3600), NOW)
    assert removed == 2 and table == {"fresh": fresh}


async def test_window_sweep_forgets_an_unreadable_window_and_goes_on(
    stored_table: Callable[..., StoredTable], unreadable: Callable[[Metrics, str], float]
) -> None:
    """Before, the first such value raised in the detector's sweep timer (a dead worker)."""
    report = incidents.IncidentReport(
        message_id="m", customer_id="c", at=(NOW - timedelta(minutes=1)).timestamp()
    )
    live = incidents.IncidentWindow(key="live", incident_id="inc_1", reports=[report])
    table = stored_table(
        "incident-windows",
        {
            "not-json": '{"key": "x", "reports": [',
            "live": live.model_dump_json(),
            "wrong": '{"key": "w", "reports": [{"at": "now"}]}',
            "idle": incidents.IncidentWindow(key="idle").model_dump_json(),
        },
    )
    metrics = Metrics()
    assert await sweep_windows(table, NOW, metrics) == 3
    assert set(table) == {"live"}
    assert unreadable(metrics, "incident-windows") == 2
    dedup_table = stored_table("dedup", {"spoiled": "{not json"})  # the dedup sweep counts too
    assert await sweep_tables(dedup_table, dedup.DedupConfig(window_s=3600), NOW, metrics) == 1
    assert unreadable(metrics, "dedup") == 1
