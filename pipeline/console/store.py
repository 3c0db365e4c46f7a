"""The console's read model: the router's topics projected into SQLite.

A rebuildable projection, never the source of truth: ``Store.apply`` takes one record of a
followed topic and upserts what the pages need; applying the same record twice, or records
of different topics in any order, ends in the same rows (every write is an idempotent
upsert keyed by the event's own id; case rows keep the newest snapshot). Every replica has
its own database and rebuilds it from the topics when it starts.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from pipeline.codec import decode, decode_case_events, decode_task_record
from pipeline.errors import DecodeError
from pipeline.events import (
    CaseEvent,
    CaseSnapshot,
    ClassifiedMessage,
    DeliveryReceipt,
    Outcome,
    Reply,
    SubRequest,
    TaskNotice,
    TaskUpdate,
)

__all__ = ["CaseFilter", "Store"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY, customer_id TEXT, customer_name TEXT, status TEXT,
    channel TEXT, language TEXT, priority TEXT, score REAL, sla TEXT,
    opened_at TEXT, updated_at TEXT, resolved_at TEXT, full_text TEXT, search TEXT,
    state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subs (
    sub_request_id TEXT PRIMARY KEY, case_id TEXT, kind TEXT, department TEXT,
    recipient TEXT, intent TEXT, category TEXT, text TEXT, status TEXT, resolution TEXT,
    priority TEXT, score REAL, due_at TEXT, created_at TEXT, event TEXT);
CREATE INDEX IF NOT EXISTS subs_case ON subs(case_id);
CREATE INDEX IF NOT EXISTS subs_dept ON subs(department, status);
CREATE TABLE IF NOT EXISTS notices (
    notice_id TEXT PRIMARY KEY, case_id TEXT, sub_request_id TEXT, type TEXT, at TEXT,
    event TEXT);
CREATE INDEX IF NOT EXISTS notices_sub ON notices(sub_request_id);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY, customer_id TEXT, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS updates (
    update_id TEXT PRIMARY KEY, case_id TEXT, sub_request_id TEXT, at TEXT, event TEXT);
CREATE INDEX IF NOT EXISTS updates_sub ON updates(sub_request_id);
CREATE TABLE IF NOT EXISTS replies (
    reply_id TEXT PRIMARY KEY, case_id TEXT, created_at TEXT, event TEXT);
CREATE INDEX IF NOT EXISTS replies_case ON replies(case_id);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT, status TEXT, at TEXT, event TEXT, PRIMARY KEY (delivery_id, status, at));
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, case_id TEXT, type TEXT, at TEXT, event TEXT);
CREATE INDEX IF NOT EXISTS events_case ON events(case_id);
CREATE INDEX IF NOT EXISTS events_type ON events(type);
CREATE TABLE IF NOT EXISTS quality (event_id TEXT PRIMARY KEY, case_id TEXT, at TEXT, event TEXT);
CREATE TABLE IF NOT EXISTS outcomes (message_id TEXT PRIMARY KEY, case_id TEXT, event TEXT);
"""

_OPEN = ("open", "acknowledged", "in_progress")


def fold(text: str) -> str:
    """Case-folded text for search (SQLite's lower() knows only ASCII)."""
    return text.casefold()


def _json(event: BaseModel) -> str:
    return event.model_dump_json()


@dataclass(frozen=True)
class CaseFilter:
    """Filters of the case list; empty strings mean 'any'."""

    status: str = ""
    department: str = ""
    priority: str = ""
    channel: str = ""
    sla: str = ""
    language: str = ""
    q: str = ""


