"""Running the services: the Faust worker, child processes for the demo, the audit.

Child processes (worker, ingest) are started with PR_SET_PDEATHSIG so they die with their
parent, and are terminated in ``finally`` blocks, so Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from pipeline import bus
from pipeline.broker import _die_with_parent, free_port
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.domain.workflow import load_workflow
from pipeline.errors import BrokerError, DecodeError
from pipeline.events import InboundMessage, Outcome

log = logging.getLogger(__name__)


def departments(settings: Settings) -> list[str]:
    """Department names of the workflow file (for their task topics)."""
    return load_workflow(settings.rules_path).task_departments()


#: A worker's exit status after an agent crashed (EX_TEMPFAIL): restart it.
EXIT_AGENT_CRASHED = 75
#: A process's exit status when its stop did not finish within the grace (EX_SOFTWARE).
EXIT_STOP_TIMED_OUT = 70


def run_worker(settings: Settings) -> int:
    """Run the Faust worker (all stages) until SIGTERM/SIGINT, or until an agent crashed
    (``EXIT_AGENT_CRASHED``)."""
    import faust

    from pipeline.app import create_app
    from pipeline.faust_app import RouterApp

    use_event_loop(settings.event_loop)
    asyncio.run(bus.ensure_topics(settings, departments=departments(settings)))
    asyncio.run(check_partitions(settings))
    ctx = create_app(settings)
    tune_gc()
    watchdog = Watchdog(settings.shutdown_grace_s)

    class Worker(faust.Worker):
        async def stop(self) -> None:
            # Armed when the stop *starts* (a signal, a crash): Faust's own shutdown hook
            # fires only after "Wait for streams...", which hangs on a broker that is gone.
            watchdog.arm()
            await super().stop()

    async def arm_watchdog(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        watchdog.arm()

    ctx.app.on_before_shutdown.connect(cast(Any, arm_watchdog))
    crashed: list[str] = []

    def stop_after_crash(why: str) -> None:
        # Stopped as when told to (the watchdog armed), then exit EXIT_AGENT_CRASHED: a
        # supervisor restarts it (compose's restart policy, k8s, systemd), not only a
        # liveness probe, and it reads again the input it had not committed.
        crashed.append(why)
        signal.raise_signal(signal.SIGTERM)

    cast(RouterApp, ctx.app).on_agent_crash = stop_after_crash
    # Logging stays as the command set it up (pipeline.logs: text or JSON lines).
    worker = Worker(
        ctx.app, loglevel="INFO", quiet=True, redirect_stdouts=False, override_logging=False
    )
    worker.spinner = None  # its terminal escapes would land among the (JSON) log lines
    log.info("event loop: %s", type(worker.loop).__module__)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if not crashed:
            raise
    log.error("stopped: %s; exit %d (restart me)", crashed[0], EXIT_AGENT_CRASHED)
    return EXIT_AGENT_CRASHED


def use_event_loop(name: Literal["uvloop", "asyncio"]) -> None:
    """Make ``name`` the event loop of every loop created from now on (before the worker's).

    Measured with ``bench/pipeline_throughput.py`` (docs/ARCHITECTURE.md, Throughput): about a
    tenth less worker CPU per message; the passthrough baseline gains too.
    """
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)


#: Young-generation threshold of the worker's collector (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Take what is loaded so far (models, workflow, KB index: alive as long as the process)
    out of the collector's sight, and collect the young generation less often.

    Measured with gc.callbacks in bench/pipeline_throughput.py's flat-out phase (3,000
    messages): the collector took 0.19 ms of the worker's ~1.45 ms CPU per message, mostly
    full collections walking the classifier's objects; 0.07 ms after ``gc.freeze()``, 0.016 ms
    with the young threshold raised too (peak memory unchanged, 354 MB).
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


#: Topics keyed by customer whose records the per-customer tables must be co-partitioned with.
CO_PARTITIONED = ("inbound", "classified", "replies", "case-status")


async def check_partitions(settings: Settings) -> None:
    """Refuse to start when the input topics have another partition count than the tables.

    The worker's tables get ``PIPELINE_PARTITIONS`` partitions and a record's table state lives
    in the changelog partition of the same number: with topics created with another count
    (a create-topics script, a bench run with other settings) a customer's delivered-ids and
    cases would be restored by a worker that does not read the customer's records (issue 11:
    replies sent twice after a rebalance).
    """
    names = [settings.topic(n) for n in CO_PARTITIONED]
    async with bus.reader(settings, *names) as consumer:  # assigned every partition of each
        counts = Counter(tp.topic for tp in consumer.assignment())
    wrong = {t: n for t, n in counts.items() if n != settings.partitions}
    if wrong:
        raise BrokerError(
            f"PIPELINE_PARTITIONS={settings.partitions} but "
            + ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
            + ": set PIPELINE_PARTITIONS to the topics' partition count"
        )


class Watchdog:
    """Ends the process hard when a stop has not finished ``grace_s`` after it began."""

    def __init__(self, grace_s: float, on_expiry: Callable[[], None] | None = None) -> None:
        self.grace_s = grace_s
        self._on_expiry = on_expiry or _force_exit
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start the countdown (once; later calls keep the first deadline)."""
        if self._timer is None:
            self._timer = threading.Timer(self.grace_s, self._on_expiry)
            self._timer.daemon = True
            self._timer.start()


