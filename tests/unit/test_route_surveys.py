"""Survey answers parsed from ru/en text; NPS buckets; negatives flagged."""

from __future__ import annotations

import pytest

from pipeline.domain.surveys import is_negative, nps_class, parse_score


@pytest.mark.parametrize(
    ("text", "kind", "score"),
    [
        ("5", "csat", 5),
        ("5/5", "csat", 5),
        ("Оценка 4", "csat", 4),
        ("ставлю три", "csat", 3),
        ("Пятёрка!", "csat", 5),
        ("одна звезда", "csat", 1),
        ("five stars", "csat", 5),
        ("2 - slow", "csat", 2),
        ("9 из 10", "nps", 9),
        ("десять", "nps", 10),
        ("Семь", "nps", 7),
        ("0", "nps", 0),
        ("I'd say 8", "nps", 8),
        ("ten!", "nps", 10),
    ],
)
def test_scores(text: str, kind: str, score: int) -> None:
    assert parse_score(text, kind) == score  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("7", "csat"),  # out of range
        ("0", "csat"),
        ("11", "nps"),
        ("спасибо", "csat"),
        ("thanks", "nps"),
        ("", "nps"),
        (
            "Заказ 5 до сих пор не пришёл, хотя обещали доставить его ещё в понедельник "
            "утром, курьер не звонил",
            "csat",
        ),
        ("3.5", "csat"),
    ],
)
def test_not_an_answer(text: str, kind: str) -> None:
    assert parse_score(text, kind) is None  # type: ignore[arg-type]


def test_nps_classes_and_negatives() -> None:
    assert [nps_class(s) for s in (0, 6, 7, 8, 9, 10)] == [
        "detractor",
        "detractor",
        "passive",
        "passive",
        "promoter",
        "promoter",
    ]
    assert is_negative("csat", 2) and not is_negative("csat", 3)
    assert is_negative("nps", 6) and not is_negative("nps", 7)