class Store:
    """The SQLite read model (one connection, used from the console's event loop)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.version = 0  # bumps on every applied record (pages poll it for live updates)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # ------------------------------------------------------------ projection

    def apply(self, topic: str, value: bytes | None) -> bool:
        """Project one record of logical ``topic`` (without prefix; ``tasks.*`` for any
        department). Returns False for a record it cannot decode (logged, skipped)."""
        if value is None:
            return True
        try:
            if topic in ("case-state", "case-status"):
                self._snapshot(decode(CaseSnapshot, value))
            elif topic.startswith("tasks."):
                self._task_record(value)
            elif topic == "external":
                self._sub_request(decode(SubRequest, value))
            elif topic == "classifications":
                cm = decode(ClassifiedMessage, value)
                self._put("messages", cm.message_id, cm.customer_id, _json(cm))
            elif topic == "task-updates":
                u = decode(TaskUpdate, value)
                self._put("updates", u.update_id, u.case_id, u.sub_request_id, u.at, _json(u))
            elif topic == "replies":
                r = decode(Reply, value)
                self._put("replies", r.reply_id, r.case_id, r.created_at, _json(r))
            elif topic == "deliveries":
                d = decode(DeliveryReceipt, value)
                self._put("deliveries", d.delivery_id, d.status, d.at, _json(d))
            elif topic == "case-events":
                for e in decode_case_events(value):
                    self._put("events", e.event_id, e.case_id, e.type.value, e.at, _json(e))
            elif topic == "quality":
                q = decode(CaseEvent, value)
                self._put("quality", q.event_id, q.case_id, q.at, _json(q))
            elif topic == "outcomes":
                o = decode(Outcome, value)
                self._put("outcomes", o.message_id, o.case_id, _json(o))
            else:
                return True
        except DecodeError as exc:
            log.warning("console skips a bad %s record: %s", topic, exc)
            return False
        self.version += 1
        return True

    def _put(self, table: str, *values: Any) -> None:
        marks = ",".join("?" * len(values))
        self.db.execute(
            f"INSERT OR REPLACE INTO {table} VALUES ({marks})",
            [v.isoformat() if isinstance(v, datetime) else v for v in values],
        )

    def _snapshot(self, snap: CaseSnapshot) -> None:
        st = snap.state
        row = self.db.execute(
            "SELECT updated_at FROM cases WHERE case_id=?", (snap.case_id,)
        ).fetchone()
        updated = str(st.get("updated_at") or snap.at.isoformat())
        if row is not None and _time(row["updated_at"]) > _time(updated):
            return  # an older view of the case (route lags the keeper): keep the newer
        customer = st.get("customer") or {}
        subs: list[dict[str, Any]] = st.get("sub_requests") or []
        open_subs = [s for s in subs if s.get("blocking", True) and s.get("status") in _OPEN]
        sla = (
            "breached"
            if any(s.get("breached") for s in open_subs)
            else "at_risk"
            if any(s.get("warned") for s in open_subs)
            else ""
        )
        priority = st.get("priority") or {}
        name = customer.get("name") or ""
        self._put(
            "cases",
            snap.case_id,
            snap.customer_id,
            name,
            st.get("status"),
            st.get("channel"),
            st.get("language"),
            priority.get("level"),
            priority.get("score"),
            sla,
            st.get("opened_at"),
            updated,
            st.get("resolved_at"),
            st.get("full_text", ""),
            fold(" ".join([st.get("full_text", ""), name, snap.case_id, snap.customer_id])),
            orjson.dumps(st).decode(),
        )
        for s in subs:
            self.db.execute(
                """INSERT INTO subs (sub_request_id, case_id, kind, department, recipient,
                       intent, category, text, status, resolution, priority, due_at, created_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(sub_request_id) DO UPDATE SET status=excluded.status,
                       resolution=excluded.resolution, due_at=excluded.due_at""",
                (
                    s["sub_request_id"],
                    snap.case_id,
                    s.get("kind"),
                    s.get("department"),
                    s.get("recipient"),
                    s.get("intent"),
                    s.get("category"),
                    s.get("text"),
                    s.get("status"),
                    s.get("resolution"),
                    priority.get("level"),
                    s.get("due_at"),
                    s.get("created_at"),
                ),
            )

    def _task_record(self, value: bytes) -> None:
        r = decode_task_record(value)  # a task topic carries two kinds
        if isinstance(r, TaskNotice):
            self._put("notices", r.notice_id, r.case_id, r.sub_request_id, r.type, r.at, _json(r))
        else:
            self._sub_request(r)

    def _sub_request(self, sub: SubRequest) -> None:
        self.db.execute(
            """INSERT INTO subs VALUES (?,?,?,?,?,?,?,?,'open',NULL,?,?,?,?,?)
               ON CONFLICT(sub_request_id) DO UPDATE SET event=excluded.event,
                   score=excluded.score, priority=excluded.priority""",
            (
                sub.sub_request_id,
                sub.case_id,
                sub.kind.value,
                sub.department,
                sub.recipient,
                sub.intent,
                sub.category,
                sub.text,
                sub.priority.level,
                sub.priority.score,
                sub.sla_due_at.isoformat() if sub.sla_due_at else None,
                sub.created_at.isoformat(),
                _json(sub),
            ),
        )

    # ------------------------------------------------------------ queries

    def cases(
        self, f: CaseFilter, *, department: str | None = None, limit: int = 200
    ) -> list[sqlite3.Row]:
        """Cases matching the filters, newest first; ``department``: only cases with work
        for that department (an agent's view)."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("status", f.status),
            ("priority", f.priority),
            ("channel", f.channel),
            ("language", f.language),
            ("sla", f.sla),
        ):
            if value:
                where.append(f"{column}=?")
                args.append(value)
        for dept in (department, f.department):
            if dept:
                where.append(
                    "EXISTS (SELECT 1 FROM subs s WHERE s.case_id=c.case_id AND s.department=?)"
                )
                args.append(dept)
        if f.q:
            where.append("instr(search, ?) > 0")
            args.append(fold(f.q))
        sql = (
            "SELECT c.*, (SELECT group_concat(DISTINCT department) FROM subs s"
            " WHERE s.case_id=c.case_id) AS departments FROM cases c"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC LIMIT ?"
        return list(self.db.execute(sql, [*args, limit]))

    def case(self, case_id: str) -> sqlite3.Row | None:
        """One case row."""
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM cases WHERE case_id=?", (case_id,)
        ).fetchone()
        return row

    def case_subs(self, case_id: str) -> list[sqlite3.Row]:
        """A case's sub-requests, oldest first."""
        return list(
            self.db.execute("SELECT * FROM subs WHERE case_id=? ORDER BY created_at", (case_id,))
        )

    def sub(self, sub_request_id: str) -> sqlite3.Row | None:
        """One sub-request row."""
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM subs WHERE sub_request_id=?", (sub_request_id,)
        ).fetchone()
        return row

    def messages(self, ids: Sequence[str]) -> list[ClassifiedMessage]:
        """Classified messages by id, in the given order (unknown ids skipped)."""
        out = []
        for mid in ids:
            row = self.db.execute(
                "SELECT event FROM messages WHERE message_id=?", (mid,)
            ).fetchone()
            if row is not None:
                out.append(ClassifiedMessage.model_validate_json(row["event"]))
        return out

    def updates(self, sub_request_id: str) -> list[TaskUpdate]:
        """A sub-request's task updates, oldest first."""
        rows = self.db.execute(
            "SELECT event FROM updates WHERE sub_request_id=? ORDER BY at", (sub_request_id,)
        )
        return [TaskUpdate.model_validate_json(r["event"]) for r in rows]

    def ignored_updates(self, case_id: str) -> set[str]:
        """Ids of the case's task updates the case keeper recorded but did not apply (a
        second answer to a sub-request already closed)."""
        return {
            str(e.detail.get("update_id"))
            for e in self.timeline(case_id)
            if e.type.value == "task_updated" and e.detail.get("ignored")
        }

    def notices(self, sub_request_id: str) -> list[TaskNotice]:
        """What the holder of a sub-request was told (the customer wrote again, a reminder,
        closed), oldest first."""
        rows = self.db.execute(
            "SELECT event FROM notices WHERE sub_request_id=? ORDER BY at", (sub_request_id,)
        )
        return [TaskNotice.model_validate_json(r["event"]) for r in rows]

    def replies(self, case_id: str) -> list[Reply]:
        """Replies of a case, oldest first."""
        rows = self.db.execute(
            "SELECT event FROM replies WHERE case_id=? ORDER BY created_at", (case_id,)
        )
        return [Reply.model_validate_json(r["event"]) for r in rows]

    def deliveries(self, delivery_id: str) -> list[DeliveryReceipt]:
        """Delivery receipts of a reply or an e-mailed sub-request."""
        rows = self.db.execute(
            "SELECT event FROM deliveries WHERE delivery_id=? ORDER BY at", (delivery_id,)
        )
        return [DeliveryReceipt.model_validate_json(r["event"]) for r in rows]

    def timeline(self, case_id: str) -> list[CaseEvent]:
        """Every case event of a case, in time order."""
        rows = self.db.execute("SELECT event FROM events WHERE case_id=? ORDER BY at", (case_id,))
        return [CaseEvent.model_validate_json(r["event"]) for r in rows]

    def queue(self, department: str) -> list[sqlite3.Row]:
        """A department's open sub-requests: most urgent first, then oldest; with how many
        times the customer wrote again about each (``customer_messages``)."""
        return list(
            self.db.execute(
                f"""SELECT s.*, (SELECT count(*) FROM notices n
                        WHERE n.sub_request_id=s.sub_request_id AND n.type='customer_message')
                        AS customer_messages
                    FROM subs s WHERE department=? AND status IN
                    ({",".join("?" * len(_OPEN))}) AND kind='internal'
                    ORDER BY priority, created_at""",
                (department, *_OPEN),
            )
        )

    def quality(self, department: str | None = None) -> list[CaseEvent]:
        """Negative survey answers, newest first."""
        rows = self.db.execute("SELECT * FROM quality ORDER BY at DESC LIMIT 500")
        return [
            CaseEvent.model_validate_json(r["event"])
            for r in rows
            if department is None or self._case_has(r["case_id"], department)
        ]

    def sla_events(self, department: str | None = None) -> list[CaseEvent]:
        """SLA warnings and breaches, newest first."""
        rows = self.db.execute(
            "SELECT * FROM events WHERE type IN ('sla_warning','sla_breached') "
            "ORDER BY at DESC LIMIT 500"
        )
        events = [CaseEvent.model_validate_json(r["event"]) for r in rows]
        return [e for e in events if department is None or e.detail.get("department") == department]

    def _case_has(self, case_id: str, department: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM subs WHERE case_id=? AND department=?", (case_id, department)
        ).fetchone()
        return row is not None

    def case_visible(self, case_id: str, department: str | None) -> bool:
        """Whether a user limited to ``department`` (None: everything) may see the case."""
        return department is None or self._case_has(case_id, department)

    def departments(self) -> list[str]:
        """Departments that have had work."""
        rows = self.db.execute("SELECT DISTINCT department FROM subs ORDER BY department")
        return [r["department"] for r in rows if r["department"]]


def _time(value: str | None) -> datetime:
    if not value:
        return datetime.min
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