def _force_exit() -> None:
    log.error("shutdown did not finish in time; exiting hard")
    os._exit(EXIT_STOP_TIMED_OUT)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process so it uses the same broker and topics."""
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers or ""
    env["PIPELINE_TOPIC_PREFIX"] = settings.topic_prefix
    env["PIPELINE_APP_ID"] = settings.app_id
    env["PIPELINE_DATA_DIR"] = str(settings.data_dir)
    env["PIPELINE_PARTITIONS"] = str(settings.partitions)  # tables must match their topics
    env["PIPELINE_WEB_PORT"] = str(settings.web_port)
    env["PIPELINE_INGEST_PORT"] = str(settings.ingest_port)
    env["PIPELINE_SMTP_PORT"] = str(settings.smtp_port)
    env["PIPELINE_FETCH_MAX_WAIT_MS"] = str(settings.fetch_max_wait_ms)
    env["PIPELINE_EVENT_LOOP"] = settings.event_loop
    env["PIPELINE_SESSION_TIMEOUT_S"] = str(settings.session_timeout_s)
    env["PIPELINE_COMMIT_INTERVAL_S"] = str(settings.commit_interval_s)
    env["PIPELINE_TABLE_STANDBY_REPLICAS"] = str(settings.table_standby_replicas)
    env["PIPELINE_LAG_INTERVAL_S"] = str(settings.lag_interval_s)
    env["PIPELINE_STALL_AFTER_S"] = str(settings.stall_after_s)
    env["PIPELINE_RULES_PATH"] = str(settings.rules_path)
    env["PIPELINE_RULES_SOURCE"] = settings.rules_source
    env.update(extra)
    return env


def own_stack(base: Settings, prefix: str, **update: Any) -> Settings:
    """``base`` with topics, a consumer group and ports of its own (``prefix`` and a random
    tag) and a short group session (6 s), for a stack a test or a bench starts on a shared
    broker; ``update``: more settings. The caller creates the topics (``bus.ensure_topics``)."""
    tag = uuid.uuid4().hex[:8]
    fresh: dict[str, Any] = {
        "topic_prefix": f"{prefix}{tag}.",
        "app_id": f"{prefix}-{tag}",
        "web_port": free_port(),
        "ingest_port": free_port(),
        "smtp_port": free_port(),
        "session_timeout_s": 6.0,
    }
    return base.model_copy(update={**fresh, **update})


@dataclass
class Children:
    """Child processes started by this one; stopped together."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    #: The children's stdout and stderr are appended here; None: this process's own.
    log_path: Path | None = None

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``python -m pipeline.cli ARGS`` as a child."""
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(self.log_path.open("ab")) if self.log_path else None
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
                # Not in the terminal's process group: Ctrl-C reaches this process alone,
                # which stops its children (``stop``). A child stopped by the same Ctrl-C
                # could otherwise exit before this process saw it, and ``check_alive`` took
                # that for a crash (the demo said "console exited with code 0" and failed).
                start_new_session=True,
            )
        self.procs.append((name, proc))
        log.info("started %s (pid %s)", name, proc.pid)
        return proc

    def check_alive(self) -> None:
        """Raise if a child has exited."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise BrokerError(f"{name} exited with code {proc.returncode}")

    def kill(self, name: str) -> None:
        """SIGKILL the first child called ``name`` and forget it (a crash the tests stage)."""
        proc = next(p for n, p in self.procs if n == name)
        proc.kill()
        proc.wait(timeout=10)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop(self) -> None:
        """SIGTERM every child, SIGKILL what is still alive after 10 s."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing", name)
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


@contextlib.contextmanager
def children(log_path: Path | None = None) -> Iterator[Children]:
    """A group of child processes, always stopped on exit (their output to ``log_path``)."""
    group = Children(log_path=log_path)
    try:
        yield group
    finally:
        group.stop()


def wait_http(url: str, timeout_s: float, group: Children | None = None) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if group is not None:
            group.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BrokerError(f"{url} did not answer within {timeout_s:.0f}s")


@dataclass
class AuditReport:
    """Result of checking invariant 1 over the inbound and outcomes topics.

    A replay (a restart, a rebalance) re-emits a message's outcome with the same message id:
    such a repeated record is harmless (consumers deduplicate by id) and is counted apart
    from a *conflict*, where records of one id disagree on the decision.
    """

    inbound: int
    outcomes: int
    by_outcome: dict[str, int]
    missing: list[str]
    #: Ids with more than one outcome record that agree on the decision (replays).
    duplicated: list[str]
    undecodable_inbound: int
    #: Outcome records read for the messages in range (``outcomes`` counts distinct ids).
    outcome_records: int = 0
    #: Ids whose outcome records disagree (outcome kind, case or departments).
    conflicting: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every inbound message has one outcome, and its records agree."""
        return not self.missing and not self.conflicting


