"""Entities (ru + en), rule tags, sentiment and the explained priority score."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from pipeline.classify.entities import StoreMatcher, extract_entities, match_stores
from pipeline.classify.priority import level_of, score_priority
from pipeline.classify.sentiment import negative_sentiment
from pipeline.domain.priority_weights import PriorityWeights
from pipeline.domain.tagging import TagRule, apply_tag_rules
from pipeline.domain.workflow import Store

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
STORES = [
    Store(code="MSK-012", name="На Садовой", address="ул. Садовая, 12", city="Москва",
          aliases=("Садовая-Кудринская",), director_email="d012@example.com"),
    Store(code="MSK-031", address="Ленинский проспект, 31", city="Москва"),
    Store(code="LDN-001", address="221 Baker Street", aliases=("Baker Street store",)),
]  # fmt: skip


def kinds(text: str, **kw: object) -> list[tuple[str, str, str]]:
    ents = extract_entities(text, stores=STORES, now=NOW, **kw)  # type: ignore[arg-type]
    return [(e.kind, e.value, text[e.span.start : e.span.end] if e.span else "") for e in ents]


def test_store_address_matches_inflected_russian() -> None:
    text = "В магазине на Садовой, 12 продают несвежие огурцы"
    assert kinds(text) == [("store", "MSK-012", "Садовой, 12")]
    assert kinds("На Ленинском проспекте, д. 31 грязно")[0][:2] == ("store", "MSK-031")
    assert kinds("на улице Садовой дом 12")[0][:2] == ("store", "MSK-012")
    assert kinds("на Садовой 120 всё хорошо") == []  # the house number must match
    assert kinds("магазин MSK-031 закрыт")[0][:2] == ("store", "MSK-031")


def test_store_address_with_city_matches_without_it() -> None:
    spb = [
        Store(code="SPB-012", address="Санкт-Петербург, ул. Садовая, 12", city="Санкт-Петербург")
    ]
    found = extract_entities("На Садовой, 12 продают несвежие огурцы", stores=spb, now=NOW)
    assert [(e.kind, e.value) for e in found] == [("store", "SPB-012")]


def test_store_matches_english_alias_and_matcher_equals_list() -> None:
    text = "I was at the Baker Street store yesterday"
    assert match_stores(text, STORES) == match_stores(text, StoreMatcher(STORES))
    assert [e.value for e in match_stores(text, STORES)] == ["LDN-001"]


def test_orders_cards_amounts_dates_ru() -> None:
    text = "Заказ № 5521 от 12.03.2026 на сумму 1 200,50 руб. не пришёл, оплатил вчера"
    assert kinds(text) == [
        ("order", "5521", "5521"),
        ("date", "2026-03-12", "12.03.2026"),
        ("amount", "1200.5 RUB", "1 200,50 руб."),
        ("date", "2026-03-14", "вчера"),
    ]
    card = kinds("не списались бонусы с карты лояльности 1234 5678 9012 3456")
    assert card == [("loyalty_card", "1234567890123456", "1234 5678 9012 3456")]
    assert ("amount", "5000 RUB", "5000₽") in kinds("списали 5000₽ 3 марта")
    assert ("date", "2026-03-03", "3 марта") in kinds("списали 5000₽ 3 марта")


def test_orders_cards_amounts_dates_en() -> None:
    text = "My order #A-77812 for $25.50 was delivered on March 3rd"
    assert kinds(text) == [
        ("order", "A-77812", "A-77812"),
        ("amount", "25.5 USD", "$25.50"),
        ("date", "2026-03-03", "March 3rd"),
    ]
    assert kinds("I paid 300 EUR on 2026-02-28, loyalty card number 7777888899990000") == [
        ("amount", "300 EUR", "300 EUR"),
        ("date", "2026-02-28", "2026-02-28"),
        ("loyalty_card", "7777888899990000", "7777888899990000"),
    ]


def test_a_payment_card_is_not_a_loyalty_card() -> None:
    assert kinds("my visa card 4111 1111 1111 1111 was declined") == []


def test_tag_rules_per_language_keywords_and_regexes() -> None:
    rules = [
        TagRule(tag="food_safety", keywords={"ru": ["просроч", "несвеж"], "en": ["expired"]}),
        TagRule(tag="vip_words", regexes={"*": [r"\bvip\b"]}),
        TagRule(tag="cash", keywords={"ru": ["наличн"]}),
    ]
    assert apply_tag_rules("Продали ПРОСРОЧЕННЫЙ йогурт, я VIP", "ru", rules) == [
        "food_safety",
        "vip_words",
    ]
    assert apply_tag_rules("expired yogurt", "en", rules) == ["food_safety"]
    assert apply_tag_rules("expired yogurt", "ru", rules) == []  # English keyword, ru rule set
    assert apply_tag_rules("безналичный расчёт", "ru", rules) == []  # keyword at a word start
    with pytest.raises(ValidationError):
        TagRule(tag="bad", regexes={"en": ["(unclosed"]})


def test_every_keyword_of_a_rule_matches_at_a_word_start_only() -> None:
    # the keywords share one look-behind; a regex's own groups keep their numbers
    rule = TagRule(
        tag="t", keywords={"en": ["sue", "court", "gone off"]}, regexes={"en": [r"(\w)\1x"]}
    )
    for text in ("I will SUE you", "see you in court", "the milk has gone off", "aax"):
        assert rule.matches(text, "en"), text
    for text in ("pursue", "forecourt", "undergone off", "abx", "court"[1:]):
        assert not rule.matches(text, "en"), text


@pytest.mark.parametrize(
    ("text", "low", "high", "anger"),
    [
        ("Спасибо, всё хорошо", 0.0, 0.01, False),
        ("Where is my order?", 0.0, 0.01, False),
        ("Не плохо, но долго", 0.0, 0.01, False),
        ("Я не доволен обслуживанием", 0.2, 0.5, False),
        ("I am not happy with the service", 0.2, 0.5, False),
        ("Кассир нахамил, это безобразие", 0.5, 0.9, False),
        ("Это просто УЖАСНО!!! Сколько можно?!", 0.7, 1.0, True),
        ("This is absolutely DISGUSTING, I am FURIOUS!!!", 0.7, 1.0, True),
    ],
)
def test_sentiment_ru_en(text: str, low: float, high: float, anger: bool) -> None:
    s = negative_sentiment(text)
    assert low <= s.score <= high, s
    assert s.anger is anger, s


def test_intensifier_raises_sentiment() -> None:
    assert negative_sentiment("я очень недоволен").score > negative_sentiment("я недоволен").score
    assert negative_sentiment("very bad").score > negative_sentiment("bad").score


def test_priority_components_add_up_and_explain() -> None:
    p = score_priority(
        "Продали просроченный йогурт, я обращусь в Роспотребнадзор и в суд!!!",
        "ru", tier="gold", channel="social", recent_contacts=2,
    )  # fmt: skip
    names = [c.name for c in p.components]
    assert names == ["base", "tier", "sentiment", "legal_threat", "repeat_contact", "channel"]
    assert p.score == pytest.approx(sum(c.points for c in p.components))
    assert p.level == "P1"
    legal = next(c for c in p.components if c.name == "legal_threat")
    assert "роспотребнадзор" in legal.reason and "суд" in legal.reason


def test_priority_en_legal_urgency_and_cap() -> None:
    p = score_priority(
        "URGENT!!! I will file a chargeback and call my lawyer, this is DISGUSTING",
        "en", tier="vip", channel="social", recent_contacts=10,
    )  # fmt: skip
    assert p.score == 100
    assert {"urgency", "legal_threat", "cap"} <= {c.name for c in p.components}
    assert sum(c.points for c in p.components) == pytest.approx(100)
    repeat = next(c for c in p.components if c.name == "repeat_contact")
    assert repeat.points == PriorityWeights().repeat_contact_max


def test_priority_quiet_message_is_p4_and_words_are_whole() -> None:
    p = score_priority("Судя по всему, заказ задерживается", "ru")  # 'судя' is not 'суд'
    assert [c.name for c in p.components] == ["base"]
    assert p.level == "P4"


def test_priority_weights_are_configuration() -> None:
    w = PriorityWeights(base=0, tier={"vip": 50}, cutoffs={"P1": 50, "P2": 30, "P3": 10})
    p = score_priority("hello", "en", tier="vip", weights=w)
    assert (p.score, p.level) == (50, "P1")
    assert level_of(9.9, w) == "P4"
    with pytest.raises(ValidationError):
        PriorityWeights(cutoffs={"P1": 10, "P2": 30, "P3": 5})
