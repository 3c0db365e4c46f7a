"""Hand-made ClassifiedMessages, the default workflow and a minimal one, for the route tests.

Tests get them through the ``kit`` fixture (a ``RouteKit``): ``kit.now``, ``kit.workflow``,
``kit.intent(...)``, ``kit.message(...)``, ``kit.seed_message(...)``, ``kit.minimal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pytest

from pipeline.config import DEFAULT_CONFIG_DIR
from pipeline.domain.workflow import Workflow, load_workflow
from pipeline.events import (
    Channel,
    ClassifiedMessage,
    CustomerProfile,
    Entity,
    InboundMessage,
    Intent,
    Priority,
    Similarity,
    Span,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)

# Tuesday 2026-03-03 10:00 Moscow time (07:00 UTC): inside every department's hours.
NOW = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)

SEED_RU = (
    "Добрый день. В магазине на Садовой, 12 продают несвежие огурцы. "
    "А ещё на кассе не списались бонусы с карты лояльности."
)


@lru_cache(maxsize=1)
def default_workflow() -> Workflow:
    return load_workflow(DEFAULT_CONFIG_DIR / "workflow.yaml")


def intent(text: str, part: str, label: str, category: str, confidence: float = 0.9) -> Intent:
    start = text.index(part)
    return Intent(
        label=label,
        category=category,
        confidence=confidence,
        span=Span(start=start, end=start + len(part)),
        text=part,
    )


def message(
    text: str,
    intents: list[Intent],
    *,
    entities: list[Entity] | None = None,
    language: str = "ru",
    channel: Channel = Channel.telegram,
    customer: str = "cust-1",
    name: str | None = "Анна",
    tier: str = "standard",
    level: str = "P3",
    score: float = 30.0,
    similarity: Similarity | None = None,
    tags: list[str] | None = None,
    key: str = "1",
) -> ClassifiedMessage:
    mid = derive_id("msg", channel.value, key, text)
    inbound = InboundMessage(
        message_id=mid,
        channel=channel,
        channel_message_id=key,
        customer_id=customer,
        profile=CustomerProfile(customer_id=customer, name=name, tier=tier),  # type: ignore[arg-type]
        text=text,
        language=language,
        received_at=NOW,
        reply_to={"chat_id": "42"},
    )
    return ClassifiedMessage(
        message_id=mid,
        customer_id=customer,
        inbound=inbound,
        intents=intents,
        tags=tags or [],
        entities=entities or [],
        priority=Priority(score=score, level=level),  # type: ignore[arg-type]
        similarity=similarity or Similarity(),
        model_version="test",
        classified_at=NOW,
    )


def seed_message(**kw: object) -> ClassifiedMessage:
    """The seed's worked example: store quality at Садовая 12 + loyalty bonus."""
    part1 = "В магазине на Садовой, 12 продают несвежие огурцы."
    part2 = "А ещё на кассе не списались бонусы с карты лояльности."
    store_at = SEED_RU.index("Садовой, 12")
    return message(
        SEED_RU,
        [
            intent(SEED_RU, part1, "product_quality", "STORE_QUALITY"),
            intent(SEED_RU, part2, "loyalty_points", "LOYALTY"),
        ],
        entities=[
            Entity(kind="store", value="SPB-012", span=Span(start=store_at, end=store_at + 11))
        ],
        **kw,  # type: ignore[arg-type]
    )


# A workflow with one rule, for the parser's and the live-reload tests.
MINIMAL = """\
version: 1
departments:
  triage: {kind: internal}
  loyalty-it: {kind: internal, hours: {timezone: Europe/Moscow}}
templates:
  ru: {acknowledgement: a, resolution: "{items}", incident_notice: c, survey_csat: d,
       survey_nps: e, triage: f}
rules:
  - name: loyalty
    when: {category: LOYALTY}
    then: [{type: internal, department: loyalty-it}]
"""


@dataclass(frozen=True)
class RouteKit:
    """The builders above, as one fixture value."""

    now: datetime = NOW
    seed_text: str = SEED_RU
    minimal: str = MINIMAL

    @property
    def workflow(self) -> Workflow:
        """The shipped default workflow (loaded once)."""
        return default_workflow()

    def intent(
        self, text: str, part: str, label: str, category: str, confidence: float = 0.9
    ) -> Intent:
        return intent(text, part, label, category, confidence)

    def message(self, text: str, intents: list[Intent], **kw: Any) -> ClassifiedMessage:
        return message(text, intents, **kw)

    def seed_message(self, **kw: Any) -> ClassifiedMessage:
        return seed_message(**kw)

    def resolved(
        self,
        case_id: str,
        sub_request_id: str,
        update_id: str,
        text: str,
        source: str = "department",
    ) -> TaskUpdate:
        """A department's (or ``source``'s) answer that resolves a sub-request, written now."""
        return TaskUpdate(
            update_id=update_id,
            sub_request_id=sub_request_id,
            case_id=case_id,
            status=TaskStatus.resolved,
            resolution=text,
            author="test",
            source=source,  # type: ignore[arg-type]
            at=utcnow(),
        )


@pytest.fixture(scope="session")
def kit() -> RouteKit:
    """Builders of route-test inputs (see the module docstring)."""
    return RouteKit()
