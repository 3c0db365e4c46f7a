"""The README's configuration table lists every setting the code reads, and nothing else;
``pipeline ingest`` refuses to expose unauthenticated endpoints beyond the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices, SecretStr

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.ingest.server import CREDENTIALS, check_exposure, unauthenticated_endpoints

README = Path(__file__).resolve().parents[2] / "README.md"


def _setting_variables() -> set[str]:
    names: set[str] = set()
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.add(str(alias.choices[0]))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def _readme_variables() -> set[str]:
    """Variables in the first column of the README's table under "## Configuration".

    A row may name several (``A`` / ``B``, ``A``, ``B``) and abbreviate siblings as
    ``PIPELINE_SMTP_RELAY_HOST`` / ``_PORT``: ``_PORT`` replaces the last word of the one
    before it.
    """
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        previous = ""
        for token in re.findall(r"`([A-Z_][A-Z0-9_]*)`", line.split("|")[1]):
            if token.startswith("_") and previous:
                token = previous.rsplit("_", 1)[0] + token
            names.add(token)
            previous = token
    return names


def test_readme_table_lists_every_setting_and_only_those() -> None:
    settings, documented = _setting_variables(), _readme_variables()
    assert sorted(settings - documented) == [], "settings missing from the README table"
    assert sorted(documented - settings) == [], "README rows naming no setting"


def test_every_endpoint_has_a_credential_setting() -> None:
    assert set(CREDENTIALS.values()) <= set(Settings.model_fields)
    everything = {name: SecretStr("x") for name in set(CREDENTIALS.values())}
    assert unauthenticated_endpoints(Settings(**everything)) == []  # type: ignore[arg-type]
    assert set(unauthenticated_endpoints(Settings())) == set(CREDENTIALS)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_may_run_open(host: str) -> None:
    check_exposure(Settings(ingest_host=host))


def test_public_address_needs_credentials_or_an_explicit_yes() -> None:
    with pytest.raises(ConfigError, match="PIPELINE_GENERIC_API_TOKEN"):
        check_exposure(Settings(ingest_host="0.0.0.0"))
    check_exposure(Settings(ingest_host="0.0.0.0", ingest_allow_unauthenticated=True))
    secrets = {name: SecretStr("x") for name in set(CREDENTIALS.values())}
    check_exposure(Settings(ingest_host="0.0.0.0", **secrets))  # type: ignore[arg-type]


def test_pipeline_ingest_refuses_before_starting_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        {
            "PIPELINE_INGEST_HOST": "0.0.0.0",
            "PIPELINE_TELEGRAM_SECRET_TOKEN": "set",
            "PIPELINE_DATA_DIR": str(tmp_path),
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "/webhooks/telegram" not in done.stderr.split("would accept")[0]
    assert "PIPELINE_INGEST_ALLOW_UNAUTHENTICATED" in done.stderr
