"""``pipeline rules check|explain|replay``: validate, explain and replay the workflow rules.

    pipeline rules check FILE
    pipeline rules explain "text" [--channel CH] [--customer ID] [--tier T] [--language ru|en]
                                  [--rules FILE] [--now ISO] [--json]
    pipeline rules explain --data FILE [--text-col text] [--rules FILE]   # one JSON line per row
    pipeline rules replay --from TIME [--until TIME] [--rules NEW] [--limit N] [--json]
    pipeline rules publish FILE    # → compacted config topic: every running worker takes it
    pipeline rules current [--json | --yaml]   # which workflow the workers run (file or topic)
    pipeline rules current --departments [--json]   # its departments and their task topics

``explain`` never touches Kafka: it runs the classifier, the KB index and ``route_message``
in-process. Offline there is no history, so duplicate and incident detection are reported
as not evaluated.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field

from pipeline.bus import ensure_topics, publish
from pipeline.classify.core import Classifier
from pipeline.config import Settings, get_settings
from pipeline.domain.workflow import Workflow, load_workflow
from pipeline.errors import ConfigError, InvalidInput
from pipeline.events import (
    Channel,
    ClassifiedMessage,
    CustomerProfile,
    InboundMessage,
    WorkflowPublished,
    derive_id,
)
from pipeline.ingest.message import ParsedMessage, build_inbound
from pipeline.route.core import RouteDecision, route_message
from pipeline.route.kb import KbIndex
from pipeline.topics import task_topic

log = logging.getLogger(__name__)

__all__ = [
    "Explainer",
    "ReplayReport",
    "compare_routing",
    "explain_json",
    "format_explain",
    "register",
]

NO_HISTORY = "not evaluated offline: duplicate and incident detection need the worker's history"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``rules check``, ``rules explain`` and ``rules replay``."""
    rules = sub.add_parser("rules", help="workflow rules: check, explain, replay")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="RULES_COMMAND")
    rules.set_defaults(handler=lambda _a: _help(rules))

    c = rules_sub.add_parser("check", help="validate a workflow file (errors with line numbers)")
    c.add_argument("file", type=Path)
    c.add_argument("--json", action="store_true", help="one JSON object (errors too)")
    c.set_defaults(handler=_check)

    e = rules_sub.add_parser(
        "explain",
        help="print the full routing decision for a text, without Kafka",
        description="Classification, similarity, KB auto-reply, matched rules and the "
        "sub-requests that would be created.",
    )
    e.add_argument("text", nargs="?", help="message text (or --data)")
    e.add_argument("--channel", default="api", choices=[c.value for c in Channel])
    e.add_argument("--customer", default="explain", help="customer id")
    e.add_argument("--tier", default="standard", choices=["standard", "silver", "gold", "vip"])
    e.add_argument("--segment", default=None)
    e.add_argument("--language", default=None, choices=["ru", "en"], help="default: guessed")
    e.add_argument("--rules", type=Path, default=None, help="workflow file (default: settings)")
    e.add_argument("--now", default=None, help="ISO time for time-of-day rules (default: now)")
    e.add_argument("--json", action="store_true", help="one JSON object")
    e.add_argument("--data", type=Path, default=None, help="CSV or JSONL: one JSON line per row")
    e.add_argument("--text-col", default="text", help="text column / key in --data")
    e.set_defaults(handler=_explain)

    r = rules_sub.add_parser(
        "replay",
        help="re-route past inbound messages under new rules and show what changes",
    )
    r.add_argument("--from", dest="from_", required=True, help="ISO time (UTC if no zone)")
    r.add_argument("--until", default=None, help="ISO time (default: up to the end)")
    r.add_argument("--rules", type=Path, default=None, help="new workflow (default: current)")
    r.add_argument(
        "--current",
        type=Path,
        default=None,
        help="current workflow (default: what the workers run: the file, or a newer published one)",
    )
    r.add_argument("--limit", type=int, default=10_000, help="max messages")
    r.add_argument("--examples", type=int, default=10, help="changed messages to show")
    r.add_argument("--json", action="store_true", help="one JSON object")
    r.set_defaults(handler=_replay)

    p = rules_sub.add_parser(
        "publish",
        help="validate a workflow file and publish it to the config topic (all workers take it)",
    )
    p.add_argument("file", type=Path)
    p.set_defaults(handler=_publish)

    cur = rules_sub.add_parser(
        "current", help="which workflow the workers run now: origin, sha256, or its YAML"
    )
    how = cur.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="one JSON object")
    how.add_argument("--yaml", action="store_true", help="the workflow itself (to edit it)")
    cur.add_argument(
        "--departments",
        action="store_true",
        help="the departments: name, kind, task topic (internal ones), title; with --json "
        "one JSON object per line",
    )
    cur.set_defaults(handler=_current)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


