"""The classify stage's pure core: InboundMessage batch → ClassifiedMessage batch."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.classify.core import Classifier
from pipeline.classify.model import IntentModel, default_model
from pipeline.config import Settings
from pipeline.domain.tagging import TagRule
from pipeline.domain.text import model_language
from pipeline.domain.workflow import Store
from pipeline.events import (
    Channel,
    ClassifiedMessage,
    CustomerProfile,
    InboundMessage,
    Similarity,
)

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
SEED_EXAMPLE = (
    "В магазине на Садовой, 12 продают несвежие огурцы, а ещё на кассе не списались бонусы "
    "с карты лояльности"
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "classify-cache"


@pytest.fixture(scope="module")
def model(cache_dir: Path) -> IntentModel:
    return default_model(Settings(data_dir=cache_dir))


@pytest.fixture(scope="module")
def classifier(model: IntentModel) -> Classifier:
    return Classifier(
        model,
        stores=[Store(code="MSK-012", address="ул. Садовая, 12", director_email="d@example.com")],
        tag_rules=[
            TagRule(tag="food_safety", keywords={"ru": ["несвеж", "просроч"], "en": ["expired"]})
        ],
    )


def msg(text: str, n: int = 1, **kw: object) -> InboundMessage:
    fields: dict[str, object] = {
        "message_id": f"m{n}",
        "channel": Channel.telegram,
        "channel_message_id": str(n),
        "customer_id": f"c{n}",
        "text": text,
        "received_at": NOW,
    }
    fields.update(kw)
    return InboundMessage.model_validate(fields)


def test_seed_example_end_to_end(classifier: Classifier) -> None:
    m = msg(SEED_EXAMPLE, language="ru", profile=CustomerProfile(customer_id="c1", tier="gold"))
    (out,) = classifier.classify_batch([m], now=NOW, recent_contacts={"c1": 2})
    assert isinstance(out, ClassifiedMessage)
    assert [(i.label, i.category) for i in out.intents] == [
        ("product_quality", "STORE_QUALITY"),
        ("loyalty_points", "LOYALTY"),
    ]
    for intent in out.intents:
        assert SEED_EXAMPLE[intent.span.start : intent.span.end] == intent.text
    assert out.tags == [
        "STORE_QUALITY", "LOYALTY", "product_quality", "loyalty_points", "food_safety", "lang:ru",
    ]  # fmt: skip
    assert [(e.kind, e.value) for e in out.entities] == [("store", "MSK-012")]
    names = {c.name for c in out.priority.components}
    assert {"base", "tier", "repeat_contact", "channel"} <= names
    assert out.priority.score == pytest.approx(sum(c.points for c in out.priority.components))
    assert out.model_version == classifier.version
    assert out.classified_at == NOW
    assert out.inbound == m
    # the event round-trips through its JSON contract
    assert ClassifiedMessage.model_validate_json(out.model_dump_json()) == out


def test_batch_mixes_languages_abstention_and_order(classifier: Classifier) -> None:
    batch = [
        msg("Where is my order #A-77812? It's been two weeks!!!", 1, language="en"),
        msg("Какая погода завтра в Москве?", 2, language="other"),
        msg("Хочу вернуть деньги за заказ 5521, это безобразие", 3, language="ru"),
    ]
    out = classifier.classify_batch(batch, now=NOW)
    assert [o.message_id for o in out] == ["m1", "m2", "m3"]
    assert out[0].intents[0].label == "track_order"
    assert ("order", "A-77812") in [(e.kind, e.value) for e in out[0].entities]
    assert out[1].intents[0].label == "unknown"
    assert "unknown" in out[1].tags and "lang:ru" in out[1].tags  # language detected
    assert out[2].intents[0].category == "REFUNDS"
    assert any(c.name == "sentiment" for c in out[2].priority.components)


def test_home_store_is_assumed_for_store_requests(classifier: Classifier) -> None:
    profile = CustomerProfile(customer_id="c1", home_store="MSK-077")
    (out,) = classifier.classify_batch(
        [msg("Купила просроченный творог в вашем магазине", profile=profile, language="ru")]
    )
    assert out.intents[0].category == "STORE_QUALITY"
    assert [(e.kind, e.value, e.span) for e in out.entities] == [("store", "MSK-077", None)]


def test_empty_body_reads_the_subject(classifier: Classifier) -> None:
    (out,) = classifier.classify_batch([msg("", subject="Forgot my password", language="en")])
    assert out.intents[0].label == "recover_password"
    assert (out.intents[0].span.start, out.intents[0].span.end, out.intents[0].text) == (0, 0, "")


def test_empty_batch(classifier: Classifier) -> None:
    assert classifier.classify_batch([]) == []


def test_from_settings_uses_model_path_or_default(
    model: IntentModel, cache_dir: Path, tmp_path: Path
) -> None:
    saved = model.save(tmp_path / "artifact")
    c = Classifier.from_settings(Settings(model_path=saved, data_dir=tmp_path / "empty"))
    assert c.version == model.version
    assert not (tmp_path / "empty").exists()  # nothing trained
    assert Classifier.from_settings(Settings(data_dir=cache_dir)).version == model.version


def test_model_language() -> None:
    # The detector's answer (stamped by ingest) wins when a model knows it ...
    assert model_language("Где мой заказ?", "en") == "en"
    # ... else the alphabet with more letters (one detector: pipeline.domain.text).
    assert model_language("Где мой заказ? order 5521", "other") == "ru"
    assert model_language("Where is my order? Заказ") == "en"
    assert model_language("Де моє замовлення?", "other") == "ru"  # Ukrainian: closer model
    assert model_language("12345 !!!", "other") == "other"


def test_similarity_is_set_on_each_message(classifier: Classifier) -> None:
    """The agent's dedup decisions go on the messages as classify_batch builds them: the
    same messages as setting them on a copy afterwards."""
    batch = [msg("Where is my order?", 1, language="en"), msg("Где мой заказ?", 2, language="ru")]
    sims = [
        Similarity(case_id="case_1"),
        Similarity(duplicate_of="m0", duplicate_reason="near", case_id="case_0"),
    ]
    got = classifier.classify_batch(batch, now=NOW, similarity=sims)
    plain = classifier.classify_batch(batch, now=NOW)
    assert [g.similarity for g in got] == sims
    assert got == [p.model_copy(update={"similarity": s}) for p, s in zip(plain, sims, strict=True)]
    with pytest.raises(ValueError):
        classifier.classify_batch(batch, now=NOW, similarity=sims[:1])
