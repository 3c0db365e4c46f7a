"""Priority score 0–100 with its explanation, mapped to P1–P4.

score = base + tier + sentiment·score (+ anger) + urgency + legal/regulator threat
        + message tags (``tags``: e.g. food_safety) + repeat contacts (per contact, capped)
        + channel,
clamped to [0, 100]; each term is one ``PriorityComponent`` (a clamp adds a ``cap`` term, so the
components always add up to the score). Levels: P1 ≥ cutoffs["P1"], P2 ≥ cutoffs["P2"],
P3 ≥ cutoffs["P3"], else P4. All weights and word lists are configuration.

Tags are the classifier's rule tags (``tag_rules`` of the workflow: food_safety, legal_threat…);
``tags`` gives points per tag, so what the message is about feeds the score, not only how it
is written. A tag named like a built-in component (``legal_threat``, ``urgency``) counts once:
when the built-in patterns already scored it, the tag adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from pipeline.classify.sentiment import Sentiment, negative_sentiment
from pipeline.domain.priority_weights import PriorityWeights
from pipeline.domain.tagging import CaselessPattern, lowered
from pipeline.events import Priority


@lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> CaselessPattern | None:
    if not patterns:
        return None
    return CaselessPattern(r"(?<!\w)(?:" + "|".join(patterns) + r")(?!\w)")


_TABLES: dict[int, tuple[dict[str, list[str]], dict[str, CaselessPattern | None]]] = {}


def _find(text: str, language: str, table: dict[str, list[str]], low: str | None) -> list[str]:
    """The words of the table's patterns in the text, lower-cased, first occurrence of each
    (``low``: ``lowered(text)``, for all the tables)."""
    # compiled once per (table, language); the table object is kept alive by the cache entry
    cached = _TABLES.get(id(table))
    if cached is None or cached[0] is not table:
        if len(_TABLES) > 256:
            _TABLES.clear()
        cached = (table, {})
        _TABLES[id(table)] = cached
    if language not in cached[1]:
        patterns = tuple(table.get(language, [])) + tuple(table.get("*", []))
        if language not in table:  # unknown language: try all of them
            patterns = tuple(p for ps in table.values() for p in ps)
        cached[1][language] = _compiled(patterns)
    rx = cached[1][language]
    if rx is None:
        return []
    seen: list[str] = []
    for m in rx.finditer(text, low):
        word = m.group().lower()
        if word not in seen:
            seen.append(word)
    return seen


Level = Literal["P1", "P2", "P3", "P4"]


def level_of(score: float, weights: PriorityWeights) -> Level:
    """P1–P4 for a score."""
    levels: tuple[Level, ...] = ("P1", "P2", "P3")
    for level in levels:
        if score >= weights.cutoffs[level]:
            return level
    return "P4"


def score_priority(
    text: str,
    language: str,
    *,
    tier: str | None = None,
    channel: str | None = None,
    recent_contacts: int = 0,
    sentiment: Sentiment | None = None,
    weights: PriorityWeights | None = None,
    tags: Sequence[str] = (),
) -> Priority:
    """Priority of a message, one component per contribution; ``tags``: its rule tags."""
    w = weights or PriorityWeights()
    sentiment = sentiment if sentiment is not None else negative_sentiment(text)
    # the components as dicts, validated once with the Priority (a quarter less than a
    # PriorityComponent each and then the Priority: this runs on every message)
    parts: list[dict[str, Any]] = []

    def add(name: str, points: float, reason: str) -> None:
        if points:
            parts.append({"name": name, "points": round(points, 2), "reason": reason})

    add("base", w.base, "every message")
    tier_name = tier or "standard"
    add("tier", w.tier.get(tier_name, 0.0), f"customer tier {tier_name}")
    if sentiment.score > 0:
        cues = ", ".join(sentiment.cues[:5])
        add("sentiment", w.sentiment * sentiment.score, f"negative {sentiment.score:.2f} ({cues})")
    if sentiment.anger:
        add("anger", w.anger, "reads as anger")
    low = lowered(text)
    urgent = _find(text, language, w.urgency_patterns, low)
    if urgent:
        add("urgency", w.urgency, "urgency words: " + ", ".join(urgent[:5]))
    legal = _find(text, language, w.legal_patterns, low)
    if legal:
        add("legal_threat", w.legal_threat, "legal/regulator threat: " + ", ".join(legal[:5]))
    for tag in dict.fromkeys(tags):
        if tag in w.tags and all(p["name"] != tag for p in parts):
            add(tag, w.tags[tag], f"tag {tag}")
    if recent_contacts > 0:
        add(
            "repeat_contact",
            min(w.repeat_contact * recent_contacts, w.repeat_contact_max),
            f"{recent_contacts} earlier contact(s) within {w.repeat_window_days} days",
        )
    if channel:
        add("channel", w.channel.get(channel, 0.0), f"channel {channel}")
    total = sum(p["points"] for p in parts)
    score = min(100.0, max(0.0, total))
    if score != total:
        add("cap", score - total, "score is clamped to 0–100")
    score = round(score, 2)
    return Priority.model_validate(
        {"score": score, "level": level_of(score, w), "components": parts}
    )
