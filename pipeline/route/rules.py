"""Rule evaluation: which rules of the workflow match one intent of a message, and why.

Pure functions. Semantics (see ``pipeline.domain.workflow``): rules are evaluated per intent
in file order; a rule matches when all its conditions hold; a matching rule with
``stop: true`` ends the evaluation for that intent. Every evaluated rule yields a
``RuleTrace`` with one human-readable ``why`` per condition, for ``rules explain``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from pipeline.domain.workflow import (
    WEEKDAYS,
    Action,
    Conditions,
    Rule,
    Workflow,
    _parse_span,
)
from pipeline.events import ClassifiedMessage, Intent

__all__ = [
    "ConditionResult",
    "RuleTrace",
    "check_conditions",
    "conditions_hold",
    "describe_action",
    "match_rules",
]


class ConditionResult(BaseModel):
    """One condition of a rule and whether it held."""

    model_config = ConfigDict(frozen=True)

    condition: str = Field(description="Condition name, e.g. 'category'.")
    ok: bool
    why: str = Field(description="Human-readable reason.")


class RuleTrace(BaseModel):
    """One rule evaluated for one intent."""

    model_config = ConfigDict(frozen=True)

    rule: str
    index: int = Field(description="Position in the file (0-based).")
    intent: str
    category: str
    matched: bool
    stop: bool = Field(description="Whether this match ended the evaluation for the intent.")
    conditions: list[ConditionResult] = Field(default_factory=list)
    actions: list[str] = Field(
        default_factory=list, description="Actions of a matched rule, described."
    )


#: One condition: its name, whether it held, and the reason (built only for a trace).
Check = tuple[str, bool, Callable[[], str]]


def _said(why: str) -> Callable[[], str]:
    return lambda: why


def _folded_in(have: str, want: list[str]) -> bool:
    """``have`` is one of ``want``, case-insensitively."""
    folded = have.lower()
    # a loop, not ``in {w.lower() for w in want}``: the lists are short, building the set
    # cost more than the comparisons
    for w in want:  # noqa: SIM110
        if w.lower() == folded:
            return True
    return False


def _any_of(name: str, have: str | None, want: list[str], *, fold: bool = True) -> Check:
    ok = have is not None and (_folded_in(have, want) if fold else have in want)
    return name, ok, lambda: f"{name} {have!r} {'in' if ok else 'not in'} {want}"


def _checks(
    cond: Conditions, msg: ClassifiedMessage, intent: Intent, now: datetime
) -> Iterator[Check]:
    """Every set condition, in order; lazily, so a rule's first failure can end its check."""
    inbound = msg.inbound
    profile = inbound.profile
    if cond.intent is not None:
        yield _any_of("intent", intent.label, cond.intent)
    if cond.category is not None:
        yield _any_of("category", intent.category, cond.category)
    # a rule's conditions are mostly intent/category: the tags are folded only for one on tags
    if cond.tags_any is None and cond.tags_all is None and cond.tags_none is None:
        tags: set[str] = set()
    else:
        tags = {t.lower() for t in msg.tags}
    if cond.tags_any is not None:
        hit = sorted(tags & {t.lower() for t in cond.tags_any})
        want_any = cond.tags_any
        yield (
            "tags_any",
            bool(hit),
            lambda: f"tags {hit} present" if hit else f"none of {want_any} in tags",
        )
    if cond.tags_all is not None:
        missing = sorted({t.lower() for t in cond.tags_all} - tags)
        want_all = cond.tags_all
        yield (
            "tags_all",
            not missing,
            lambda: f"all of {want_all} present" if not missing else f"missing tags {missing}",
        )
    if cond.tags_none is not None:
        bad = sorted(tags & {t.lower() for t in cond.tags_none})
        want_none = cond.tags_none
        yield (
            "tags_none",
            not bad,
            lambda: f"forbidden tags {bad} present" if bad else f"none of {want_none}",
        )
    for ec in cond.entities:
        found = [e for e in msg.entities if e.kind == ec.kind]
        if ec.values is not None:
            wanted = {v.lower() for v in ec.values}
            found = [e for e in found if e.value.lower() in wanted]
        values = [e.value for e in found]
        what = f"entity {ec.kind}" + (f" in {ec.values}" if ec.values is not None else "")
        why = f"{what} found: {values}" if found else f"no {what}"
        yield f"entity:{ec.kind}", bool(found) == ec.present, _said(why)
    if cond.priority is not None:
        yield _any_of("priority", msg.priority.level, list(cond.priority), fold=False)
    if cond.min_score is not None:
        score, least = msg.priority.score, cond.min_score
        ok = score >= least
        yield "min_score", ok, lambda: f"score {score:g} {'>=' if ok else '<'} {least:g}"
    if cond.channel is not None:
        yield _any_of("channel", inbound.channel.value, [c.value for c in cond.channel])
    if cond.language is not None:
        yield _any_of("language", inbound.language, cond.language)
    if cond.segment is not None:
        yield _any_of("segment", profile.segment if profile else None, cond.segment)
    if cond.tier is not None:
        yield _any_of("tier", profile.tier if profile else "standard", cond.tier)
    if cond.weekdays is not None or cond.time is not None:
        local = now.astimezone(ZoneInfo(cond.timezone))
        if cond.weekdays is not None:
            yield _any_of("weekday", WEEKDAYS[local.weekday()], list(cond.weekdays))
        if cond.time is not None:
            start, end = _parse_span(cond.time)
            t = local.time().replace(tzinfo=None)
            within = start <= t <= end
            span, zone = cond.time, cond.timezone
            yield (
                "time",
                within,
                lambda: f"{local:%H:%M} {zone} {'within' if within else 'outside'} {span}",
            )


