"""Building inbound messages the way the Telegram adapter does, for the in-memory tiers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.events import CustomerProfile, InboundMessage
from pipeline.ingest.channels import parse_telegram
from pipeline.ingest.message import ParsedMessage, build_inbound

TelegramInbound = Callable[..., InboundMessage]

#: One complaint about the store on Садовая, 12 (SPB-012) in several wordings: a wave of them
#: from different customers is one incident (tests and bench/incident_workers.py).
STORE_COMPLAINTS = (
    "В магазине на Садовой, 12 продают несвежие огурцы",
    "На Садовой, 12 опять гнилые овощи на полке",
    "Магазин на Садовой 12: помидоры и огурцы испорченные, просроченные",
    "Садовая, 12 — несвежие овощи, огурцы мягкие и с плесенью",
)


def telegram_update(
    chat: int, msg_id: int, text: str, date: int, name: str, update_id: int
) -> dict[str, Any]:
    """A Telegram Bot API ``Update`` with a private-chat text message from a person."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": msg_id,
            "date": date,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": False, "first_name": name},
            "text": text,
        },
    }


def _telegram_inbound(
    settings: Settings, chat: int, msg_id: int, text: str, at: datetime, name: str = "Ирина"
) -> InboundMessage:
    """The InboundMessage the Telegram webhook makes of this update (customer ``tg-<chat>``)."""
    update = telegram_update(chat, msg_id, text, int(at.timestamp()), name, chat * 100 + msg_id)
    parsed = parse_telegram(update)
    assert isinstance(parsed, ParsedMessage), parsed
    profile = CustomerProfile(customer_id=f"tg-{chat}", name=name)
    return build_inbound(parsed, profile, settings, at)


@pytest.fixture(scope="session")
def telegram_inbound() -> TelegramInbound:
    """``telegram_inbound(settings, chat, msg_id, text, at, name="Ирина") -> InboundMessage``."""
    return _telegram_inbound


@pytest.fixture(scope="session")
def store_complaints() -> tuple[str, ...]:
    """Wordings of one complaint about the store SPB-012 (Садовая, 12)."""
    return STORE_COMPLAINTS
