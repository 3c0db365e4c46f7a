"""Weights of the priority score: the ``priority`` section of the workflow file.

The classifier computes the score (``pipeline.classify.priority``); the weights and word
lists are configuration, validated with the rest of the workflow (``pipeline.domain.workflow``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.domain.tagging import valid_regexes

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
        return valid_regexes(value)
