"""A message with only a file reaches a person: the real Telegram parser, classifier and route.

Telegram Bot API ``Message`` with a ``photo`` (PhotoSize array) and no caption: the ingest
parser makes a request without text; the stage cores route it to the triage department
(a human looks at the photo), never auto-resolve or drop it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.classify.core import Classifier
from pipeline.config import Settings
from pipeline.domain.workflow import load_workflow
from pipeline.events import CustomerProfile
from pipeline.ingest.channels import parse_telegram
from pipeline.ingest.message import ParsedMessage, build_inbound
from pipeline.route.core import route_message

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_photo_only_message_goes_to_triage() -> None:
    settings = Settings()
    workflow = load_workflow(settings.rules_path)
    classifier = Classifier.from_settings(
        settings, tag_rules=workflow.tag_rules, stores=workflow.stores, weights=workflow.priority
    )
    update = {
        "update_id": 70001,
        "message": {
            "message_id": 12,
            "from": {"id": 31337, "is_bot": False, "first_name": "Олег", "language_code": "ru"},
            "chat": {"id": 31337, "type": "private"},
            "date": int(NOW.timestamp()),
            "photo": [
                {
                    "file_id": "AgAD-s",
                    "file_unique_id": "s",
                    "file_size": 1200,
                    "width": 90,
                    "height": 90,
                },
                {
                    "file_id": "AgAD-l",
                    "file_unique_id": "l",
                    "file_size": 91000,
                    "width": 1280,
                    "height": 960,
                },
            ],
        },
    }
    parsed = parse_telegram(update)
    assert isinstance(parsed, ParsedMessage)
    inbound = build_inbound(parsed, CustomerProfile(customer_id="tg-31337"), settings, NOW)
    assert inbound.text == "" and inbound.attachments[0].platform_file_id == "AgAD-l"
    [classified] = classifier.classify_batch([inbound], now=NOW)
    decision = route_message(classified, workflow, now=NOW, kb_match=None, settings=settings)
    assert decision.outcome.outcome.value == "routed"
    assert decision.outcome.departments == [workflow.triage_department]
