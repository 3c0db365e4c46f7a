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

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.classify.sentiment import Sentiment, negative_sentiment
from pipeline.events import Priority, PriorityComponent

_DEFAULT_URGENCY: dict[str, list[str]] = {
    "ru": [r"срочн\w*", r"немедленн\w*", r"как можно скорее", r"сейчас же", r"безотлагательн\w*",
           r"экстренн\w*", r"авари\w*", r"опасн\w*", r"отрав\w*", r"травм\w*", r"горит"],
    "en": [r"urgent\w*", r"asap", r"immediately", r"right now", r"emergenc\w*",
           r"as soon as possible", r"dangerous", r"poison\w*", r"injur\w*", r"food poisoning"],
}  # fmt: skip
_DEFAULT_LEGAL: dict[str, list[str]] = {
    "ru": [r"суд(?:а|е|у|ом|ы|ебн\w*)?", r"прокуратур\w*", r"роспотребнадзор\w*", r"юрист\w*",
           r"адвокат\w*", r"иск(?:а|ом|овое\w*)?", r"полици\w*", r"защит\w* прав потребител\w*",
           r"зозпп", r"центробанк\w*", r"цб рф", r"банк россии", r"досудебн\w* претензи\w*",
           r"омбудсмен\w*", r"фас"],
    "en": [r"lawyers?", r"attorneys?", r"sue", r"suing", r"lawsuit", r"court", r"legal action",
           r"chargebacks?", r"regulators?", r"ombudsman", r"trading standards", r"small claims",
           r"police", r"consumer protection", r"better business bureau"],
}  # fmt: skip


class PriorityWeights(BaseModel):
    """Weights of the priority score (configuration)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: float = Field(default=10.0, description="Points every message starts with.")
    tier: dict[str, float] = Field(
        default_factory=lambda: {"standard": 0.0, "silver": 5.0, "gold": 12.0, "vip": 20.0},
        description="Points per customer tier.",
    )
    sentiment: float = Field(default=25.0, ge=0, description="Points × negative sentiment 0–1.")
    anger: float = Field(default=5.0, ge=0, description="Extra points when it reads as anger.")
    urgency: float = Field(default=15.0, ge=0, description="Points when urgency words appear.")
    urgency_patterns: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in _DEFAULT_URGENCY.items()},
        description="Language → regexes of urgency words ('*' = any language).",
    )
    legal_threat: float = Field(default=30.0, ge=0, description="Points for legal threats.")
    legal_patterns: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in _DEFAULT_LEGAL.items()},
        description="Language → regexes of legal/regulator threats ('*' = any language).",
    )
    tags: dict[str, float] = Field(
        default_factory=dict,
        description="Points per message tag (the workflow's tag_rules), e.g. food_safety: 35.",
    )
    repeat_contact: float = Field(default=5.0, ge=0, description="Points per recent contact.")
    repeat_contact_max: float = Field(default=15.0, ge=0, description="Cap of those points.")
    repeat_window_days: int = Field(
        default=7, ge=1, description="N: contacts within N days count (the caller counts them)."
    )
    channel: dict[str, float] = Field(
        default_factory=lambda: {"voice": 5.0, "social": 10.0, "sms": 3.0, "telegram": 2.0},
        description="Points per channel (public social posts weigh more).",
    )
    cutoffs: dict[str, float] = Field(
        default_factory=lambda: {"P1": 70.0, "P2": 45.0, "P3": 25.0},
        description="Lowest score of P1, P2 and P3; lower is P4.",
    )

    @field_validator("cutoffs")
    @classmethod
    def _ordered(cls, value: dict[str, float]) -> dict[str, float]:
        missing = {"P1", "P2", "P3"} - set(value)
        if missing:
            raise ValueError(f"cutoffs need P1, P2, P3 (missing {sorted(missing)})")
        if not value["P1"] >= value["P2"] >= value["P3"]:
            raise ValueError("cutoffs must satisfy P1 ≥ P2 ≥ P3")
        return value

    @field_validator("tags")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if v < 0)
        if bad:
            raise ValueError(f"tag points must be ≥ 0 (negative: {bad})")
        return value

    @field_validator("urgency_patterns", "legal_patterns")
    @classmethod
    def _valid(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for patterns in value.values():
            for p in patterns:
                try:
                    re.compile(p)
                except re.error as exc:
                    raise ValueError(f"bad regex {p!r}: {exc}") from exc
        return value


@lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(patterns) + r")(?!\w)", re.IGNORECASE)


_TABLES: dict[int, tuple[dict[str, list[str]], dict[str, re.Pattern[str] | None]]] = {}


def _find(text: str, language: str, table: dict[str, list[str]]) -> list[str]:
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
    for m in rx.finditer(text):
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
    parts: list[PriorityComponent] = []

    def add(name: str, points: float, reason: str) -> None:
        if points:
            parts.append(PriorityComponent(name=name, points=round(points, 2), reason=reason))

    add("base", w.base, "every message")
    tier_name = tier or "standard"
    add("tier", w.tier.get(tier_name, 0.0), f"customer tier {tier_name}")
    if sentiment.score > 0:
        cues = ", ".join(sentiment.cues[:5])
        add("sentiment", w.sentiment * sentiment.score, f"negative {sentiment.score:.2f} ({cues})")
    if sentiment.anger:
        add("anger", w.anger, "reads as anger")
    urgent = _find(text, language, w.urgency_patterns)
    if urgent:
        add("urgency", w.urgency, "urgency words: " + ", ".join(urgent[:5]))
    legal = _find(text, language, w.legal_patterns)
    if legal:
        add("legal_threat", w.legal_threat, "legal/regulator threat: " + ", ".join(legal[:5]))
    for tag in dict.fromkeys(tags):
        if tag in w.tags and all(p.name != tag for p in parts):
            add(tag, w.tags[tag], f"tag {tag}")
    if recent_contacts > 0:
        add(
            "repeat_contact",
            min(w.repeat_contact * recent_contacts, w.repeat_contact_max),
            f"{recent_contacts} earlier contact(s) within {w.repeat_window_days} days",
        )
    if channel:
        add("channel", w.channel.get(channel, 0.0), f"channel {channel}")
    total = sum(p.points for p in parts)
    score = min(100.0, max(0.0, total))
    if score != total:
        add("cap", score - total, "score is clamped to 0–100")
    score = round(score, 2)
    return Priority(score=score, level=level_of(score, w), components=parts)