def check_conditions(
    cond: Conditions, msg: ClassifiedMessage, intent: Intent, now: datetime
) -> list[ConditionResult]:
    """Evaluate every set condition (all are reported, not only up to the first failure)."""
    return [
        ConditionResult.model_construct(condition=name, ok=ok, why=why())
        for name, ok, why in _checks(cond, msg, intent, now)
    ]


def conditions_hold(
    cond: Conditions, msg: ClassifiedMessage, intent: Intent, now: datetime
) -> bool:
    """Whether every set condition holds (``check_conditions`` without the reasons)."""
    # Most rules test the intent or its category, and most fail there: those two checks of
    # ``_checks`` first, without building the generator of every check (half a rule's cost).
    if cond.intent is not None and not _folded_in(intent.label, cond.intent):
        return False
    if cond.category is not None and not _folded_in(intent.category, cond.category):
        return False
    # a plain loop: all() over a generator expression took ~1 us more per rule
    for _, ok, _ in _checks(cond, msg, intent, now):  # noqa: SIM110
        if not ok:
            return False
    return True


def describe_action(action: Action) -> str:
    """One-line description of an action, for traces."""
    fields = action.model_dump(exclude={"type"}, exclude_none=True)
    args = ", ".join(f"{k}={v}" for k, v in fields.items())
    return f"{action.type}({args})"


def match_rules(
    workflow: Workflow,
    msg: ClassifiedMessage,
    intent: Intent,
    *,
    now: datetime,
    explain: bool = True,
) -> tuple[list[Rule], list[RuleTrace]]:
    """Rules that apply to this intent, in order, and a trace of every rule evaluated.

    Evaluation stops after the first matching rule with ``stop: true``. ``explain=False``:
    no trace (the same rules; the route agent sends no trace, and building one was most of
    the cost of matching).
    """
    applied: list[Rule] = []
    traces: list[RuleTrace] = []
    for index, rule in enumerate(workflow.rules):
        if not explain:
            if conditions_hold(rule.when, msg, intent, now):
                applied.append(rule)
                if rule.stop:
                    break
            continue
        results = check_conditions(rule.when, msg, intent, now)
        matched = all(r.ok for r in results)
        if not results:
            results = [
                ConditionResult.model_construct(condition="always", ok=True, why="no conditions")
            ]
        # built without re-validation: every field is computed here (hot path)
        traces.append(
            RuleTrace.model_construct(
                rule=rule.name,
                index=index,
                intent=intent.label,
                category=intent.category,
                matched=matched,
                stop=matched and rule.stop,
                conditions=results,
                actions=[describe_action(a) for a in rule.then] if matched else [],
            )
        )
        if matched:
            applied.append(rule)
            if rule.stop:
                break
    return applied, traces
