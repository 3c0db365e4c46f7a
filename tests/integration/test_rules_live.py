"""Administrators change the workflow: running workers follow it; replay shows the difference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.events import Outcome, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import Children

from .helpers import start_stack, telegram, wait_for

pytestmark = pytest.mark.integration

LOYALTY = "    then: [{type: internal, department: loyalty-it}]\n"
TO_CARE = "    then: [{type: internal, department: customer-care}]\n"


@pytest.fixture
def live_stack(
    broker_settings: Settings, outbox: Outbox, tmp_path: Path
) -> Iterator[tuple[Settings, Children, Path]]:
    rules = tmp_path / "workflow.yaml"
    shutil.copy(broker_settings.rules_path, rules)
    base = broker_settings.model_copy(update={"rules_path": rules})
    stack, group = start_stack(base, outbox, "rl")
    try:
        yield stack, group, rules
    finally:
        group.stop()


async def _routed(stack: Settings, chat: int, n: int, text: str) -> Outcome:
    status, _ = telegram(stack, chat, n, text)
    assert status == 200
    mid = derive_id("msg", "telegram", f"{chat}:{n}")
    found = await wait_for(
        stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id == mid, 1
    )
    assert found
    return found[0]


async def test_workers_follow_a_changed_workflow_and_replay_shows_it(
    live_stack: tuple[Settings, Children, Path],
) -> None:
    stack, _, rules = live_stack
    start = datetime.now(UTC) - timedelta(seconds=5)
    chat = 6_000_000 + int(uuid.uuid4().int % 100_000)
    text = "Мне не начислили бонусы на карту лояльности за покупку"
    before = await _routed(stack, chat, 1, text)
    assert before.departments == ["loyalty-it"]

    original = rules.read_text(encoding="utf-8")
    assert LOYALTY in original
    new_rules = rules.with_name("new-workflow.yaml")
    new_rules.write_text(original.replace(LOYALTY, TO_CARE), encoding="utf-8")
    shutil.copy(new_rules, rules)
    time.sleep(7)  # the workers check the file every 5 s
    after = await _routed(stack, chat + 1, 1, text)
    assert after.departments == ["customer-care"], after

    # Replay the traffic since the start against the ORIGINAL rules as "new": the loyalty
    # message would move back from customer-care to loyalty-it.
    old_rules = rules.with_name("old-workflow.yaml")
    old_rules.write_text(original, encoding="utf-8")
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap_servers or "",
        PIPELINE_TOPIC_PREFIX=stack.topic_prefix,
        PIPELINE_RULES_PATH=str(rules),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "rules",
            "replay",
            "--from",
            start.isoformat(),
            "--rules",
            str(old_rules),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["messages"] >= 2
    assert report["after"].get("loyalty-it", 0) > report["before"].get("loyalty-it", 0)
    assert report["changed"] >= 2
