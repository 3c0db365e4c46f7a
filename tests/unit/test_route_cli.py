"""``rules explain`` (no Kafka) and the pure part of ``rules replay``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline import rules_cli as route_cli
from pipeline.cli import main
from pipeline.domain.workflow import Workflow
from pipeline.events import ClassifiedMessage, Entity, InboundMessage, Span
from pipeline.rules_cli import Explainer, compare_routing, explain_json, format_explain

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit

CONTRACT = (
    "Добрый день. В магазине на Садовой, 12 продавали просроченный йогурт. "
    "И ещё мне не начислили бонусы на карту за эту покупку."
)


class StubClassifier:
    """Splits on '. ' and labels by keywords: enough to drive the route stage."""

    version = "stub"

    def __init__(self, kit: RouteKit) -> None:
        self.kit = kit

    def classify_batch(
        self, messages: Sequence[InboundMessage], *, now: datetime | None = None
    ) -> list[ClassifiedMessage]:
        out = []
        for m in messages:
            intents = []
            for part in m.text.split(". "):
                low = part.lower()
                if "йогурт" in low or "yogh" in low:
                    intents.append(
                        self.kit.intent(m.text, part, "product_quality", "STORE_QUALITY")
                    )
                elif "бонус" in low or "bonus" in low:
                    intents.append(self.kit.intent(m.text, part, "loyalty_points", "LOYALTY"))
                elif "invoice" in low or "счёт" in low:
                    intents.append(self.kit.intent(m.text, part, "get_invoice", "INVOICES"))
            if not intents:
                intents = [self.kit.intent(m.text, m.text, "unknown", "UNKNOWN", 0.1)]
            ents = []
            if "Садов" in m.text:
                at = m.text.index("Садов")
                ents.append(Entity(kind="store", value="SPB-012", span=Span(start=at, end=at + 11)))
            base = self.kit.message(m.text, intents, entities=ents, language=m.language)
            out.append(
                base.model_copy(
                    update={"inbound": m, "message_id": m.message_id, "customer_id": m.customer_id}
                )
            )
        return out


@pytest.fixture
def stub(kit: RouteKit, monkeypatch: pytest.MonkeyPatch) -> Explainer:
    ex = Explainer(kit.workflow, StubClassifier(kit))

    def from_settings(cls: type[Explainer], settings: object, workflow: Workflow) -> Explainer:
        return Explainer(workflow, StubClassifier(kit))

    monkeypatch.setattr(route_cli.Explainer, "from_settings", classmethod(from_settings))
    return ex


def test_explain_json_contract(stub: Explainer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "explain", "--json", "--now", "2026-03-03T10:00+03:00", CONTRACT]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"classification", "kb", "rules", "sub_requests", "replies", "outcome"} <= doc.keys()
    subs = {(s["kind"], s["department"], s["recipient"]) for s in doc["sub_requests"]}
    assert subs == {
        ("external", "store-directors", "director.spb-sadovaya@example.com"),
        ("internal", "loyalty-it", None),
    }
    assert doc["outcome"] == "routed" and doc["language"] == "ru"
    assert doc["kb"]["auto_reply_fires"] is False
    assert "offline" in doc["similarity"]["note"]
    matched = [r["rule"] for r in doc["rules"] if r["matched"]]
    assert matched == ["store-quality-director", "loyalty"]
    assert doc["classification"]["intents"][0]["span"]["start"] == CONTRACT.index("В магазине")


def test_explain_text_output(kit: RouteKit, stub: Explainer) -> None:
    [(cm, match, decision)] = stub.decide([stub.inbound(CONTRACT, now=kit.now)], now=kit.now)
    text = format_explain(explain_json(cm, match, decision))
    assert "[MATCH] #3 store-quality-director for product_quality (stop)" in text
    assert "✓ entity store found: ['SPB-012']" in text
    assert "external  store-directors  → director.spb-sadovaya@example.com" in text
    assert "internal  loyalty-it       → tasks.loyalty-it" in text
    assert "outcome: routed → store-directors, loyalty-it" in text


def test_explain_data_file_one_line_per_row(
    stub: Explainer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "m.csv"
    csv_file.write_text('text\n"Where is my invoice?"\n"' + CONTRACT + '"\n', encoding="utf-8")
    assert main(["rules", "explain", "--data", str(csv_file)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["departments"] for x in lines] == [["billing"], ["store-directors", "loyalty-it"]]
    assert lines[0]["language"] == "en"
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        json.dumps({"body": "Не начислили бонусы"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    assert main(["rules", "explain", "--data", str(jsonl), "--text-col", "body"]) == 0
    [one] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert one["sub_requests"][0]["department"] == "loyalty-it"
    assert main(["rules", "explain", "--data", str(jsonl)]) == 1  # no 'text' key


def test_compare_routing_counts_changes(kit: RouteKit) -> None:
    wf = kit.workflow
    new_rules = [r for r in wf.rules if r.name != "loyalty"]
    new = wf.model_copy(update={"rules": new_rules})
    text = "Не начислили бонусы"
    msgs = [
        kit.message(text, [kit.intent(text, text, "loyalty_points", "LOYALTY")], key="1"),
        kit.message(
            "Где счёт?", [kit.intent("Где счёт?", "Где счёт?", "get_invoice", "INVOICES")], key="2"
        ),
    ]
    report = compare_routing(msgs, wf, new, now=kit.now)
    assert report.messages == 2 and report.changed == 1
    assert report.before == {"billing": 1, "loyalty-it": 1}
    assert report.after == {"billing": 1, "triage": 1}
    [ex] = report.examples
    assert ex.before == ["internal:loyalty-it"] and ex.after == ["internal:triage"]
    assert "triage" in route_cli.format_replay(report)


def test_explain_builds_the_message_as_ingest_does(stub: Explainer, kit: RouteKit) -> None:
    # Same cleaning, language detection and PII spans as the worker (build_inbound).
    msg = stub.inbound("Де моє замовлення?\u200b  Картка 4111 1111 1111 1111", now=kit.now)
    assert "\u200b" not in msg.text and "  " not in msg.text
    assert msg.language == "other"  # Ukrainian: not taken for Russian
    assert [p.kind for p in msg.pii] == ["card"]
    forced = stub.inbound("Где мой заказ?", language="en", now=kit.now)
    assert (forced.language, forced.language_confidence) == ("en", 1.0)
