"""Mass-incident detection (pipeline.classify.incidents)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.classify.incidents import (
    IncidentConfig,
    IncidentWindow,
    bucket_keys,
    close_incident,
    is_idle,
    observe,
)
from pipeline.events import (
    ClassifiedMessage,
    Entity,
    InboundMessage,
    Intent,
    Priority,
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


def test_replay_is_idempotent() -> None:
    w: IncidentWindow | None = None
    for i in range(5):
        w, d = observe(
            w, "k", classified(f"m{i}", f"c{i}", STALE_RU[0]), T0, similarity_required=False
        )
    assert w is not None and d.is_new
    w2, d2 = observe(w, "k", classified("m4", "c4", STALE_RU[0]), T0, similarity_required=False)
    assert w2 == w and not d2.is_new and d2.incident_id == d.incident_id


def test_close_without_incident_is_noop() -> None:
    w = IncidentWindow(key="k")
    assert close_incident(w) == (w, None)
