"""What the deployment files are checked against: the settings the code reads, the metrics it
exports. Container engines cannot run in the test environment, so compose, Kubernetes,
Prometheus and Grafana files are checked statically against these (the ``deploy_kit``
fixture)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from pipeline.config import Settings
from pipeline.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]  # tests/plugins/deploy.py → the repository
DEPLOY = ROOT / "deploy"


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    """Every document of a multi-document YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def settings_env_names() -> set[str]:
    """Every environment variable the settings model reads."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update(str(c).upper() for c in choices)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def exported_series() -> dict[str, set[str]]:
    """Series name → label names, for every series the code's metrics registry exports."""
    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        labels = set(getattr(metric, "_labelnames", ()))
        name = getattr(metric, "_name", "")
        if isinstance(metric, Counter):
            out[f"{name}_total"] = labels
        elif isinstance(metric, Histogram):
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        elif isinstance(metric, Gauge):
            out[name] = labels
    return {name: labels | TARGET_LABELS for name, labels in out.items()}


#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
#: Series Prometheus adds itself to every scrape target.
PROMETHEUS_SERIES: dict[str, set[str]] = {"up": TARGET_LABELS}

_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promql_series(expr: str) -> dict[str, set[str]]:
    """Series names a PromQL expression selects (``pipeline_*`` and ``up``), with the label
    names its matchers use on each."""
    found: dict[str, set[str]] = {}
    cleaned = re.sub(r'"[^"]*"', '""', expr)
    for name, braces in _SELECTOR.findall(cleaned):
        if name.startswith("pipeline_") or name == "up":
            found.setdefault(name, set()).update(m[0] for m in _MATCHER.findall(braces or ""))
    return found


def promql_grouping_labels(expr: str) -> set[str]:
    """Label names of every ``by (...)`` / ``without (...)`` clause."""
    labels: set[str] = set()
    for group in _GROUPING.findall(expr):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    return labels


class DeployKit:
    """The helpers above, as one fixture: paths, YAML loading, settings and metrics names."""

    root = ROOT
    deploy = DEPLOY
    prometheus_series = PROMETHEUS_SERIES
    load_yaml = staticmethod(load_yaml)
    load_yaml_all = staticmethod(load_yaml_all)
    settings_env_names = staticmethod(settings_env_names)
    exported_series = staticmethod(exported_series)
    promql_series = staticmethod(promql_series)
    promql_grouping_labels = staticmethod(promql_grouping_labels)


@pytest.fixture(scope="session")
def deploy_kit() -> DeployKit:
    """Paths of the repository and deploy/, YAML loading, the settings' env names, the
    exported series and a PromQL series/label scanner."""
    return DeployKit()
