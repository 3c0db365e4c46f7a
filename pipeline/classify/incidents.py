"""Mass-incident detection: many DIFFERENT customers reporting the same problem at once.

Messages fall into buckets (``bucket_keys``): intent category + store code when the
classifier found a store ("QUALITY|store:S12"), otherwise category + intent label, where
reports must also look alike (MinHash similarity ≥ ``min_similarity``) — a busy intent is
not an incident by volume alone. One ``IncidentWindow`` per bucket lives in a Faust table
keyed by the bucket key; ``observe`` is the pure update.

When ``threshold`` distinct customers report within ``window_s`` an incident opens; its id
is derived from the earliest report's message id (a replay derives the same id). Later
reports join it (the worker answers "known issue") until its case is resolved: the case
keeper sends ``IncidentResolved`` to the bucket's detector, and ``resolve`` closes the
window (``close_incident``), so later reports are routed on their own and count toward a new
incident. The closed incident's window is kept beside the new one for replays.

Across workers: ``signal_for`` names the one bucket a message is decided in; classify sends
the ``IncidentSignal`` keyed by that bucket, so one detector owns each bucket whatever the
number of workers, and ``decide`` (its whole step) sets the message's incident fields. A
message naming two stores also counts in the second store's window (``signals_for``: a
count-only signal, which neither opens nor links, and is not forwarded).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from pipeline.classify.dedup import estimate_similarity, normalize_text, shingles, signature
from pipeline.domain.workflow import IncidentPolicy
from pipeline.events import ClassifiedMessage, IncidentResolved, IncidentSignal, derive_id

__all__ = [
    "IncidentClosure",
    "IncidentConfig",
    "IncidentDecision",
    "IncidentMember",
    "IncidentReport",
    "IncidentWindow",
    "bucket_keys",
    "close_incident",
    "decide",
    "is_idle",
    "observe",
    "resolve",
    "signal_for",
    "signals_for",
]


class IncidentConfig(BaseModel):
    """Tunables of incident detection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: int = Field(default=5, ge=2, description="Distinct customers that make an incident.")
    window_s: float = Field(default=30 * 60, gt=0, description="Reports older than this expire.")
    min_similarity: float = Field(
        default=0.3, ge=0, le=1, description="Text similarity needed in buckets without a store."
    )
    max_reports: int = Field(default=500, ge=1, description="Cap on reports kept per bucket.")
    max_members: int = Field(default=10_000, ge=1, description="Cap on linked messages.")


class IncidentReport(BaseModel):
    """One report in a bucket's window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str
    customer_id: str
    case_id: str | None = None
    at: float = Field(description="Epoch seconds.")
    sig: list[int] = Field(default_factory=list, description="MinHash of the text (16-bit).")
    n: int = 0


class IncidentMember(BaseModel):
    """A message linked to an open incident."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str
    customer_id: str
    case_id: str | None = None
    at_opening: bool = Field(
        default=False, description="Linked when the incident opened (reported before it)."
    )


class IncidentWindow(BaseModel):
    """State of one bucket: recent reports and the open incident, if any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    similarity_required: bool = True
    reports: list[IncidentReport] = Field(default_factory=list)
    incident_id: str | None = None
    opened_at: float | None = None
    opened_by: str | None = Field(
        default=None, description="The message whose report reached the threshold."
    )
    members: list[IncidentMember] = Field(default_factory=list)
    members_dropped: int = Field(default=0, description="Linked messages over the cap.")
    exemplars: list[IncidentReport] = Field(
        default_factory=list, description="First reports of the open incident (to compare)."
    )
    previous: IncidentWindow | None = Field(
        default=None,
        description="The window as it was when its last incident closed: a replay of one of "
        "its messages is decided as the first pass was.",
    )


class IncidentDecision(BaseModel):
    """What ``observe`` decided for one message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    incident_id: str | None = Field(default=None, description="Incident the message belongs to.")
    is_new: bool = Field(default=False, description="This message opened the incident.")
    threshold_reached: bool = False
    customers: int = Field(default=0, description="Distinct similar reporters in the window.")
    linked_message_ids: list[str] = Field(
        default_factory=list, description="Messages linked to the incident by this decision."
    )


