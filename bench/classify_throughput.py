"""Classification throughput in messages/s on one core, in batches.

    python bench/classify_throughput.py [--messages 20000] [--batch 256]

Messages: Bitext utterances and our Russian seed phrasings, a third of them joined into
two-request messages, wrapped as InboundMessage with a profile. Two measurements on the same
texts and batches, single thread (BLAS limited to 1 thread):
* baseline: the bare estimator (TF-IDF vectorizer + linear model ``predict``) on whole texts;
* full: ``Classifier.classify_batch`` (split candidates + one vectorized predict over all
  segments, entities, rule tags, sentiment, priority, building ClassifiedMessage models).
The ratio full/baseline shows what the stage costs on top of the bare model.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime

from threadpoolctl import threadpool_limits

from pipeline.classify.core import Classifier
from pipeline.classify.model import default_model, default_training_set
from pipeline.config import Settings
from pipeline.domain.tagging import TagRule
from pipeline.domain.workflow import Store
from pipeline.events import Channel, CustomerProfile, InboundMessage


def as_message(i: int, text: str, language: str, now: datetime) -> InboundMessage:
    """The i-th benchmark message: a Telegram message of one of 500 gold-tier customers."""
    return InboundMessage(
        message_id=f"m{i}",
        channel=Channel.telegram,
        channel_message_id=str(i),
        customer_id=f"c{i % 500}",
        profile=CustomerProfile(customer_id=f"c{i % 500}", tier="gold"),
        text=text,
        language=language,
        received_at=now,
    )


def build_messages(n: int, seed: int) -> list[InboundMessage]:
    ts = default_training_set()
    rng = random.Random(seed)
    pool = list(zip(ts.texts, ts.languages, strict=True))
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        text, lang = rng.choice(pool)
        if i % 3 == 0:
            other, _ = rng.choice(pool)
            text = f"{text.rstrip('.!?')}, {'а ещё' if lang == 'ru' else 'and also'} {other}"
        out.append(as_message(i, text, lang, now))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="classification throughput")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = default_model(Settings())
    classifier = Classifier(
        model,
        stores=[Store(code=f"S{i:03d}", address=f"ул. Садовая, {i}") for i in range(1, 51)],
        tag_rules=[
            TagRule(tag="food_safety", keywords={"ru": ["просроч", "несвеж"], "en": ["expired"]})
        ],
    )
    msgs = build_messages(args.messages, args.seed)
    texts = [m.text for m in msgs]
    batches = [range(i, min(i + args.batch, len(msgs))) for i in range(0, len(msgs), args.batch)]
    estimator = model._estimator  # the bare sklearn pipeline, for the baseline
    contacts = {f"c{i}": i % 3 for i in range(500)}
    with threadpool_limits(limits=1):
        estimator.predict(texts[: args.batch])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            estimator.predict([texts[i] for i in b])
        base = time.perf_counter() - t0
        classifier.classify_batch(msgs[: args.batch])
        t0 = time.perf_counter()
        for b in batches:
            classifier.classify_batch([msgs[i] for i in b], recent_contacts=contacts)
        full = time.perf_counter() - t0
    n = len(msgs)
    sys.stdout.write(
        f"{n} messages in batches of {args.batch}, 1 thread, model {model.version}\n"
        f"baseline (vectorizer + predict): {n / base:,.0f} msg/s\n"
        f"Classifier.classify_batch:       {n / full:,.0f} msg/s\n"
        f"ratio full / baseline:           {base / full:.2f}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
