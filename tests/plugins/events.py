"""Builders of contract events shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.events import Entity, Priority, SubRequest, SubRequestKind

MakeSubRequest = Callable[..., SubRequest]

#: A card number (Luhn-valid) and a phone in the text, for the redaction checks.
CARD = "4276 1600 1234 5675"
RU_TEXT = (
    f"В магазине 0412 продают несвежие огурцы. Карта {CARD}, "
    "соседка видела то же, её телефон +7 916 123-45-67."
)


def _make_sub_request(**update: Any) -> SubRequest:
    base: dict[str, Any] = {
        "sub_request_id": "sr_0123456789abcdef01234567",
        "case_id": "case_89abcdef0123456789abcdef",
        "message_id": "msg_1",
        "customer_id": "cust_1",
        "kind": SubRequestKind.external,
        "department": "store_ops",
        "recipient": "director.0412@stores.example.com",
        "intent": "product_quality",
        "category": "STORE",
        "text": RU_TEXT,
        "full_text": RU_TEXT + " И бонусы не списались.",
        "entities": [
            Entity(kind="store", value="0412"),
            Entity(kind="loyalty_card", value="7000 1234 5678 9012"),
            Entity(kind="order", value="A-778"),
        ],
        "priority": Priority(score=62.0, level="P2"),
        "language": "ru",
        "sla_due_at": datetime(2026, 11, 27, 15, 30, tzinfo=UTC),
        "created_at": datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    }
    base.update(update)
    return SubRequest(**base)


@pytest.fixture(scope="session")
def make_sub_request() -> MakeSubRequest:
    """``make_sub_request(**changes)``: an external store-quality SubRequest in Russian (a card
    number and a phone in its text), with the given fields changed."""
    return _make_sub_request


@pytest.fixture(scope="session")
def card_number() -> str:
    """The card number in ``make_sub_request``'s default text."""
    return CARD
