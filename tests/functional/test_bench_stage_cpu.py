"""The stage CPU benches run: they drive the agents' own methods over stand-ins
(bench/classify_stage_cpu.py: ``ClassifyAgent.remember``; bench/route_decisions.py --stage:
``RouteAgent``), so an agent that grows a collaborator breaks them, and nothing else would
tell (classify_stage_cpu.py died of an AttributeError unnoticed for a day)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "args", "figure"),
    [
        ("classify_stage_cpu.py", ["--n", "64", "--batch", "32", "--reps", "1"], "ms CPU/msg"),
        ("route_decisions.py", ["--stage", "--n", "64", "--repeat", "1"], "ms CPU per message"),
    ],
)
def test_a_stage_cpu_bench_runs_and_prints_its_figure(
    script: str, args: list[str], figure: str
) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,  # a guard against a hang only: the first run may train the model
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert figure in done.stdout
