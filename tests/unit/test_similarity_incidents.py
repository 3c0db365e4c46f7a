"""Mass-incident detection (pipeline.classify.incidents)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.classify.incidents import (
    IncidentConfig,
    IncidentWindow,
    bucket_keys,
    close_incident,
    decide,
    is_idle,
    observe,
    resolve,
    signal_for,
    signals_for,
)
from pipeline.domain.workflow import IncidentPolicy
from pipeline.events import (
    ClassifiedMessage,
    Entity,
    InboundMessage,
    IncidentResolved,
    Intent,
    Priority,
    Similarity,
    Span,
    derive_id,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

STALE_RU = [
    "В магазине на Садовой 12 продают несвежие огурцы",
    "Купила вялые огурцы в магазине на Садовой",
    "На Садовой гнилые помидоры на витрине",
    "Овощи в магазине S12 просрочены, безобразие",
]
STALE_EN = "The vegetables at the Garden street store are stale"


def classified(
    mid: str, customer: str, text: str, *, store: str | None = "S12", label: str = "product_quality"
) -> ClassifiedMessage:
    inbound = InboundMessage(
        message_id=mid,
        channel="telegram",
        channel_message_id=mid,
        customer_id=customer,
        text=text,
        received_at=T0,
    )
    return ClassifiedMessage(
        message_id=mid,
        customer_id=customer,
        inbound=inbound,
        intents=[
            Intent(
                label=label,
                category="QUALITY",
                confidence=0.9,
                span=Span(start=0, end=len(text)),
                text=text,
            )
        ],
        entities=[Entity(kind="store", value=store)] if store else [],
        priority=Priority(score=50, level="P3"),
        model_version="test",
        classified_at=T0,
    )


def test_twenty_customers_stale_vegetables_one_incident() -> None:
    w: IncidentWindow | None = None
    incident_ids: set[str] = set()
    opened = 0
    for i in range(20):
        text = STALE_EN if i % 5 == 4 else STALE_RU[i % 4]
        m = classified(f"m{i}", f"cust{i}", text)
        [(key, sim)] = bucket_keys(m)
        assert key == "QUALITY|store:S12" and sim is False
        w, d = observe(w, key, m, T0 + timedelta(minutes=i), similarity_required=sim)
        if i < 4:
            assert d.incident_id is None and not d.threshold_reached
        else:
            assert d.incident_id is not None
            incident_ids.add(d.incident_id)
        opened += d.is_new
        if i == 4:
            assert d.linked_message_ids == [f"m{j}" for j in range(5)]
    assert opened == 1 and len(incident_ids) == 1
    assert incident_ids == {derive_id("inc", "m0")}
    assert w is not None
    closed, closure = close_incident(w)
    assert closure is not None
    assert {m.customer_id for m in closure.notify} == {f"cust{i}" for i in range(20)}
    assert len(closure.message_ids) == 20
    assert closed.incident_id is None


def test_one_customer_repeating_is_not_an_incident() -> None:
    w: IncidentWindow | None = None
    for i in range(10):
        w, d = observe(
            w,
            "QUALITY|store:S12",
            classified(f"m{i}", "same", STALE_RU[0]),
            T0,
            similarity_required=False,
        )
        assert d.incident_id is None and d.customers == 1


def test_reports_spread_beyond_window_do_not_open() -> None:
    w: IncidentWindow | None = None
    cfg = IncidentConfig(threshold=5, window_s=1800)
    for i in range(10):
        w, d = observe(
            w,
            "QUALITY|store:S12",
            classified(f"m{i}", f"c{i}", STALE_RU[0]),
            T0 + timedelta(hours=i),
            cfg,
            similarity_required=False,
        )
        assert d.incident_id is None
    assert w is not None and len(w.reports) == 1
    assert is_idle(w, T0 + timedelta(hours=20), cfg)


def test_without_store_reports_must_look_alike() -> None:
    w: IncidentWindow | None = None
    different = [
        "My card payment failed",
        "How do I pay by invoice?",
        "Payment page shows error 500",
        "Can I pay with PayPal?",
        "I was charged twice",
        "Refund the double charge",
    ]
    for i, text in enumerate(different):
        m = classified(f"d{i}", f"c{i}", text, store=None, label="payment_issue")
        [(key, sim)] = bucket_keys(m)
        assert sim is True
        w, d = observe(w, key, m, T0 + timedelta(minutes=i))
        assert d.incident_id is None
    w2: IncidentWindow | None = None
    for i in range(6):
        text = f"Payment page shows error 500 when I pay for order {1000 + i}"
        m = classified(f"s{i}", f"c{i}", text, store=None, label="payment_issue")
        w2, d = observe(w2, "QUALITY|payment_issue", m, T0 + timedelta(minutes=i))
    assert d.incident_id is not None


def test_a_replay_decides_as_the_first_pass_did() -> None:
    w: IncidentWindow | None = None
    first: dict[str, tuple[str | None, bool]] = {}
    for i in range(7):
        w, d = observe(
            w, "k", classified(f"m{i}", f"c{i}", STALE_RU[0]), T0, similarity_required=False
        )
        first[f"m{i}"] = (d.incident_id, d.is_new)
    assert w is not None
    assert [first[f"m{i}"][1] for i in range(7)] == [False] * 4 + [True, False, False]
    for i in range(7):  # early reports stay outside; the opener opens again (same ids)
        w2, d2 = observe(
            w, "k", classified(f"m{i}", f"c{i}", STALE_RU[0]), T0, similarity_required=False
        )
        assert w2 == w and (d2.incident_id, d2.is_new) == first[f"m{i}"]


def test_close_without_incident_is_noop() -> None:
    w = IncidentWindow(key="k")
    assert close_incident(w) == (w, None)


POLICY = IncidentPolicy(
    name="freshness",
    categories=["QUALITY"],
    threshold=5,
    window_minutes=30,
    group="store_directors",
    template="check_freshness",
)


def test_a_message_goes_to_the_one_bucket_its_policy_covers() -> None:
    m = classified("m1", "c1", STALE_RU[0])
    signal = signal_for(m, [POLICY])
    assert signal is not None and signal.message == m
    assert (signal.bucket, signal.similarity_required) == ("QUALITY|store:S12", False)
    assert (signal.threshold, signal.window_s) == (5, 1800)
    other = POLICY.model_copy(update={"categories": ["DELIVERY"]})
    assert signal_for(m, [other]) is None  # no policy covers it: straight to route
    two = m.model_copy(update={"entities": [*m.entities, Entity(kind="store", value="S07")]})
    signal = signal_for(two, [POLICY])
    assert signal is not None and signal.bucket == "QUALITY|store:S07"  # decided in one bucket
    assert not signal.count_only


def test_a_store_policy_takes_only_messages_that_name_a_store() -> None:
    """A clause such as "I bought a product" read as a quality complaint names no store: it
    must not count toward a store incident (a fault run broadcast to every director so)."""
    m = classified("m1", "c1", STALE_RU[0])
    storeless = m.model_copy(update={"entities": [e for e in m.entities if e.kind != "store"]})
    assert signal_for(storeless, [POLICY]) is None
    by_category = POLICY.model_copy(update={"bucket_by": ["category"]})
    signal = signal_for(storeless, [by_category])
    assert signal is not None and signal.similarity_required
    assert signal.bucket == f"QUALITY|{m.intents[0].label}"


def test_twelve_reporters_of_one_store_one_incident_linked_after_it_opened() -> None:
    """The detector's steps for one bucket: whichever worker owns the bucket's partition
    sees every reporter, so the decisions are these, whatever the number of workers."""
    window: IncidentWindow | None = None
    routed: list[ClassifiedMessage] = []
    for i in range(12):
        m = classified(f"m{i}", f"c{i}", STALE_RU[i % 4])
        m = m.model_copy(update={"similarity": Similarity(case_id=derive_id("case", f"m{i}"))})
        signal = signal_for(m, [POLICY])
        assert signal is not None and signal.bucket == "QUALITY|store:S12"
        window, out = decide(window, signal)
        routed.append(out)
    sims = [m.similarity for m in routed]
    assert [s.incident_new for s in sims] == [False] * 4 + [True] + [False] * 7
    assert {s.incident_id for s in sims[4:]} == {derive_id("inc", "m0")}
    assert all(s.incident_id is None for s in sims[:4])  # routed before it opened
    assert all(s.case_id == derive_id("case", f"m{i}") for i, s in enumerate(sims))
    assert window is not None
    _, closure = close_incident(window)
    assert closure is not None and len(closure.notify) == 12


def test_a_duplicate_passes_the_detector_untouched() -> None:
    dup = classified("m9", "c1", STALE_RU[0]).model_copy(
        update={"similarity": Similarity(duplicate_of="m1", case_id="case_1")}
    )
    signal = signal_for(dup, [POLICY])
    assert signal is not None
    assert decide(None, signal) == (None, dup)


def _through_detector(
    window: IncidentWindow | None, ids: range, at: datetime = T0
) -> tuple[IncidentWindow | None, list[Similarity]]:
    sims = []
    for i in ids:
        m = classified(f"m{i}", f"c{i}", STALE_RU[i % 4])
        m = m.model_copy(update={"inbound": m.inbound.model_copy(update={"received_at": at})})
        signal = signal_for(m, [POLICY])
        assert signal is not None
        window, out = decide(window, signal)
        sims.append(out.similarity)
    return window, sims


def test_reports_after_the_incidents_resolution_are_not_linked_to_it_and_count_anew() -> None:
    """The keeper tells the detector (IncidentResolved): a complaint after the resolution is
    a new problem, routed on its own (its director hears of it), not answered with the old
    resolution; five new reporters open a new incident."""
    window, sims = _through_detector(None, range(7))
    incident = derive_id("inc", "m0")
    assert {s.incident_id for s in sims[4:]} == {incident}
    assert {s.incident_bucket for s in sims[4:]} == {"QUALITY|store:S12"}
    assert all(s.incident_bucket is None for s in sims[:4])  # decided outside any incident
    bucket = "QUALITY|store:S12"

    def resolved(incident_id: str) -> IncidentResolved:
        return IncidentResolved(resolution_id="r", bucket=bucket, incident_id=incident_id, at=T0)

    assert resolve(window, resolved("inc_other")) == window  # not this bucket's incident
    assert resolve(None, resolved(incident)) is None
    closed = resolve(window, resolved(incident))
    assert closed is not None and closed.incident_id is None
    assert resolve(closed, resolved(incident)) == closed  # a resolution sent again

    later = T0 + timedelta(minutes=5)
    after, new_sims = _through_detector(closed, range(7, 12), at=later)
    assert [s.incident_id for s in new_sims[:4]] == [None] * 4  # routed on their own
    # A new incident of its own (its id from its earliest report, ties by message id).
    assert new_sims[4].incident_new and new_sims[4].incident_id == derive_id("inc", "m10")

    # The closed incident's window is kept for replays while its reports are live.
    assert not is_idle(closed, T0 + timedelta(minutes=29))
    assert is_idle(closed, T0 + timedelta(minutes=31))
    # Replays of messages decided before the resolution: as their first pass was.
    replayed_window, replayed = _through_detector(after, range(7))
    assert replayed_window == after
    assert [(s.incident_id, s.incident_new) for s in replayed] == [
        (s.incident_id, s.incident_new) for s in sims
    ]


def test_a_message_naming_two_stores_counts_toward_both_and_is_decided_in_the_first() -> None:
    """Three customers complain about S12, one about S07 and S12 together, one more about
    S12: five customers, so the incident opens (the two-store message counted in S12's window
    without being decided there: its own route goes by its S07 decision)."""
    window: IncidentWindow | None = None
    forwarded: list[ClassifiedMessage] = []
    for i in range(5):
        m = classified(f"m{i}", f"c{i}", STALE_RU[i % 4])
        if i == 3:
            m = m.model_copy(update={"entities": [*m.entities, Entity(kind="store", value="S07")]})
        signals = signals_for(m, [POLICY])
        if i == 3:
            assert [(s.bucket, s.count_only) for s in signals] == [
                ("QUALITY|store:S07", False),
                ("QUALITY|store:S12", True),
            ]
            _, out = decide(None, signals[0])
            assert out.similarity.incident_id is None  # S07: one customer
            forwarded.append(out)
            signals = signals[1:]
        [signal] = signals
        window, out = decide(window, signal)
        if signal.count_only:
            assert out == m  # unchanged: the detector does not forward it
            again, _ = decide(window, signal)  # a replay counts once
            assert again == window
        else:
            forwarded.append(out)
    assert window is not None and len({r.customer_id for r in window.reports}) == 5
    assert [m.similarity.incident_new for m in forwarded] == [False] * 4 + [True]
    assert forwarded[-1].message_id == "m4"
