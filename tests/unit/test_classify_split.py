"""Multi-intent split on hand-picked Russian and English messages (default model)."""

from __future__ import annotations

import itertools

import pytest

from pipeline.classify.model import UNKNOWN, IntentModel, Prediction, default_model
from pipeline.classify.split import merge, segment, split_batch, split_intents
from pipeline.config import Settings

SEED_EXAMPLE = (
    "В магазине на Садовой, 12 продают несвежие огурцы, а ещё на кассе не списались бонусы "
    "с карты лояльности"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> IntentModel:
    return default_model(Settings(data_dir=tmp_path_factory.getbasetemp() / "classify-cache"))


def test_segment_cuts_at_connectives_and_sentences() -> None:
    segs = segment(SEED_EXAMPLE)
    assert [s.text for s in segs] == [
        "В магазине на Садовой, 12 продают несвежие огурцы",
        "на кассе не списались бонусы с карты лояльности",
    ]
    assert SEED_EXAMPLE[segs[1].start : segs[1].content_start] == "а ещё "
    en = segment("I want to cancel my order and also I need my invoice. Thanks!")
    assert [s.text for s in en] == ["I want to cancel my order", "I need my invoice.", "Thanks!"]
    ru = segment("Хочу отменить заказ. Кроме того, пришлите счёт")
    assert [s.text for s in ru] == ["Хочу отменить заказ.", "пришлите счёт"]


def test_segment_keeps_abbreviations_and_plain_and() -> None:
    text = "Живу на ул. Ленина, д. 5 и хочу изменить адрес доставки"
    assert len(segment(text)) == 1
    assert len(segment("I bought bread and milk yesterday")) == 1


def test_seed_example_splits_into_store_quality_and_loyalty(model: IntentModel) -> None:
    parts = split_intents(model, SEED_EXAMPLE)
    assert [(p.label, p.category) for p in parts] == [
        ("product_quality", "STORE_QUALITY"),
        ("loyalty_points", "LOYALTY"),
    ]
    assert SEED_EXAMPLE[parts[0].start : parts[0].end].startswith("В магазине на Садовой")
    assert SEED_EXAMPLE[parts[1].start : parts[1].end] == (
        "на кассе не списались бонусы с карты лояльности"
    )


@pytest.mark.parametrize(
    ("text", "categories"),
    [
        (
            "Добрый день. В магазине на Садовой, 12 продавали просроченный йогурт. И ещё мне не "
            "начислили бонусы на карту за эту покупку.",
            ["STORE_QUALITY", "LOYALTY"],
        ),
        (
            "Хочу отменить заказ 5521. Кроме того, пришлите мне счёт за прошлый месяц.",
            ["ORDER", "INVOICES"],
        ),
        (
            "I want to cancel my order and also I need a copy of my invoice",
            ["ORDER", "INVOICES"],
        ),
        (
            "The milk I bought at your store was sour. Besides, my loyalty points were not "
            "added for that purchase.",
            ["STORE_QUALITY", "LOYALTY"],
        ),
    ],
)
def test_multi_intent_messages_split(model: IntentModel, text: str, categories: list[str]) -> None:
    parts = split_intents(model, text)
    assert [p.category for p in parts] == categories
    assert not any(p.abstained for p in parts)
    assert all(0 <= p.start < p.end <= len(text) for p in parts)
    assert all(a.end <= b.start for a, b in itertools.pairwise(parts))


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Здравствуйте! Не могу оплатить заказ 5521, карта отклоняется.", "payment_issue"),
        ("Hi there. I forgot my password and cannot log in. Please help!", "recover_password"),
        ("Где мой заказ? Жду уже неделю, а статус не меняется.", "track_order"),
        ("I would like to know how to track my order, it was placed on Monday.", "track_order"),
        ("Хочу изменить адрес доставки в заказе, я переехал на ул. Ленина, д. 5.",
         "change_shipping_address"),
    ],
)  # fmt: skip
def test_single_intent_messages_stay_whole(model: IntentModel, text: str, label: str) -> None:
    (part,) = split_intents(model, text)
    assert part.label == label
    assert (part.start, part.end) == (0, len(text.rstrip()))


def test_off_topic_message_is_one_unknown_part(model: IntentModel) -> None:
    (part,) = split_intents(model, "Какая погода завтра в Москве? And play some jazz.")
    assert part.label == UNKNOWN and part.abstained


def test_batch_equals_one_by_one(model: IntentModel) -> None:
    texts = [SEED_EXAMPLE, "where is my order", "Забыл пароль. А ещё отпишите меня от рассылки"]
    assert split_batch(model, texts) == [split_intents(model, t) for t in texts]


def _p(label: str, conf: float, abstained: bool = False) -> Prediction:
    shown = UNKNOWN if abstained else label
    return Prediction(shown, shown.upper(), conf, abstained, label, label.upper())


def test_merge_rules_without_a_model() -> None:
    text = "Hello. Where is my order? Where is my parcel? Also refund me"
    segs = segment(text)
    assert len(segs) == 4
    whole = _p("track_order", 0.9)
    preds = [_p("greeting", 0.1, True), _p("track", 0.9), _p("track", 0.8), _p("refund", 0.4, True)]
    parts = merge(text, segs, preds, whole)
    # greeting joins the first request, the same labels merge, the weak segment after a
    # connective still splits but stays 'unknown'
    assert [(p.label, p.abstained) for p in parts] == [("track", False), (UNKNOWN, True)]
    assert text[parts[0].start : parts[0].end] == "Hello. Where is my order? Where is my parcel?"
    assert text[parts[1].start : parts[1].end] == "refund me"
    # without the connective the weak tail just joins the previous request
    parts = merge(text, segs[:3], preds[:3], whole)
    assert [p.label for p in parts] == ["track_order"]
