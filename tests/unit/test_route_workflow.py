"""Workflow file: the shipped default validates; errors carry line numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.cli import main
from pipeline.config import DEFAULT_CONFIG_DIR
from pipeline.domain.workflow import ExternalDepartment, load_workflow, parse_workflow
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit


def test_default_workflow_covers_the_taxonomy(kit: RouteKit) -> None:
    wf = kit.workflow
    categories = {c for r in wf.rules for c in (r.when.category or [])}
    for cat in (
        "ACCOUNT",
        "ORDER",
        "PAYMENT",
        "REFUND",
        "INVOICE",
        "DELIVERY",
        "SHIPPING",
        "FEEDBACK",
        "CONTACT",
        "NEWSLETTER",
        "CANCELLATION_FEE",
        "LOYALTY",
        "STORE_QUALITY",
    ):
        assert cat in categories, cat
    assert isinstance(wf.departments["store-directors"], ExternalDepartment)
    sadovaya = next(s for s in wf.stores if "Садовая, 12" in s.address)
    assert "на Садовой, 12" in sadovaya.aliases
    assert sadovaya.director_email and sadovaya.director_email.endswith("@example.com")
    assert len(wf.group_members("store_directors")) == len(wf.stores) == 6
    assert set(wf.templates) == {"ru", "en"}
    assert wf.survey_for(["ORDER"]).kind == "csat"  # type: ignore[union-attr]
    assert wf.survey_for(["LOYALTY"]).kind == "nps"  # type: ignore[union-attr]
    assert wf.incidents[0].threshold == 5 and wf.incidents[0].window_minutes == 30


def test_minimal_file_and_durations(kit: RouteKit) -> None:
    sla = "sla_policies:\n  s: {resolution: {P1: 2h, P2: 1d, P3: 90}}\n"
    wf = parse_workflow(kit.minimal + sla)
    assert wf.sla_policies["s"].resolution == {"P1": 120, "P2": 1440, "P3": 90}
    assert wf.triage_department == "triage"


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_workflow(text, source="wf.yaml")
    return str(exc.value).splitlines()[1:]


def test_schema_errors_have_line_numbers(kit: RouteKit) -> None:
    bad = kit.minimal.replace("category: LOYALTY", "category: LOYALTY, priority: P9").replace(
        "{timezone: Europe/Moscow}", "{timezone: Mars/Olympus}"
    )
    lines = _errors(bad + "  - name: teleport\n    then: [{type: teleport}]\n")
    assert any(x.startswith("wf.yaml:4:") and "Mars/Olympus" in x for x in lines), lines
    assert any(x.startswith("wf.yaml:10:") and "P9" not in x and "P1" in x for x in lines), lines
    assert any(x.startswith("wf.yaml:13:") and "teleport" in x for x in lines), lines


def test_reference_errors_have_line_numbers(kit: RouteKit) -> None:
    bad = kit.minimal.replace("department: loyalty-it", "department: nowhere")
    lines = _errors(bad)
    assert lines == ["wf.yaml:11: rules.0.then.0: unknown department 'nowhere'"]


def test_missing_key_points_at_parent(kit: RouteKit) -> None:
    lines = _errors(kit.minimal.replace("version: 1\n", ""))
    assert lines[0].startswith("wf.yaml:1: version: Field required")


def test_yaml_syntax_error_line() -> None:
    with pytest.raises(ConfigError, match=r"wf\.yaml:3: invalid YAML"):
        parse_workflow("version: 1\ndepartments: {}\nrules: a: b\n", source="wf.yaml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_workflow(tmp_path / "none.yaml")


def test_rules_check_command(
    kit: RouteKit,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "check", str(DEFAULT_CONFIG_DIR / "workflow.yaml")]) == 0
    out = capsys.readouterr().out
    wf = kit.workflow
    assert out.strip() == f"ok: {len(wf.rules)} rules, {len(wf.departments)} departments"
    bad = tmp_path / "bad.yaml"
    bad.write_text(kit.minimal.replace("department: loyalty-it", "department: x"), encoding="utf-8")
    assert main(["rules", "check", str(bad)]) == 1
    assert f"{bad}:11:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "tagged"),
    [
        ("Подам в суд, если не вернёте деньги", True),
        ("Дело дойдёт до суда", True),
        ("Обращусь в судебные органы", True),
        ("Судя по всему, заказ потерялся", False),
    ],
)
def test_default_legal_threat_tag_matches_the_word_not_the_stem(text: str, tagged: bool) -> None:
    from pipeline.config import Settings
    from pipeline.domain.tagging import apply_tag_rules
    from pipeline.domain.workflow import load_workflow

    wf = load_workflow(Settings().rules_path)
    assert ("legal_threat" in apply_tag_rules(text, "ru", wf.tag_rules)) is tagged
