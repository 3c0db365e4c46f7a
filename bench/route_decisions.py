"""Routing decisions per second of ``route_message`` over many ClassifiedMessages.

Builds N hand-made classified messages (a mix: the seed's two-intent message in Russian,
single-intent Bitext-style English requests, a duplicate, an unmatched intent) and times

* baseline: building just the Outcome for each message (the least any router must do);
* route_message with the default workflow (rules, sub-requests with SLA deadlines,
  acknowledgement, case state, trace).

Usage: python bench/route_decisions.py [--n 20000] [--repeat 3]
Prints decisions/s for both and the ratio. Single process, single core.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from pipeline.config import DEFAULT_CONFIG_DIR
from pipeline.domain.workflow import load_workflow
from pipeline.events import (
    Channel,
    ClassifiedMessage,
    CustomerProfile,
    Entity,
    InboundMessage,
    Intent,
    Outcome,
    OutcomeKind,
    Priority,
    Similarity,
    Span,
    derive_id,
)
from pipeline.route.core import route_message

NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)

SAMPLES: list[tuple[str, str, list[tuple[str, str, str]], bool]] = [
    (
        "В магазине на Садовой, 12 продают несвежие огурцы. А ещё не списались бонусы.",
        "ru",
        [
            (
                "В магазине на Садовой, 12 продают несвежие огурцы.",
                "product_quality",
                "STORE_QUALITY",
            ),
            ("А ещё не списались бонусы.", "loyalty_points", "LOYALTY"),
        ],
        True,
    ),
    ("Where is my order 5521?", "en", [("Where is my order 5521?", "track_order", "ORDER")], False),
    (
        "I want a refund for the broken kettle",
        "en",
        [("I want a refund for the broken kettle", "get_refund", "REFUNDS")],
        False,
    ),
    (
        "Не могу оплатить заказ картой",
        "ru",
        [("Не могу оплатить заказ картой", "payment_issue", "PAYMENT")],
        False,
    ),
    ("asdf qwerty", "en", [("asdf qwerty", "unknown", "UNKNOWN")], False),
]


def build(n: int) -> list[ClassifiedMessage]:
    out = []
    for i in range(n):
        text, lang, parts, store = SAMPLES[i % len(SAMPLES)]
        mid = derive_id("msg", "bench", str(i))
        cust = f"c{i % 997}"
        intents = []
        for part, label, cat in parts:
            s = text.index(part)
            intents.append(
                Intent(
                    label=label,
                    category=cat,
                    confidence=0.9,
                    span=Span(start=s, end=s + len(part)),
                    text=part,
                )
            )
        ents = [Entity(kind="store", value="SPB-012")] if store else []
        sim = Similarity(duplicate_of="msg_x", case_id="case_x") if i % 50 == 49 else Similarity()
        inbound = InboundMessage(
            message_id=mid,
            channel=Channel.telegram,
            channel_message_id=str(i),
            customer_id=cust,
            profile=CustomerProfile(customer_id=cust, name="Анна"),
            text=text,
            language=lang,
            received_at=NOW,
            reply_to={"chat_id": "1"},
        )
        out.append(
            ClassifiedMessage(
                message_id=mid,
                customer_id=cust,
                inbound=inbound,
                intents=intents,
                entities=ents,
                priority=Priority(score=30, level="P3"),
                similarity=sim,
                model_version="bench",
                classified_at=NOW,
            )
        )
    return out


def baseline(msgs: list[ClassifiedMessage]) -> None:
    for m in msgs:
        Outcome(
            message_id=m.message_id,
            customer_id=m.customer_id,
            outcome=OutcomeKind.routed,
            case_id=derive_id("case", m.message_id),
            departments=["x"],
            stage="route",
            received_at=m.inbound.received_at,
            decided_at=NOW,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    wf = load_workflow(DEFAULT_CONFIG_DIR / "workflow.yaml")
    msgs = build(args.n)
    subs = 0

    def routed() -> None:
        nonlocal subs
        subs = 0
        for m in msgs:
            subs += len(route_message(m, wf, now=NOW).sub_requests)

    results = {}
    for name, fn in (
        ("baseline (Outcome only)", lambda: baseline(msgs)),
        ("route_message", routed),
    ):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        results[name] = args.n / best
        sys.stdout.write(
            f"{name:<26} {args.n / best:>10,.0f} decisions/s  "
            f"(best of {args.repeat}, {args.n} messages)\n"
        )
    ratio = results["baseline (Outcome only)"] / results["route_message"]
    sys.stdout.write(
        f"route_message is {ratio:.1f}x the cost of the baseline; "
        f"{subs} sub-requests per pass ({subs / args.n:.2f} per message)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