def _decision(o: Outcome) -> tuple[str, str | None, tuple[str, ...]]:
    # What a replay must decide again identically; times and reason wording may differ.
    return (o.outcome.value, o.case_id, tuple(sorted(o.departments)))


def audit_records(
    inbound_records: Sequence[bus.Record],
    outcome_records: Sequence[bus.Record],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AuditReport:
    """The audit over records already read (pure)."""
    lo = since.timestamp() * 1000 if since else float("-inf")
    hi = until.timestamp() * 1000 if until else float("inf")
    ids: set[str] = set()
    bad = 0
    for r in inbound_records:
        if not lo <= r.timestamp_ms <= hi:
            continue
        try:
            ids.add(decode(InboundMessage, r.value).message_id)
        except DecodeError:
            bad += 1
    seen: Counter[str] = Counter()
    decisions: dict[str, set[tuple[str, str | None, tuple[str, ...]]]] = {}
    kinds: dict[str, str] = {}
    for r in outcome_records:
        try:
            o = decode(Outcome, r.value)
        except DecodeError:
            continue
        seen[o.message_id] += 1
        decisions.setdefault(o.message_id, set()).add(_decision(o))
        kinds.setdefault(o.message_id, o.outcome.value)
    by_outcome = Counter(kinds[i] for i in ids if i in kinds)
    return AuditReport(
        inbound=len(ids),
        outcomes=sum(1 for i in ids if i in seen),
        by_outcome=dict(by_outcome),
        missing=sorted(i for i in ids if i not in seen),
        duplicated=sorted(i for i in ids if seen[i] > 1 and len(decisions[i]) == 1),
        undecodable_inbound=bad,
        outcome_records=sum(seen[i] for i in ids),
        conflicting=sorted(i for i in ids if len(decisions.get(i, ())) > 1),
    )


async def audit(
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    idle_s: float = 2.0,
) -> AuditReport:
    """Prove invariant 1 for a time range: every inbound message id has one outcome."""
    inbound_records = await bus.read_all(settings, [settings.topic("inbound")], idle_s=idle_s)
    outcome_records = await bus.read_all(settings, [settings.topic("outcomes")], idle_s=idle_s)
    return audit_records(inbound_records, outcome_records, since=since, until=until)
