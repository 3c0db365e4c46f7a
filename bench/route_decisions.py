"""Routing decisions per second of ``route_message`` over many ClassifiedMessages.

Builds N hand-made classified messages (a mix: the seed's two-intent message in Russian,
single-intent Bitext-style English requests, a duplicate, an unmatched intent) and times

* baseline: building just the Outcome for each message (the least any router must do);
* route_message with the default workflow (rules, sub-requests with SLA deadlines,
  acknowledgement, case state, trace).

Usage: python bench/route_decisions.py [--n 20000] [--repeat 3]
Prints decisions/s for both and the ratio. Single process, single core.

``--stage``: the route agent's CPU per message instead, over realistic messages: the
default classifier's ClassifiedMessages of pipeline_throughput's texts and customers (Bitext
English, ``customer i % 997``), routed as ``RouteAgent.handle_batch`` does after decoding:
each batch decoded from its JSON (``codec.decode``, as ``decode_record``), one KB search
per batch, then per message the customer's cases (``CustomerCases``),
``find_case``, ``route_message``, every output encoded (``codec.encode``, as ``Context.send``)
and the case stored. Each pass starts from an empty table; prints CPU ms per message
(``time.process_time``) for each pass. ``--cache FILE`` keeps the classified messages (JSON
lines) so two trees are timed on the same input. The collector is set as the worker sets it
once loaded (``runtime.tune_gc``); ``--default-gc`` keeps CPython's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from pipeline.codec import decode, encode
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

STAGE_BATCH = 64

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


def realistic(n: int, cache: Path | None) -> list[bytes]:
    """pipeline_throughput's first ``n`` texts and customers through the default classifier,
    as the JSON records the route agent reads."""
    if cache is not None and cache.exists():
        lines = cache.read_bytes().splitlines()
        if len(lines) >= n:
            return lines[:n]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipeline_throughput import make, texts  # the throughput benchmark's own messages

    from pipeline.classify.core import Classifier
    from pipeline.config import Settings

    s = Settings()
    wf = load_workflow(s.rules_path)
    clf = Classifier.from_settings(s, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority)
    pool = texts()
    random.Random(1).shuffle(pool)
    inbound = [make(pool[i % len(pool)], i, "route") for i in range(n)]
    msgs = []
    for i in range(0, n, STAGE_BATCH):
        msgs += clf.classify_batch(inbound[i : i + STAGE_BATCH])
    records = [encode(m) for m in msgs]
    if cache is not None:
        cache.write_bytes(b"\n".join(records))
    return records


class _Sink:
    """The slice of ``Context`` the route agent uses: every output encoded, none sent."""

    def __init__(self, digest: bool = False) -> None:
        from pipeline.config import Settings
        from pipeline.metrics import Metrics

        self.settings = Settings()
        self.metrics = Metrics()
        self.records = 0
        self.digest = hashlib.sha256() if digest else None
        self.table: dict[str, str] = {}  # the agent's customer-cases table

    async def send(self, name: str, key: str | None, event: Any) -> None:
        data = encode(event)
        self.records += 1
        if self.digest is not None:
            self.digest.update(f"{name}\0{key}\0".encode() + data + b"\0")


def stage_pass(msgs: list[bytes], sink: _Sink | None = None) -> tuple[float, int]:
    """One pass of the route agent over ``msgs`` from an empty table: (CPU s, records)."""
    from pipeline.live_workflow import LiveWorkflow
    from pipeline.route.agents import CustomerCases, RouteAgent, Runtime

    sink = sink or _Sink()
    ctx = cast(Any, sink)
    agent = RouteAgent(
        ctx, Runtime(ctx, LiveWorkflow(sink.settings.rules_path)), CustomerCases(sink.table)
    )

    async def run() -> None:
        for i in range(0, len(msgs), STAGE_BATCH):
            batch = [decode(ClassifiedMessage, m) for m in msgs[i : i + STAGE_BATCH]]
            hits = agent.kb_hits(list(batch))
            for j, cm in enumerate(batch):
                await agent.route(cm, hits.get(j))

    t0 = time.process_time()
    asyncio.run(run())
    return time.process_time() - t0, sink.records


def digest_extra(cache: Path | None) -> list[bytes]:
    """More messages for ``--digest``, beyond the English bench texts: 1,500 of the default
    classifier's Russian training texts and the demo samples (both classified, a few
    customers writing often: follow-ups), then the hand-made mix of ``build`` (a two-intent
    Russian message naming a store, duplicates, an unknown intent) with a mass incident on
    every tenth message (its first report opens it). Cached beside ``cache``."""
    extra = cache.with_name(cache.stem + "-digest.jsonl") if cache is not None else None
    if extra is not None and extra.exists():
        return extra.read_bytes().splitlines()
    import json

    from pipeline.classify.core import Classifier
    from pipeline.classify.model import default_training_set
    from pipeline.config import PACKAGE_DIR, Settings

    s = Settings()
    wf = load_workflow(s.rules_path)
    clf = Classifier.from_settings(s, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority)
    ts = default_training_set()
    texts = [(t, "ru") for t, lang in zip(ts.texts, ts.languages, strict=True) if lang == "ru"]
    samples = (PACKAGE_DIR / "resources" / "samples" / "messages.jsonl").read_text()
    texts = texts[:1500] + [
        (r["text"], r["language"]) for r in map(json.loads, samples.splitlines()) if r
    ]
    inbound = [
        InboundMessage(
            message_id=derive_id("msg", "digest", str(i)),
            channel=Channel.telegram,
            channel_message_id=str(i),
            customer_id=f"ru{i % 300}",
            profile=CustomerProfile(customer_id=f"ru{i % 300}", name="Анна"),
            text=text,
            language=lang,
            received_at=NOW + timedelta(seconds=i),
            reply_to={"chat_id": "1"},
        )
        for i, (text, lang) in enumerate(texts)
    ]
    msgs: list[ClassifiedMessage] = []
    for i in range(0, len(inbound), STAGE_BATCH):
        msgs += clf.classify_batch(inbound[i : i + STAGE_BATCH], now=NOW)
    for i, m in enumerate(build(500)):
        if i % 10 == 0:  # SAMPLES[0]: the store's quality, the incident policy's category
            sim = m.similarity.model_copy(
                update={
                    "incident_id": f"inc_{i // 100}",
                    "incident_new": i % 100 == 0,
                    "incident_bucket": "STORE_QUALITY:SPB-012",
                }
            )
            m = m.model_copy(update={"similarity": sim})
        msgs.append(m)
    records = [encode(m) for m in msgs]
    if extra is not None:
        extra.write_bytes(b"\n".join(records))
    return records


def outputs_digest(msgs: list[bytes]) -> str:
    """sha256 of every record a pass sends (topic, key, bytes) and of its table at the end,
    on a stepped clock, so two trees can be shown to send and keep the same."""
    from pipeline.route import agents

    start = decode(ClassifiedMessage, msgs[0]).inbound.received_at
    ticks = itertools.count()
    real = agents.utcnow
    agents.utcnow = lambda: start + timedelta(milliseconds=next(ticks))
    try:
        sink = _Sink(digest=True)
        stage_pass(msgs, sink)
    finally:
        agents.utcnow = real
    assert sink.digest is not None
    for key, value in sorted(sink.table.items()):
        sink.digest.update(f"{key}\0{value}\0".encode())
    return sink.digest.hexdigest()


def stage(args: argparse.Namespace) -> int:
    msgs = realistic(args.n, args.cache)
    if args.digest:
        sys.stdout.write(f"outputs sha256 {outputs_digest(msgs)}\n")
        wide = outputs_digest(msgs + digest_extra(args.cache))
        sys.stdout.write(f"outputs sha256 {wide} (with Russian, duplicates, incidents)\n")
    if not args.default_gc:  # as the worker does once loaded (runtime.tune_gc)
        from pipeline.runtime import tune_gc

        tune_gc()
    runs = []
    for _ in range(args.repeat):
        cpu, records = stage_pass(msgs)
        runs.append(cpu * 1000 / len(msgs))
        sys.stdout.write(f"route stage: {runs[-1]:.3f} ms CPU per message ({records} records)\n")
    sys.stdout.write(
        f"route stage over {len(msgs)} messages ({'default' if args.default_gc else 'worker'} "
        f"gc): median {statistics.median(runs):.3f} ms, "
        f"min {min(runs):.3f}, max {max(runs):.3f} ms CPU per message\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stage", action="store_true", help="route agent CPU ms per message")
    ap.add_argument("--cache", type=Path, help="--stage: classified messages (JSON lines)")
    ap.add_argument("--digest", action="store_true", help="--stage: sha256 of every output")
    ap.add_argument(
        "--default-gc", action="store_true", help="--stage: CPython's collector settings"
    )
    args = ap.parse_args(argv)
    if args.stage:
        return stage(args)
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
