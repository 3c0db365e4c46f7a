"""Priority that reads the message: rule tags (food safety, legal threat) weighed by workflow."""

from __future__ import annotations

import pytest

from pipeline.classify.priority import score_priority
from pipeline.config import Settings
from pipeline.domain.priority_weights import PriorityWeights
from pipeline.domain.tagging import TagRule, apply_tag_rules
from pipeline.domain.workflow import Workflow, load_workflow, parse_workflow
from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def workflow() -> Workflow:
    return load_workflow(Settings().rules_path)


def _priority(workflow: Workflow, text: str, language: str) -> tuple[list[str], str, float]:
    tags = apply_tag_rules(text, language, workflow.tag_rules)
    p = score_priority(text, language, weights=workflow.priority, tags=tags)
    assert p.score == pytest.approx(sum(c.points for c in p.components))
    return [c.name for c in p.components], p.level, p.score


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("В магазине на Тверской продают хлеб с плесенью", "ru"),
        ("Купил несвежие огурцы в вашем магазине", "ru"),
        ("Опять просрочка на полке с молоком", "ru"),
        ("The milk I bought at your store was expired", "en"),
        ("There was mould on the bread from your shop", "en"),
    ],
)
def test_food_safety_raises_a_calm_complaint_above_the_base(
    workflow: Workflow, text: str, language: str
) -> None:
    names, level, score = _priority(workflow, text, language)
    assert "food_safety" in names
    assert workflow.priority is not None
    base = workflow.priority.base
    assert score == pytest.approx(base + workflow.priority.tags["food_safety"])
    assert level != "P4"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("У меня просрочка платежа, что делать?", "ru"),
        ("Заказ просрочен на неделю, где он?", "ru"),
        ("My loyalty card has expired", "en"),
        ("My voucher expired yesterday", "en"),
    ],
)
def test_overdue_payments_and_expired_cards_are_not_food(
    workflow: Workflow, text: str, language: str
) -> None:
    names, _, _ = _priority(workflow, text, language)
    assert "food_safety" not in names


def test_legal_threat_counts_once_whether_words_or_tag_found_it(workflow: Workflow) -> None:
    assert workflow.priority is not None
    points = workflow.priority.tags["legal_threat"]
    # the built-in legal words and the tag rule both see "суд": one component
    names, _, score = _priority(workflow, "Подам в суд на ваш магазин", "ru")
    assert names.count("legal_threat") == 1
    # only the tag rule knows "претензия": the tag's points stand in
    names, _, score = _priority(workflow, "Направляю вам письменную претензию", "ru")
    assert names == ["base", "legal_threat"]
    assert score == pytest.approx(workflow.priority.base + points)


def test_tag_weights_are_configuration() -> None:
    w = PriorityWeights(base=0, tags={"food_safety": 50}, cutoffs={"P1": 50, "P2": 30, "P3": 10})
    p = score_priority("плесень", "ru", weights=w, tags=["food_safety", "food_safety", "other"])
    assert [(c.name, c.points) for c in p.components] == [("food_safety", 50)]
    assert p.level == "P1"
    assert score_priority("плесень", "ru", weights=w).level == "P4"  # no tags, no points
    with pytest.raises(ValueError, match="≥ 0"):
        PriorityWeights(tags={"food_safety": -5})


def test_workflow_rejects_weights_of_tags_no_rule_adds(workflow: Workflow) -> None:
    text = (
        "version: 1\n"
        "departments: {triage: {kind: internal}}\n"
        "tag_rules:\n"
        "  - {tag: food_safety, keywords: {ru: [плесен]}}\n"
        "priority:\n"
        "  tags: {food_safty: 30}\n"
        "templates: {ru: {acknowledgement: a, resolution: r, incident_notice: i, survey_csat: c,"
        " survey_nps: n, triage: t}}\n"
    )
    with pytest.raises(ConfigError, match=r"wf\.yaml:6: priority\.tags\.food_safty: no tag rule"):
        parse_workflow(text, source="wf.yaml")
    ok = parse_workflow(text.replace("food_safty", "food_safety"), source="wf.yaml")
    assert ok.priority is not None and ok.priority.tags == {"food_safety": 30}
    assert isinstance(ok.tag_rules[0], TagRule)
    # the shipped workflow weighs both tags the issue names
    assert workflow.priority is not None
    assert {"food_safety", "legal_threat"} <= set(workflow.priority.tags)
