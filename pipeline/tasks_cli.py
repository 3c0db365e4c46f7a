"""``pipeline tasks``: the department side of the event API, for a department without its own
system. A client of the topics like any department system, not a stage: it reads the
department's task topic (SubRequest and TaskNotice records) and ``task-updates``, and answers
with TaskUpdate records on ``task-updates``, keyed by case id, plain JSON without headers —
byte for byte what a department system written in any language would send.

    pipeline tasks list  --department D [--all] [--json]     open sub-requests, oldest first
    pipeline tasks watch --department D [--json]             the list, then every change live
    pipeline tasks show ID [--json]                          one sub-request with its history
    pipeline tasks ack ID [--author NAME]                    acknowledged
    pipeline tasks resolve ID --text "answer for the customer"
    pipeline tasks reject ID --reason "why this department cannot do it"

``ID`` is a sub-request id or a unique prefix of one (at least 6 characters).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline import bus
from pipeline.codec import decode, decode_task_record
from pipeline.config import Settings, get_settings
from pipeline.errors import DecodeError, InvalidInput
from pipeline.events import (
    SubRequest,
    TaskNotice,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.topics import task_topic

__all__ = [
    "OPEN",
    "Board",
    "TaskView",
    "answer",
    "format_list",
    "format_show",
    "read_board",
    "register",
    "watch",
]

#: Statuses of a sub-request that still needs the department.
OPEN = frozenset({"open", "acknowledged", "in_progress"})
MIN_PREFIX = 6


@dataclass
class TaskView:
    """One sub-request as its department sees it: the request, the answers, the notices."""

    sub: SubRequest
    updates: list[TaskUpdate] = field(default_factory=list)
    notices: list[TaskNotice] = field(default_factory=list)

    @property
    def status(self) -> str:
        """open, a TaskUpdate status (the newest answer wins), or closed by a notice."""
        if any(n.type == "closed" for n in self.notices):
            return "closed"
        if not self.updates:
            return "open"
        return max(self.updates, key=lambda u: u.at).status.value

    @property
    def is_open(self) -> bool:
        """Still waiting for this department."""
        return self.status in OPEN

    def to_json(self) -> dict[str, Any]:
        """The view as plain JSON."""
        return {
            "sub_request_id": self.sub.sub_request_id,
            "case_id": self.sub.case_id,
            "department": self.sub.department,
            "status": self.status,
            "priority": self.sub.priority.level,
            "created_at": self.sub.created_at.isoformat(),
            "sla_due_at": self.sub.sla_due_at.isoformat() if self.sub.sla_due_at else None,
            "language": self.sub.language,
            "text": self.sub.text,
            "full_text": self.sub.full_text,
            "updates": [u.model_dump(mode="json") for u in self.updates],
            "notices": [n.model_dump(mode="json") for n in self.notices],
        }


@dataclass
class Board:
    """Every sub-request of some task topics, built from their records in any order."""

    tasks: dict[str, TaskView] = field(default_factory=dict)
    _early_updates: dict[str, list[TaskUpdate]] = field(default_factory=dict)
    _early_notices: dict[str, list[TaskNotice]] = field(default_factory=dict)

    def take(self, topic: str, value: bytes | None, task_topics: set[str]) -> str | None:
        """Apply one record; returns the id of the sub-request it changed, if any."""
        if value is None:
            return None
        try:
            if topic in task_topics:
                return self._take_task_record(value)
            update = decode(TaskUpdate, value)
        except DecodeError:
            return None  # not ours to judge: the router dead-letters what it cannot read
        view = self.tasks.get(update.sub_request_id)
        if view is None:
            self._early_updates.setdefault(update.sub_request_id, []).append(update)
            return None
        if all(u.update_id != update.update_id for u in view.updates):
            view.updates.append(update)
        return update.sub_request_id

    def _take_task_record(self, value: bytes) -> str | None:
        sub = decode_task_record(value)
        if isinstance(sub, TaskNotice):
            view = self.tasks.get(sub.sub_request_id)
            if view is None:
                self._early_notices.setdefault(sub.sub_request_id, []).append(sub)
                return None
            view.notices.append(sub)
            return sub.sub_request_id
        if sub.sub_request_id not in self.tasks:
            self.tasks[sub.sub_request_id] = TaskView(
                sub,
                updates=self._early_updates.pop(sub.sub_request_id, []),
                notices=self._early_notices.pop(sub.sub_request_id, []),
            )
        return sub.sub_request_id

    def open_tasks(self, department: str | None = None) -> list[TaskView]:
        """Open sub-requests, oldest first."""
        return sorted(
            (
                v
                for v in self.tasks.values()
                if v.is_open and (department is None or v.sub.department == department)
            ),
            key=lambda v: (v.sub.created_at, v.sub.sub_request_id),
        )

    def find(self, ident: str) -> TaskView:
        """The sub-request with this id, or the only one whose id starts with it."""
        if ident in self.tasks:
            return self.tasks[ident]
        if len(ident) < MIN_PREFIX:
            raise InvalidInput(f"no sub-request {ident!r} (give at least {MIN_PREFIX} characters)")
        found = [v for k, v in self.tasks.items() if k.startswith(ident)]
        if not found:
            raise InvalidInput(f"no sub-request {ident!r} on these task topics")
        if len(found) > 1:
            raise InvalidInput(f"{ident!r} matches {len(found)} sub-requests: give more of it")
        return found[0]


def _task_topics(settings: Settings, department: str | None) -> list[str]:
    if department is not None:
        return [task_topic(settings, department)]
    from pipeline.runtime import departments

    return [task_topic(settings, d) for d in departments(settings)]


async def read_board(settings: Settings, department: str | None = None) -> Board:
    """Everything on the task topics (one department's, or every one) and task-updates."""
    topics = _task_topics(settings, department)
    board = Board()
    records = await bus.read_all(settings, [*topics, settings.topic("task-updates")])
    for r in records:
        board.take(r.topic, r.value, set(topics))
    return board


def answer(
    view: TaskView,
    status: TaskStatus,
    *,
    text: str | None,
    author: str,
    at: datetime | None = None,
) -> TaskUpdate:
    """The TaskUpdate a department sends about one of its sub-requests.

    The id derives from what is said, so sending the same answer twice is one answer (the
    case keeper drops the repeat).
    """
    if not view.is_open:
        raise InvalidInput(f"sub-request {view.sub.sub_request_id} is already {view.status}")
    said = text.strip() if text and text.strip() else None
    if status in (TaskStatus.resolved, TaskStatus.rejected) and said is None:
        raise InvalidInput(f"{status.value} needs the text for the customer (or the reason)")
    return TaskUpdate(
        update_id=derive_id("upd", "tasks", view.sub.sub_request_id, status.value, said or ""),
        sub_request_id=view.sub.sub_request_id,
        case_id=view.sub.case_id,
        status=status,
        resolution=said,
        author=author,
        source="department",
        at=at or utcnow(),
    )


# ---------------------------------------------------------------- formatting


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    minutes = int((at - now).total_seconds() // 60)
    span = f"{abs(minutes) // 60}h{abs(minutes) % 60:02d}m"
    return f"{at:%Y-%m-%d %H:%M} ({'in ' + span if minutes >= 0 else span + ' OVERDUE'})"


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_list(department: str, views: Sequence[TaskView], now: datetime) -> list[str]:
    """The open sub-requests of a department as a table, oldest first."""
    lines = [f"{department}: {len(views)} open sub-request(s), oldest first (times UTC)"]
    for v in views:
        notes = f" +{len(v.notices)} notice(s)" if v.notices else ""
        lines.append(
            f"  {v.sub.sub_request_id}  {v.status:12} {v.sub.priority.level}  "
            f"created {v.sub.created_at:%Y-%m-%d %H:%M}  due {_when(v.sub.sla_due_at, now)}{notes}"
        )
        lines.append(f"      {_one_line(v.sub.text, 96)}")
    return lines


def format_show(view: TaskView, now: datetime) -> list[str]:
    """One sub-request in full, with its answers and notices."""
    s = view.sub
    lines = [
        f"sub-request {s.sub_request_id}  ({s.kind.value}, {s.department})",
        f"  case        {s.case_id}",
        f"  status      {view.status}",
        f"  priority    {s.priority.level} ({s.priority.score:.0f})",
        f"  intent      {s.intent} / {s.category}",
        f"  created     {s.created_at:%Y-%m-%d %H:%M} UTC",
        f"  SLA due     {_when(s.sla_due_at, now)}",
        f"  language    {s.language}",
    ]
    if s.customer is not None:
        lines.append(f"  customer    {s.customer.name or s.customer_id} ({s.customer.tier})")
    if s.customer_summary:
        lines.append(f"  history     {s.customer_summary}")
    for e in s.entities:
        lines.append(f"  {e.kind:11} {e.value}")
    lines += ["  request:", f"    {s.text}", "  whole message:", f"    {s.full_text}"]
    for n in view.notices:
        lines.append(f"  notice {n.at:%Y-%m-%d %H:%M} {n.type}: {_one_line(n.text, 80)}")
    for u in sorted(view.updates, key=lambda u: u.at):
        said = f": {_one_line(u.resolution, 80)}" if u.resolution else ""
        lines.append(f"  update {u.at:%Y-%m-%d %H:%M} {u.status.value} by {u.author}{said}")
    return lines


# ---------------------------------------------------------------- watch


async def watch(
    settings: Settings, department: str, emit: Callable[[str], None], *, as_json: bool
) -> None:
    """Print the open list once the topics are read, then every change as it happens."""
    topic = task_topic(settings, department)
    updates = settings.topic("task-updates")
    board = Board()
    loop = asyncio.get_running_loop()
    listed = False
    async with bus.reader(settings, topic, updates) as consumer:
        last = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            changed: list[str] = []
            for tp, msgs in batch.items():
                for m in msgs:
                    sid = board.take(tp.topic, m.value, {topic})
                    if sid is not None and board.tasks[sid].sub.department == department:
                        changed.append(sid)
                    last = loop.time()
            if not listed:
                if loop.time() - last < 1.0:
                    continue
                listed = True
                _emit_list(emit, department, board.open_tasks(department), as_json)
                continue
            for sid in dict.fromkeys(changed):
                _emit_change(emit, board.tasks[sid], as_json)


def _emit_list(
    emit: Callable[[str], None], department: str, views: list[TaskView], as_json: bool
) -> None:
    if as_json:
        for v in views:
            emit(json.dumps({"event": "open", **v.to_json()}, ensure_ascii=False))
    else:
        for line in format_list(department, views, utcnow()):
            emit(line)


def _emit_change(emit: Callable[[str], None], view: TaskView, as_json: bool) -> None:
    if as_json:
        emit(json.dumps({"event": "changed", **view.to_json()}, ensure_ascii=False))
        return
    notice = max(view.notices, key=lambda n: n.at) if view.notices else None
    answered = max(view.updates, key=lambda u: u.at) if view.updates else None
    last = ""
    if notice is not None and (answered is None or notice.at >= answered.at):
        last = f" (notice: {notice.type})"
    emit(
        f"{utcnow():%H:%M:%S} {view.sub.sub_request_id} {view.status}{last} "
        f"{view.sub.priority.level} due {_when(view.sub.sla_due_at, utcnow())}  "
        f"{_one_line(view.sub.text, 60)}"
    )


# ---------------------------------------------------------------- commands


def register(sub: Any) -> None:
    """Add ``pipeline tasks``."""
    tasks = sub.add_parser(
        "tasks",
        help="a department's sub-requests: list, watch, show, ack, resolve, reject",
        description="Work a department's sub-requests from the command line, as a department "
        "system would: read its task topic, answer with TaskUpdates on task-updates.",
    )
    tasks_sub = tasks.add_subparsers(dest="tasks_command", metavar="ACTION")
    tasks.set_defaults(handler=lambda args: _help(tasks))

    for name, helptext in (
        ("list", "open sub-requests of a department, oldest first, with SLA due times"),
        ("watch", "the open list, then every new sub-request, answer and notice as it comes"),
    ):
        p = tasks_sub.add_parser(name, help=helptext)
        p.add_argument("--department", required=True, help="pipeline rules current --departments")
        p.add_argument("--json", action="store_true", help="JSON (watch: one object per line)")
        if name == "list":
            p.add_argument("--all", action="store_true", help="closed ones too")
        p.set_defaults(handler=_list if name == "list" else _watch)

    p = tasks_sub.add_parser("show", help="one sub-request with its answers and notices")
    p.add_argument("id", help="sub-request id (or a unique prefix)")
    p.add_argument("--department", help="look only on this department's topic")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=_show)

    for name, status, extra in (
        ("ack", TaskStatus.acknowledged, None),
        ("resolve", TaskStatus.resolved, "--text"),
        ("reject", TaskStatus.rejected, "--reason"),
    ):
        p = tasks_sub.add_parser(name, help=f"send a TaskUpdate: {status.value}")
        p.add_argument("id", help="sub-request id (or a unique prefix)")
        p.add_argument("--department", help="look only on this department's topic")
        p.add_argument("--author", help="who answers (default: user@department)")
        p.add_argument("--json", action="store_true", help="print the TaskUpdate sent as JSON")
        if extra == "--text":
            p.add_argument("--text", required=True, help="the answer for the customer")
        elif extra == "--reason":
            p.add_argument("--reason", required=True, help="why the department cannot do it")
        p.set_defaults(handler=_answer, status=status)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _list(args: argparse.Namespace) -> int:
    settings = get_settings()
    board = asyncio.run(read_board(settings, args.department))
    views = (
        sorted(board.tasks.values(), key=lambda v: v.sub.created_at)
        if args.all
        else board.open_tasks(args.department)
    )
    if args.json:
        doc = {"department": args.department, "tasks": [v.to_json() for v in views]}
        _out(json.dumps(doc, ensure_ascii=False))
    else:
        for line in format_list(args.department, views, utcnow()):
            _out(line)
    return 0


def _watch(args: argparse.Namespace) -> int:
    asyncio.run(watch(get_settings(), args.department, _out, as_json=args.json))
    return 0


def _show(args: argparse.Namespace) -> int:
    board = asyncio.run(read_board(get_settings(), args.department))
    view = board.find(args.id)
    if args.json:
        _out(json.dumps(view.to_json(), ensure_ascii=False))
    else:
        for line in format_show(view, utcnow()):
            _out(line)
    return 0


def _answer(args: argparse.Namespace) -> int:
    settings = get_settings()
    board = asyncio.run(read_board(settings, args.department))
    view = board.find(args.id)
    status: TaskStatus = args.status
    text = getattr(args, "text", None) or getattr(args, "reason", None)
    author = args.author or f"{_user()}@{view.sub.department}"
    update = answer(view, status, text=text, author=author)
    asyncio.run(send_updates(settings, [update]))
    if args.json:
        _out(update.model_dump_json())
    else:
        _out(f"{status.value}: {view.sub.sub_request_id} (case {view.sub.case_id})")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or $USER
        return "pipeline-tasks"


async def send_updates(settings: Settings, updates: Iterable[TaskUpdate]) -> int:
    """Publish TaskUpdates on task-updates, keyed by case id (acks=all)."""
    return await bus.publish(
        settings, settings.topic("task-updates"), [(u.case_id, u) for u in updates]
    )
