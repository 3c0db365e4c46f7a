"""The classify stage's pure core: InboundMessage batch → ClassifiedMessage batch.

One vectorized model call per batch covers every message's whole text and all its candidate
segments (``split.split_batch``); the rest (entities, rule tags, sentiment, priority) is plain
per-message work. No Kafka here: the Faust agent takes batches from the stream and calls
``Classifier.classify_batch``.

Tags of a message, in this order without repeats: the categories of its intents, its intent
labels, the tags of the rules that fire, ``unknown`` when any part abstained, ``lang:<code>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

from pipeline.classify.entities import StoreMatcher, extract_entities
from pipeline.classify.features import with_fast_features
from pipeline.classify.model import UNKNOWN, IntentModel, default_model
from pipeline.classify.priority import score_priority
from pipeline.classify.sentiment import negative_sentiment
from pipeline.classify.split import Part, split_batch
from pipeline.config import Settings
from pipeline.domain.priority_weights import PriorityWeights
from pipeline.domain.tagging import TagRule, apply_tag_rules
from pipeline.domain.text import model_language
from pipeline.domain.workflow import Store
from pipeline.events import ClassifiedMessage, Entity, InboundMessage, Similarity, utcnow

log = logging.getLogger(__name__)

#: Categories whose requests concern a physical store (the customer's home store is assumed
#: when the text names none).
STORE_CATEGORIES = frozenset({"STORE_QUALITY"})


class Classifier:
    """Model + rules + store directory + priority weights, applied to batches."""

    def __init__(
        self,
        model: IntentModel,
        *,
        tag_rules: Sequence[TagRule] = (),
        stores: Sequence[Store] = (),
        weights: PriorityWeights | None = None,
        split_threshold: float = 0.6,
    ) -> None:
        self.model = model
        self.tag_rules = tuple(tag_rules)
        self.stores = tuple(stores)
        self._store_matcher = StoreMatcher(self.stores)
        self.weights = weights or PriorityWeights()
        self.split_threshold = split_threshold

    @property
    def version(self) -> str:
        """Model version id, carried on every ClassifiedMessage."""
        return self.model.version

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        tag_rules: Sequence[TagRule] = (),
        stores: Sequence[Store] = (),
        weights: PriorityWeights | None = None,
    ) -> Classifier:
        """Load ``settings.model_path`` when set, else the default model (trained once)."""
        if settings.model_path is not None:
            model = IntentModel.load(settings.model_path)
        else:
            model = default_model(settings)
        log.info("classifier model %s loaded", model.version)
        # the same decisions, its TF-IDF features computed faster (pipeline/domain/tfidf.py)
        fast = with_fast_features(model)
        return cls(fast, tag_rules=tag_rules, stores=stores, weights=weights)

    def classify_batch(
        self,
        messages: Sequence[InboundMessage],
        *,
        now: datetime | None = None,
        recent_contacts: Mapping[str, int] | None = None,
        similarity: Sequence[Similarity] | None = None,
    ) -> list[ClassifiedMessage]:
        """Classify a batch; ``recent_contacts``: customer_id → contacts in the last N days;
        ``similarity``: each message's dedup decision, set on its ClassifiedMessage (the
        agent's; set here, the message is validated once instead of copied after)."""
        if not messages:
            return []
        at = now or utcnow()
        # an empty body (e.g. a voicemail without transcript) is read from its subject
        in_body = [bool(m.text.strip()) for m in messages]
        texts = [m.text if m.text.strip() else (m.subject or "") for m in messages]
        parts_of = split_batch(self.model, texts, split_threshold=self.split_threshold)
        contacts = recent_contacts or {}
        sims: Sequence[Similarity | None] = (
            similarity if similarity is not None else [None] * len(messages)
        )
        out: list[ClassifiedMessage] = []
        for msg, text, parts, body, sim in zip(
            messages, texts, parts_of, in_body, sims, strict=True
        ):
            language = model_language(text, msg.language)
            # the intents as dicts, validated once with the ClassifiedMessage (cheaper than
            # an Intent and a Span each first: this runs on every message)
            intents = [
                {
                    "label": p.label,
                    "category": p.category,
                    "confidence": min(1.0, max(0.0, p.confidence)),
                    "span": {"start": p.start, "end": p.end} if body else {"start": 0, "end": 0},
                    "text": text[p.start : p.end] if body else "",
                }
                for p in parts
            ]
            rule_text = f"{msg.subject}\n{msg.text}" if msg.subject else msg.text
            rule_tags = apply_tag_rules(rule_text, language, self.tag_rules)
            entities = extract_entities(msg.text, stores=self._store_matcher, now=msg.sent_at or at)
            home = msg.profile.home_store if msg.profile else None
            if (
                home
                and any(p.category in STORE_CATEGORIES for p in parts)
                and not any(e.kind == "store" for e in entities)
            ):
                entities.append(Entity(kind="store", value=home, span=None))
            priority = score_priority(
                rule_text,
                language,
                tier=msg.profile.tier if msg.profile else None,
                channel=msg.channel.value,
                recent_contacts=contacts.get(msg.customer_id, 0),
                sentiment=negative_sentiment(rule_text),
                weights=self.weights,
                tags=rule_tags,
            )
            fields = {
                "message_id": msg.message_id,
                "customer_id": msg.customer_id,
                "inbound": msg,
                "intents": intents,
                "tags": _tags(parts, rule_tags, language),
                "entities": entities,
                "priority": priority,
                "model_version": self.version,
                "classified_at": at,
            }
            if sim is not None:
                fields["similarity"] = sim
            out.append(ClassifiedMessage.model_validate(fields))
        return out


def _tags(parts: Sequence[Part], rule_tags: Sequence[str], language: str) -> list[str]:
    """A message's tags in the module doc's order, without repeats."""
    tags: list[str] = []
    for tag in (
        *(p.category for p in parts if p.label != UNKNOWN),
        *(p.label for p in parts if p.label != UNKNOWN),
        *rule_tags,
        *([UNKNOWN] if any(p.label == UNKNOWN for p in parts) else []),
        f"lang:{language}",
    ):
        if tag not in tags:
            tags.append(tag)
    return tags