# ---------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    try:
        wf = load_workflow(args.file)
    except ConfigError as exc:
        if args.json:
            _out(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        else:
            sys.stderr.write(f"{exc}\n")
        return 1
    if args.json:
        doc = {"ok": True, "rules": len(wf.rules), "departments": sorted(wf.departments)}
        _out(json.dumps(doc, ensure_ascii=False))
    else:
        _out(f"ok: {len(wf.rules)} rules, {len(wf.departments)} departments")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from pipeline.live_workflow import CONFIG_KEY, published

    try:
        text = args.file.read_text(encoding="utf-8")
        wf, record = published(text, str(args.file))
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    settings = get_settings()
    topic = settings.topic("config")
    asyncio.run(_send_workflow(settings, topic, CONFIG_KEY, record, wf.task_departments()))
    _out(f"published {args.file} (sha256 {record.sha256[:12]}) to {topic}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from pipeline.live_workflow import workflow_in_force

    settings = get_settings()
    live = asyncio.run(workflow_in_force(settings))
    if args.departments:
        for line in department_lines(live.current, settings, as_json=args.json):
            _out(line)
    elif args.yaml:
        sys.stdout.write(live.text)
    elif args.json:
        _out(json.dumps({"origin": live.origin, "sha256": live.sha256}, ensure_ascii=False))
    else:
        _out(f"{live.origin}\nsha256 {live.sha256}")
    return 0


def department_lines(wf: Workflow, settings: Settings, *, as_json: bool) -> list[str]:
    """One line per department (JSON lines with ``as_json``): where its work arrives."""
    out = []
    for name, dept in sorted(wf.departments.items()):
        topic = task_topic(settings, dept.topic or name) if dept.kind == "internal" else None
        title = dept.title if isinstance(dept.title, str) else " / ".join(dept.title.values())
        if as_json:
            doc = {"name": name, "kind": dept.kind, "task_topic": topic, "title": title}
            out.append(json.dumps(doc, ensure_ascii=False))
        else:
            where = topic or "e-mail (external)"
            out.append(f"{name:16} {dept.kind:8} {where:28} {title}")
    return out


async def _send_workflow(
    settings: Settings, topic: str, key: str, record: WorkflowPublished, departments: list[str]
) -> None:
    # A new department's task topic must exist before a worker routes to it.
    await ensure_topics(settings, departments=departments)
    await publish(settings, topic, [(key, record)])


# ---------------------------------------------------------------- explain


class _Classifier(Protocol):
    @property
    def version(self) -> str: ...

    def classify_batch(
        self, messages: Sequence[InboundMessage], *, now: datetime | None = None
    ) -> list[ClassifiedMessage]: ...


class Explainer:
    """Classifier + KB + workflow, loaded once, for explaining and replaying messages."""

    def __init__(
        self,
        workflow: Workflow,
        classifier: _Classifier,
        kb: KbIndex | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.workflow = workflow
        self.classifier = classifier
        self.kb = kb
        self.settings = settings
        self.notes: list[str] = []

    @classmethod
    def from_settings(cls, settings: Settings, workflow: Workflow) -> Explainer:
        """The worker's classifier and KB for this workflow (a KB that cannot load is a note)."""
        classifier = Classifier.from_settings(
            settings,
            tag_rules=workflow.tag_rules,
            stores=workflow.stores,
            weights=workflow.priority,
        )
        notes: list[str] = []
        kb: KbIndex | None = None
        try:
            kb = KbIndex.from_dir(settings.kb_dir)
        except ConfigError as exc:
            notes.append(f"knowledge base not loaded: {exc}")
        out = cls(workflow, classifier, kb, settings)
        out.notes = notes
        return out

    def inbound(
        self,
        text: str,
        *,
        channel: str = "api",
        customer: str = "explain",
        tier: str = "standard",
        segment: str | None = None,
        language: str | None = None,
        now: datetime,
        key: str = "",
    ) -> InboundMessage:
        """The InboundMessage ingest would produce for this text (``build_inbound``: the same
        cleaning, truncation, language detection and PII spans); ``language`` overrides the
        detected language, as an operator's choice."""
        parsed = ParsedMessage(
            channel=Channel(channel),
            channel_message_id=key or derive_id("explain", customer, text),
            identities=(),
            text=text,
            customer_id=customer,
        )
        profile = CustomerProfile(customer_id=customer, tier=tier, segment=segment)
        msg = build_inbound(parsed, profile, self.settings or get_settings(), now)
        if language is not None:
            msg = msg.model_copy(update={"language": language, "language_confidence": 1.0})
        return msg

    def decide(
        self, messages: Sequence[InboundMessage], *, now: datetime
    ) -> list[tuple[ClassifiedMessage, Any, RouteDecision]]:
        """Classify, search the KB and route each message (one classifier batch)."""
        classified = self.classifier.classify_batch(list(messages), now=now)
        out = []
        for cm in classified:
            match = None
            if self.kb is not None:
                match = self.kb.search(
                    cm.inbound.text, cm.inbound.language, [i.label for i in cm.intents]
                )
            decision = route_message(
                cm, self.workflow, now=now, kb_match=match, settings=self.settings
            )
            out.append((cm, match, decision))
        return out


def explain_json(
    cm: ClassifiedMessage, match: Any, decision: RouteDecision, notes: Sequence[str] = ()
) -> dict[str, Any]:
    """The explain document (``--json``)."""
    kb: dict[str, Any]
    if match is None:
        kb = {
            "article_id": None,
            "intents": [],
            "confidence": 0.0,
            "auto_reply": False,
            "reason": "knowledge base unavailable",
        }
    else:
        kb = match.model_dump(mode="json")
    auto = decision.outcome.outcome.value == "auto_resolved" and decision.trace.path == "auto_reply"
    kb["auto_reply_fires"] = auto
    rules = [
        {"intent": it.intent, "category": it.category, **rt.model_dump(mode="json")}
        for it in decision.trace.intents
        for rt in it.rules
    ]
    return {
        "text": cm.inbound.text,
        "channel": cm.inbound.channel.value,
        "customer": cm.customer_id,
        "language": cm.inbound.language,
        "classification": {
            "model_version": cm.model_version,
            "intents": [i.model_dump(mode="json") for i in cm.intents],
            "tags": list(cm.tags),
            "entities": [e.model_dump(mode="json") for e in cm.entities],
            "priority": cm.priority.model_dump(mode="json"),
        },
        "similarity": {"duplicate_of": None, "incident_id": None, "note": NO_HISTORY},
        "kb": kb,
        "rules": rules,
        "routing": [it.model_dump(mode="json", exclude={"rules"}) for it in decision.trace.intents],
        "sub_requests": [
            {
                "kind": s.kind.value,
                "department": s.department,
                "recipient": s.recipient,
                "intent": s.intent,
                "category": s.category,
                "text": s.text,
                "priority": s.priority.level,
                "sla_due_at": s.sla_due_at.isoformat() if s.sla_due_at else None,
                "sub_request_id": s.sub_request_id,
            }
            for s in decision.sub_requests
        ],
        "replies": [
            {
                "kind": r.kind.value,
                "language": r.language,
                "text": r.text,
                "article_id": r.article_id,
                "link": r.link,
            }
            for r in decision.replies
        ],
        "outcome": decision.outcome.outcome.value,
        "departments": decision.outcome.departments,
        "reason": decision.outcome.reason,
        "case_id": decision.outcome.case_id,
        "case_events": [e.type.value for e in decision.case_events],
        "notes": [*notes, *decision.trace.notes],
    }


def format_explain(doc: dict[str, Any]) -> str:
    """Human-readable rendering of the explain document."""
    lines: list[str] = []
    add = lines.append
    cls = doc["classification"]
    add(f"message: {doc['text']!r}")
    add(f"  channel {doc['channel']}, customer {doc['customer']}, language {doc['language']}")
    add(f"classification (model {cls['model_version']}):")
    for i in cls["intents"]:
        sp = i["span"]
        add(
            f"  intent {i['label']} / {i['category']}  confidence {i['confidence']:.2f}  "
            f"span [{sp['start']}:{sp['end']}] {i['text']!r}"
        )
    if cls["tags"]:
        add(f"  tags: {', '.join(cls['tags'])}")
    for e in cls["entities"]:
        add(f"  entity {e['kind']} = {e['value']}")
    pr = cls["priority"]
    add(f"  priority {pr['level']} (score {pr['score']:g})")
    for comp in pr.get("components", []):
        add(f"    {comp['points']:+g} {comp['name']}: {comp['reason']}")
    add(f"similarity: {doc['similarity']['note']}")
    kb = doc["kb"]
    conf = kb.get("confidence") or 0.0
    add(
        f"knowledge base: article {kb.get('article_id')} confidence {conf:.2f}, "
        f"auto-reply {'FIRES' if kb['auto_reply_fires'] else 'does not fire'}"
        + (f" ({kb['reason']})" if kb.get("reason") else "")
    )
    add("rules:")
    for r in doc["rules"]:
        mark = "MATCH" if r["matched"] else "  -  "
        stop = " (stop)" if r["stop"] else ""
        add(f"  [{mark}] #{r['index']} {r['rule']} for {r['intent']}{stop}")
        for c in r["conditions"]:
            add(f"          {'✓' if c['ok'] else '✗'} {c['why']}")
        if r["matched"]:
            add(f"          → {'; '.join(r['actions'])}")
    for it in doc["routing"]:
        for n in it["notes"]:
            add(f"  note ({it['intent']}): {n}")
    add("sub-requests:")
    if not doc["sub_requests"]:
        add("  (none)")
    for s in doc["sub_requests"]:
        who = s["recipient"] or f"tasks.{s['department']}"
        add(
            f"  {s['kind']:<9} {s['department']:<16} → {who}  [{s['intent']}, {s['priority']}, "
            f"due {s['sla_due_at']}]"
        )
        add(f"            {s['text']!r}")
    add("replies:")
    for r in doc["replies"]:
        add(f"  {r['kind']}: {r['text']}")
    add(f"outcome: {doc['outcome']} → {', '.join(doc['departments']) or '-'} ({doc['reason']})")
    for n in doc["notes"]:
        add(f"note: {n}")
    return "\n".join(lines)


def _parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"bad time {text!r}: use ISO 8601, e.g. 2026-03-03T10:00+03:00") from exc
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def read_texts(path: Path, column: str) -> Iterator[str]:
    """Texts of a CSV (header row) or JSONL file."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                for n, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if column not in row:
                            raise InvalidInput(f"{path}:{n}: no key {column!r}", field=column)
                        yield str(row[column])
            else:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or column not in reader.fieldnames:
                    raise InvalidInput(
                        f"{path}: no column {column!r} in {reader.fieldnames}", field=column
                    )
                for row in reader:
                    yield row[column] or ""
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: invalid JSON line: {exc}") from exc


def _explain(args: argparse.Namespace) -> int:
    settings = get_settings()
    wf = load_workflow(args.rules or settings.rules_path)
    now = _parse_time(args.now)
    if args.data is None and not args.text:
        sys.stderr.write("give a text or --data FILE\n")
        return 2
    ex = Explainer.from_settings(settings, wf)
    texts = list(read_texts(args.data, args.text_col)) if args.data else [args.text]
    msgs = [
        ex.inbound(
            t,
            channel=args.channel,
            customer=args.customer,
            tier=args.tier,
            segment=args.segment,
            language=args.language,
            now=now,
            key=str(n),
        )
        for n, t in enumerate(texts)
    ]
    for cm, match, decision in ex.decide(msgs, now=now):
        doc = explain_json(cm, match, decision, ex.notes)
        if args.json or args.data:
            sys.stdout.write(orjson.dumps(doc).decode("utf-8") + "\n")
        else:
            _out(format_explain(doc))
    return 0


# ---------------------------------------------------------------- replay


class ReplayChange(BaseModel):
    """One message whose routing differs under the new rules."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    text: str
    before: list[str]
    after: list[str]


class ReplayReport(BaseModel):
    """How routing changes between two workflows over the same messages."""

    model_config = ConfigDict(frozen=True)

    messages: int
    changed: int
    before: dict[str, int] = Field(description="Sub-requests per department, current rules.")
    after: dict[str, int] = Field(description="Sub-requests per department, new rules.")
    outcomes_before: dict[str, int]
    outcomes_after: dict[str, int]
    examples: list[ReplayChange]


def _targets(decision: RouteDecision) -> list[str]:
    return sorted(
        f"{s.kind.value}:{s.department}" + (f":{s.recipient}" if s.recipient else "")
        for s in decision.sub_requests
    ) or [f"({decision.outcome.outcome.value})"]


def compare_routing(
    messages: Sequence[ClassifiedMessage],
    current: Workflow,
    new: Workflow,
    *,
    now: datetime,
    kb_search: Callable[[ClassifiedMessage], Any] | None = None,
    reclassify: Callable[[Sequence[ClassifiedMessage]], list[ClassifiedMessage]] | None = None,
    examples: int = 10,
) -> ReplayReport:
    """Route every message under both workflows and count the differences (pure).

    ``reclassify`` re-runs the classifier for the new workflow when its stores, tag rules or
    priority weights differ from the current ones.
    """
    new_msgs = list(reclassify(messages)) if reclassify is not None else list(messages)
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    ob: Counter[str] = Counter()
    oa: Counter[str] = Counter()
    changes: list[ReplayChange] = []
    changed = 0
    for old_m, new_m in zip(messages, new_msgs, strict=True):
        d1 = route_message(
            old_m, current, now=now, kb_match=kb_search(old_m) if kb_search else None
        )
        d2 = route_message(new_m, new, now=now, kb_match=kb_search(new_m) if kb_search else None)
        before.update(s.department for s in d1.sub_requests)
        after.update(s.department for s in d2.sub_requests)
        ob[d1.outcome.outcome.value] += 1
        oa[d2.outcome.outcome.value] += 1
        t1, t2 = _targets(d1), _targets(d2)
        if t1 != t2:
            changed += 1
            if len(changes) < examples:
                changes.append(
                    ReplayChange(
                        message_id=old_m.message_id,
                        text=old_m.inbound.text[:200],
                        before=t1,
                        after=t2,
                    )
                )
    return ReplayReport(
        messages=len(messages),
        changed=changed,
        before=dict(sorted(before.items())),
        after=dict(sorted(after.items())),
        outcomes_before=dict(sorted(ob.items())),
        outcomes_after=dict(sorted(oa.items())),
        examples=changes,
    )


def format_replay(report: ReplayReport) -> str:
    """Table of counts per department and examples of changed messages."""
    lines = [f"messages: {report.messages}, routing changed for {report.changed}"]
    deps = sorted(set(report.before) | set(report.after))
    lines.append(f"{'department':<20} {'before':>7} {'after':>7} {'delta':>7}")
    for d in deps:
        b, a = report.before.get(d, 0), report.after.get(d, 0)
        lines.append(f"{d:<20} {b:>7} {a:>7} {a - b:>+7}")
    for k in sorted(set(report.outcomes_before) | set(report.outcomes_after)):
        lines.append(
            f"outcome {k:<12} {report.outcomes_before.get(k, 0):>7} "
            f"{report.outcomes_after.get(k, 0):>7}"
        )
    for ch in report.examples:
        lines.append(f"- {ch.message_id}: {ch.text!r}")
        lines.append(f"    before: {', '.join(ch.before)}")
        lines.append(f"    after:  {', '.join(ch.after)}")
    return "\n".join(lines)


async def read_inbound(
    settings: Settings, since: datetime, until: datetime | None, limit: int, idle_s: float = 2.0
) -> list[InboundMessage]:
    """Inbound messages from ``since`` (broker timestamps, offsets_for_times) on."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from pipeline.bus import bootstrap, start_client
    from pipeline.codec import decode
    from pipeline.errors import DecodeError

    topic = settings.topic("inbound")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    await start_client(consumer.start, consumer.stop)
    out: list[InboundMessage] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            raise ConfigError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        since_ms = int(since.timestamp() * 1000)
        offsets = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        for tp in tps:
            found = offsets.get(tp)
            if found is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found.offset)
        until_ms = int(until.timestamp() * 1000) if until else None
        loop = asyncio.get_running_loop()
        last = loop.time()
        while len(out) < limit and loop.time() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for _tp, records in batch.items():
                for rec in records:
                    last = loop.time()
                    if rec.timestamp < since_ms or (
                        until_ms is not None and rec.timestamp > until_ms
                    ):
                        continue
                    try:
                        out.append(decode(InboundMessage, rec.value))
                    except DecodeError as exc:
                        log.warning("%s[%d]@%d skipped: %s", topic, rec.partition, rec.offset, exc)
    finally:
        await consumer.stop()
    return out[:limit]


def _replay(args: argparse.Namespace) -> int:
    from pipeline.live_workflow import workflow_in_force

    settings = get_settings()
    if args.current:
        current = load_workflow(args.current)
    else:
        live = asyncio.run(workflow_in_force(settings))
        current = live.current
        log.info("current workflow: %s (sha256 %s)", live.origin, live.sha256[:12])
    new = load_workflow(args.rules) if args.rules else current
    since = _parse_time(args.from_)
    until = _parse_time(args.until) if args.until else None
    msgs = asyncio.run(read_inbound(settings, since, until, args.limit))
    now = datetime.now(UTC)
    ex_old = Explainer.from_settings(settings, current)
    classified = ex_old.classifier.classify_batch(msgs, now=now) if msgs else []
    same_inputs = (current.stores, current.tag_rules, current.priority) == (
        new.stores,
        new.tag_rules,
        new.priority,
    )
    reclassify = None
    if not same_inputs:
        ex_new = Explainer.from_settings(settings, new)

        def reclassify(ms: Sequence[ClassifiedMessage]) -> list[ClassifiedMessage]:
            return ex_new.classifier.classify_batch([m.inbound for m in ms], now=now)

    kb = ex_old.kb
    search = None
    if kb is not None:

        def search(m: ClassifiedMessage) -> Any:
            return kb.search(m.inbound.text, m.inbound.language, [i.label for i in m.intents])

    report = compare_routing(
        classified,
        current,
        new,
        now=now,
        kb_search=search,
        reclassify=reclassify,
        examples=args.examples,
    )
    if args.json:
        _out(report.model_dump_json())
    else:
        _out(format_replay(report))
    return 0
