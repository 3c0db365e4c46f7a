"""`pipeline rules check --json`: one JSON object, for scripts and CI, valid or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import DEFAULT_CONFIG_DIR


def test_valid_workflow_reports_its_rules_and_departments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "check", "--json", str(DEFAULT_CONFIG_DIR / "workflow.yaml")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["rules"] > 0 and "loyalty-it" in doc["departments"]


def test_invalid_workflow_reports_the_errors_with_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("departments: 5\n", encoding="utf-8")
    assert main(["rules", "check", "--json", str(bad)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and f"{bad}:1: departments" in doc["error"]
