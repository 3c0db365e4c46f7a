"""The workflow a running worker uses: its file, or a newer one published to the config topic.

Every stage of a worker reads ``LiveWorkflow.current``. Two things replace it while the
worker runs, and **the newest wins**:

* the file at ``PIPELINE_RULES_PATH``, checked every few seconds (its modification time);
* ``WorkflowPublished`` records on the compacted ``config`` topic (``pipeline rules
  publish FILE``), which every worker reads in full, so all hosts run the same rules
  without sharing a file system.

A published workflow replaces the file's when it was published after the file was last
changed; an edit of the file after that wins again. ``PIPELINE_RULES_SOURCE`` changes that
rule: ``topic`` — a published workflow always wins and file edits are ignored once one is
known (for hosts whose files may be stale, e.g. an image built after the publication);
``file`` — the topic is ignored. A workflow that does not validate is logged and ignored: the
previous one keeps serving. Listeners (the classifier rebuilding its tag rules, stores and
weights) are called after each change.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pipeline import bus
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.domain.workflow import Workflow, load_workflow, parse_workflow
from pipeline.errors import ConfigError, DecodeError
from pipeline.events import WorkflowPublished

log = logging.getLogger(__name__)

__all__ = ["CONFIG_KEY", "LiveWorkflow", "install", "published", "workflow_in_force"]

#: Key of the workflow record on the compacted config topic.
CONFIG_KEY = "workflow"
FILE_CHECK_INTERVAL_S = 5.0
RulesSource = Literal["newest", "topic", "file"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def published(
    text: str, source: str, *, now: datetime | None = None
) -> tuple[Workflow, WorkflowPublished]:
    """Workflow ``text`` validated (ConfigError if bad) and its config-topic record."""
    wf = parse_workflow(text, source=source)
    return wf, WorkflowPublished(
        text=text,
        sha256=_sha(text),
        source=source,
        published_at=now or datetime.now(UTC),
    )


class LiveWorkflow:
    """The current workflow of this worker and where it came from."""

    def __init__(self, path: Path, source: RulesSource = "newest") -> None:
        self.path = path
        self.source = source
        self._mtime = path.stat().st_mtime
        self.current: Workflow = load_workflow(path)
        #: When the current workflow was written (file mtime or publication time), epoch s.
        self.written_at: float = self._mtime
        self.origin = f"file {path}"
        #: The YAML of the current workflow, as written.
        self.text = path.read_text(encoding="utf-8")
        self.sha256 = _sha(self.text)
        self._listeners: list[Callable[[Workflow], None]] = []

    @property
    def from_topic(self) -> bool:
        """Whether the workflow in force came from the config topic."""
        return self.origin.startswith("config topic")

    def on_change(self, listener: Callable[[Workflow], None]) -> None:
        """Call ``listener(workflow)`` after every change."""
        self._listeners.append(listener)

    def _replace(
        self, wf: Workflow, written_at: float, origin: str, sha256: str, text: str
    ) -> None:
        self.text = text
        self.current = wf
        self.written_at = written_at
        self.origin = origin
        self.sha256 = sha256
        log.info("workflow now from %s (sha256 %s)", origin, sha256[:12])
        for listener in self._listeners:
            try:
                listener(wf)
            except Exception:  # one stage's failure must not stop the others (logged)
                log.exception("a stage could not take the new workflow")

    def poll_file(self) -> bool:
        """Take the file when it changed since it was last seen (and is newer than current)."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            log.error("workflow %s cannot be read, keeping the current one: %s", self.path, exc)
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        if self.source == "topic" and self.from_topic:
            log.warning("workflow %s changed; ignored: the config topic's rules", self.path)
            return False
        if mtime <= self.written_at:
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
            wf = parse_workflow(text, source=str(self.path))
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            log.error("workflow %s changed but is invalid, keeping the old one: %s", self.path, exc)
            return False
        self._replace(wf, mtime, f"file {self.path}", _sha(text), text)
        return True

    def apply(self, record: WorkflowPublished) -> bool:
        """Take a published workflow when it is newer than the current one and valid."""
        if self.source == "file":
            return False
        at = record.published_at.timestamp()
        sha = _sha(record.text)
        origin = f"config topic ({record.source})"
        if sha == self.sha256:
            if self.source == "topic" and not self.from_topic:
                self._replace(self.current, at, origin, sha, record.text)  # same rules, topic's
                return True
            return False
        if at <= self.written_at and not (self.source == "topic" and not self.from_topic):
            return False  # older than what runs (under "topic": older than a published one)
        try:
            wf = parse_workflow(record.text, source=origin)
        except ConfigError as exc:
            log.error("published workflow is invalid, keeping the current one: %s", exc)
            return False
        self._replace(wf, at, origin, sha, record.text)
        return True


def _take(live: LiveWorkflow, record: bus.Record) -> None:
    if record.key != CONFIG_KEY.encode() or record.value is None:
        return  # another kind of configuration, or a tombstone: nothing to apply
    try:
        live.apply(decode(WorkflowPublished, record.value))
    except DecodeError as exc:
        log.error("bad record at %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc)


async def workflow_in_force(settings: Settings) -> LiveWorkflow:
    """The workflow the workers run now: the file, or a newer one on the config topic."""
    live = LiveWorkflow(settings.rules_path, settings.rules_source)
    topic = settings.topic("config")
    await bus.ensure_topics(settings, [topic])
    for record in await bus.read_all(settings, [topic]):
        _take(live, record)
    return live


def install(ctx: Context) -> LiveWorkflow:
    """The worker's live workflow, with a timer on the file and a task on the config topic."""
    live = LiveWorkflow(ctx.settings.rules_path, ctx.settings.rules_source)
    topic = ctx.settings.topic("config")

    def report(_: Workflow | None = None) -> None:
        # Operators (and tests) can see which workflow every worker runs.
        ctx.status["workflow"] = {"sha256": live.sha256, "origin": live.origin}

    report()
    live.on_change(report)

    async def watch_file() -> None:
        live.poll_file()

    async def follow_config() -> None:
        await bus.follow(ctx.settings, topic, functools.partial(_take, live))

    ctx.app.timer(FILE_CHECK_INTERVAL_S)(watch_file)
    ctx.app.task(follow_config)
    return live
