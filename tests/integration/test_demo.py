"""The README's main command end to end: ``pipeline demo`` starts its own embedded broker,
worker, ingest and console, sends every sample, accounts for each, serves, and stops on
Ctrl-C (SIGINT to its process group, as a terminal sends it) with nothing left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Settings

if TYPE_CHECKING:
    from tests.plugins.waiting import WaitUntilSync

#: The console script's entry with SIGINT handled as in a terminal's foreground job: a test
#: run started in the background (a CI runner's ``cmd &``) has SIGINT ignored, and children
#: inherit that.
DEMO = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from pipeline.cli import main; sys.exit(main(['demo']))"
)


def _descendants(root: int) -> set[int]:
    """The live processes below ``root`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found.update(kids)
        todo.extend(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_demo_accounts_for_every_sample_and_stops_on_ctrl_c(
    broker_settings: Settings, tmp_path: Path, wait_until_sync: WaitUntilSync
) -> None:
    env = dict(os.environ)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # its own embedded broker, as on a fresh machine
    env["PIPELINE_DATA_DIR"] = str(broker_settings.data_dir)  # the session's trained model
    out = tmp_path / "demo.out"
    with out.open("w") as f:
        demo = subprocess.Popen(
            [sys.executable, "-c", DEMO],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_until_sync(
            lambda: "press Ctrl-C" in out.read_text() or demo.poll() is not None,
            timeout_s=900,
            what="the demo serving",
            interval_s=1.0,
        )
        text = out.read_text()
        assert demo.poll() is None, text[-3000:]
        started = _descendants(demo.pid)
        assert len(started) >= 4, started  # broker, worker, ingest, console
        os.killpg(demo.pid, signal.SIGINT)
        code = demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    text = out.read_text()
    assert code == 0, text[-3000:]
    assert "every sample accounted for" in text, text[-3000:]
    assert text.rstrip().endswith("stopping"), text[-3000:]
    summary = re.search(r"summary: (\d+) samples, (.*); dead letters on the DLQ topic: (\d+)", text)
    assert summary is not None, text[-3000:]
    counts = dict(kv.split("=") for kv in summary.group(2).split(", "))
    assert "missing" not in counts
    assert sum(map(int, counts.values())) == int(summary.group(1))
    assert int(counts.get("routed", 0)) > 0 and int(counts.get("auto_resolved", 0)) > 0, counts
    assert int(summary.group(3)) >= 1  # the hostile sample's dead letter
    left = wait_until_sync(
        lambda: not any(_alive(p) for p in started) or None,
        timeout_s=30,
        what="the demo's children gone",
    )
    assert left