class IncidentClosure(BaseModel):
    """Everyone to notify when an incident closes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    incident_id: str
    notify: list[IncidentMember] = Field(description="One entry per customer (first message).")
    message_ids: list[str] = Field(description="Every linked message.")
    dropped: int = Field(default=0, description="Linked messages not kept (over the cap).")


_EXEMPLARS = 20


def bucket_keys(msg: ClassifiedMessage) -> list[tuple[str, bool]]:
    """(bucket key, similarity required) for each known intent of the message."""
    stores = sorted({e.value for e in msg.entities if e.kind == "store" and e.value})
    keys: list[tuple[str, bool]] = []
    for it in msg.intents:
        if it.label == "unknown":
            continue
        if stores:
            keys.extend((f"{it.category}|store:{s}", False) for s in stores)
        else:
            keys.append((f"{it.category}|{it.label}", True))
    return list(dict.fromkeys(keys))


def _similar(a: IncidentReport, b: IncidentReport) -> float:
    return estimate_similarity(a.sig, a.n, b.sig, b.n)


def observe(
    window: IncidentWindow | None,
    key: str,
    msg: ClassifiedMessage,
    now: datetime,
    config: IncidentConfig | None = None,
    *,
    similarity_required: bool = True,
    case_id: str | None = None,
    count_only: bool = False,
) -> tuple[IncidentWindow, IncidentDecision]:
    """Add one message to its bucket; return the new state and the decision. ``count_only``:
    a report decided in another bucket (a message naming two stores) adds to the customers
    that open an incident here, but neither opens nor joins one (the decision is "none")."""
    cfg = config or IncidentConfig()
    t = now.timestamp()
    w = window or IncidentWindow(key=key, similarity_required=similarity_required)
    cutoff = t - cfg.window_s
    reports = [r for r in w.reports if r.at >= cutoff]

    seen = {r.message_id for r in reports} | {m.message_id for m in w.members}
    if msg.message_id in seen:  # replay: the answer of the first pass, no change
        return w, _replayed(w, key, msg.message_id, reports)
    before = w.previous
    if before is not None and msg.message_id in _seen(before):
        # A replay of a message decided before the incident closed (all of them sit before
        # the resolution on the bucket's partition): what it was decided then.
        return w, _replayed(before, key, msg.message_id, before.reports)

    new = _report(w, msg, t, case_id)
    if count_only:
        return w.model_copy(update={"reports": [*reports, new][-cfg.max_reports :]}), (
            IncidentDecision(key=key)
        )
    if w.similarity_required:
        alike = [r for r in reports if _similar(new, r) >= cfg.min_similarity]
    else:
        alike = list(reports)
    alike.append(new)
    reports = [*reports, new][-cfg.max_reports :]
    customers = len({r.customer_id for r in alike})
    if w.incident_id is not None:
        return _join(w, key, new, alike, reports, cfg, customers)
    if customers < cfg.threshold:
        return w.model_copy(update={"reports": reports}), IncidentDecision(
            key=key, customers=customers
        )
    return _open(w, key, new, alike, reports, cfg, customers)


def _report(
    w: IncidentWindow, msg: ClassifiedMessage, t: float, case_id: str | None
) -> IncidentReport:
    sh = shingles(normalize_text(msg.inbound.text))
    return IncidentReport(
        message_id=msg.message_id,
        customer_id=msg.customer_id,
        case_id=case_id,
        at=t,
        sig=signature(sh) if w.similarity_required else [],
        n=len(sh),
    )


def _seen(w: IncidentWindow) -> set[str]:
    return {r.message_id for r in w.reports} | {m.message_id for m in w.members}


def _replayed(
    w: IncidentWindow, key: str, message_id: str, reports: list[IncidentReport]
) -> IncidentDecision:
    """A message seen before gets the decision its first pass got (invariant 3).

    The opener opens again (its first pass may not have reached route: the broadcast has the
    same ids); a report from before the incident stays outside it, as it was routed.
    """
    opener = w.incident_id is not None and w.opened_by == message_id
    member = next((m for m in w.members if m.message_id == message_id), None)
    joined = opener or (member is not None and not member.at_opening)
    return IncidentDecision(
        key=key,
        incident_id=w.incident_id if joined else None,
        is_new=opener,
        threshold_reached=w.incident_id is not None,
        customers=len({r.customer_id for r in reports}),
    )


def _join(
    w: IncidentWindow,
    key: str,
    new: IncidentReport,
    alike: list[IncidentReport],
    reports: list[IncidentReport],
    cfg: IncidentConfig,
    customers: int,
) -> tuple[IncidentWindow, IncidentDecision]:
    """A report in the bucket of an open incident: linked when it is about the same problem."""
    if w.similarity_required and not any(
        _similar(new, r) >= cfg.min_similarity for r in [*alike[:-1], *w.exemplars]
    ):
        # Same bucket, different problem: not linked.
        return w.model_copy(update={"reports": reports}), IncidentDecision(
            key=key, customers=customers
        )
    member = IncidentMember(
        message_id=new.message_id, customer_id=new.customer_id, case_id=new.case_id
    )
    members, dropped = _add_members(w, [member], cfg)
    return w.model_copy(
        update={"reports": reports, "members": members, "members_dropped": dropped}
    ), IncidentDecision(
        key=key,
        incident_id=w.incident_id,
        threshold_reached=True,
        customers=customers,
        linked_message_ids=[new.message_id],
    )


def _open(
    w: IncidentWindow,
    key: str,
    new: IncidentReport,
    alike: list[IncidentReport],
    reports: list[IncidentReport],
    cfg: IncidentConfig,
    customers: int,
) -> tuple[IncidentWindow, IncidentDecision]:
    """The threshold is reached: open the incident, linking every alike report."""
    first = min(alike, key=lambda r: (r.at, r.message_id))
    incident_id = derive_id("inc", first.message_id)
    linked = sorted(alike, key=lambda r: (r.at, r.message_id))
    members, dropped = _add_members(
        w,
        [
            IncidentMember(
                message_id=r.message_id,
                customer_id=r.customer_id,
                case_id=r.case_id,
                at_opening=True,
            )
            for r in linked
        ],
        cfg,
    )
    return w.model_copy(
        update={
            "reports": reports,
            "incident_id": incident_id,
            "opened_at": new.at,
            "opened_by": new.message_id,
            "members": members,
            "members_dropped": dropped,
            "exemplars": linked[:_EXEMPLARS],
        }
    ), IncidentDecision(
        key=key,
        incident_id=incident_id,
        is_new=True,
        threshold_reached=True,
        customers=customers,
        linked_message_ids=[r.message_id for r in linked],
    )


def _add_members(
    w: IncidentWindow, new: list[IncidentMember], cfg: IncidentConfig
) -> tuple[list[IncidentMember], int]:
    members = [*w.members, *new]
    extra = max(0, len(members) - cfg.max_members)
    # Keep the first ones: the first reporter of each customer is the one notified.
    return members[: cfg.max_members], w.members_dropped + extra


def close_incident(window: IncidentWindow) -> tuple[IncidentWindow, IncidentClosure | None]:
    """Close the bucket's incident (its parent was resolved): whom to notify, new state.

    The window starts empty: reports after the resolution count toward a new incident. The
    closed window is kept as ``previous`` (without its own previous) for replays.
    """
    if window.incident_id is None:
        return window, None
    notify: dict[str, IncidentMember] = {}
    for m in window.members:
        notify.setdefault(m.customer_id, m)
    closure = IncidentClosure(
        incident_id=window.incident_id,
        notify=list(notify.values()),
        message_ids=[m.message_id for m in window.members],
        dropped=window.members_dropped,
    )
    closed = window.model_copy(
        update={
            "reports": [],
            "incident_id": None,
            "opened_at": None,
            "opened_by": None,
            "members": [],
            "members_dropped": 0,
            "exemplars": [],
            "previous": window.model_copy(update={"previous": None}),
        }
    )
    return closed, closure


def resolve(window: IncidentWindow | None, resolved: IncidentResolved) -> IncidentWindow | None:
    """The detector's step for an incident whose case was resolved: the bucket's window with
    that incident closed. Nothing changes when the bucket holds no incident or another one
    (a replayed or late resolution of an incident closed before)."""
    if window is None or window.incident_id != resolved.incident_id:
        return window
    return close_incident(window)[0]


def is_idle(window: IncidentWindow, now: datetime, config: IncidentConfig | None = None) -> bool:
    """No open incident and no live report, also in the window of the incident closed last
    (kept for replays of its reports): the worker may delete the table key."""
    cfg = config or IncidentConfig()
    cutoff = now.timestamp() - cfg.window_s
    before = window.previous.reports if window.previous is not None else []
    return window.incident_id is None and all(r.at < cutoff for r in [*window.reports, *before])


def signal_for(msg: ClassifiedMessage, policies: Sequence[IncidentPolicy]) -> IncidentSignal | None:
    """The message on its way to its bucket's detector, or None (no incident policy covers it).

    One bucket per message: the first of ``bucket_keys`` whose category has a policy, so one
    detector decides it (a message naming two stores is decided in the first one's bucket,
    and only counted in the other's: ``signals_for``). A policy that buckets by store takes
    only messages that name a store; a policy by category alone buckets the others by their
    intent and text similarity.
    """
    signals = signals_for(msg, policies)
    return signals[0] if signals else None


def signals_for(msg: ClassifiedMessage, policies: Sequence[IncidentPolicy]) -> list[IncidentSignal]:
    """Every bucket a policy covers, the deciding one first (``signal_for``); the others are
    count-only: a message naming two stores counts toward both stores' incidents."""
    signals: list[IncidentSignal] = []
    for key, similarity_required in bucket_keys(msg):
        category = key.split("|", 1)[0]
        policy = next((p for p in policies if category in p.categories), None)
        if policy is None:
            continue
        if similarity_required and "store" in policy.bucket_by:
            # The policy counts reports per store: a message naming none is not one (a
            # misread clause such as "I bought a product" must not open a store incident).
            continue
        signals.append(
            IncidentSignal(
                bucket=key,
                similarity_required=similarity_required,
                threshold=policy.threshold,
                window_s=policy.window_minutes * 60,
                message=msg,
                count_only=bool(signals),
            )
        )
    return signals


def decide(
    window: IncidentWindow | None, signal: IncidentSignal
) -> tuple[IncidentWindow | None, ClassifiedMessage]:
    """The detector's step: the bucket's new state and the message with its incident fields
    (a count-only signal's message unchanged: the caller does not forward it).

    A duplicate passes through untouched (it joins its case, not the window); it travels the
    same way as its original only to stay behind it on the bucket's partition.
    """
    msg = signal.message
    if msg.similarity.duplicate_of is not None:
        return window, msg
    cfg = IncidentConfig(threshold=signal.threshold, window_s=signal.window_s)
    window, d = observe(
        window,
        signal.bucket,
        msg,
        msg.inbound.received_at,
        cfg,
        similarity_required=signal.similarity_required,
        case_id=msg.similarity.case_id,
        count_only=signal.count_only,
    )
    if signal.count_only:  # decided in its first bucket; not forwarded from here
        return window, msg
    bucket = signal.bucket if d.incident_id else None
    sim = msg.similarity.model_copy(
        update={"incident_id": d.incident_id, "incident_new": d.is_new, "incident_bucket": bucket}
    )
    return window, msg.model_copy(update={"similarity": sim})
