"""The workflow file: one versioned YAML document written by administrators.

It describes departments (internal ones with a task topic, skills and business hours;
external ones reached by e-mail through a directory such as the stores' directors),
groups for broadcasts, the stores directory, tag rules and priority weights for the
classifier, routing rules, SLA policies, survey policies, reply templates per language
and incident policies.

Rule semantics (also documented in ``pipeline/resources/workflow.yaml``):

* A message may hold several intents (requests). Rules are evaluated **per intent**,
  in **file order**.
* A rule matches when **every** condition in its ``when`` holds (an absent condition
  always holds; a list means "any of"). ``intent``/``category`` test the intent being
  routed; every other condition tests the whole message.
* When a rule matches, its actions are applied. ``stop: true`` (the default) ends the
  evaluation for that intent: **first match wins**. ``stop: false`` applies the rule and
  goes on, so a later rule can add actions too (**all matches** up to the first stopping one).
* An intent that matches no rule, or whose matching rules create no sub-request, goes to
  the ``triage`` department (``triage_department``) for a human to route.
* Sub-requests are deduplicated per (intent, target): two rules sending the same intent
  to the same department create one sub-request.

``load_workflow(path)`` validates the file and raises ``ConfigError`` listing every
problem with its line number (pydantic error locations mapped to YAML node marks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from pipeline.domain.priority_weights import PriorityWeights
from pipeline.domain.tagging import TagRule
from pipeline.errors import ConfigError
from pipeline.events import Channel

__all__ = [
    "Action",
    "BusinessHours",
    "Conditions",
    "Department",
    "EntityCondition",
    "EscalationStep",
    "ExternalDepartment",
    "Group",
    "IncidentPolicy",
    "InternalDepartment",
    "LanguageTemplates",
    "Level",
    "PriorityWeights",
    "Rule",
    "SlaPolicy",
    "Store",
    "SurveyPolicy",
    "TagRule",
    "Workflow",
    "load_workflow",
    "parse_workflow",
]

Level = Literal["P1", "P2", "P3", "P4"]
LEVELS: tuple[Level, ...] = ("P1", "P2", "P3", "P4")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d)?\s*$")


def _minutes(value: Any) -> Any:
    """'30m' | '4h' | '2d' | 90 → minutes (int)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"duration {value!r}: use e.g. 30m, 4h, 2d or minutes")
        n = float(m.group(1))
        unit = m.group(2) or "m"
        return round(n * {"m": 1, "min": 1, "h": 60, "d": 1440}[unit])
    return value


Minutes = Annotated[int, BeforeValidator(_minutes), Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _as_list(value: Any) -> Any:
    """Let a single scalar stand for a one-element list in conditions."""
    if value is None or isinstance(value, list | tuple):
        return value
    return [value]


StrList = Annotated[list[str], BeforeValidator(_as_list)]


# ---------------------------------------------------------------- departments


@lru_cache(maxsize=256)
def _parse_span(text: str) -> tuple[time, time]:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        raise ValueError(f"hours {text!r}: use HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h2 == 24 and m2 == 0:
        h2, m2 = 23, 59
    if not (0 <= h1 < 24 and 0 <= h2 < 24 and m1 < 60 and m2 < 60):
        raise ValueError(f"hours {text!r}: out of range")
    start, end = time(h1, m1), time(h2, m2)
    if end <= start:
        raise ValueError(f"hours {text!r}: end must be after start (no overnight spans)")
    return start, end


class BusinessHours(_Model):
    """Working hours per weekday in one timezone; a day that is absent is closed."""

    timezone: str = Field(default="UTC", description="IANA zone, e.g. Europe/Moscow.")
    days: dict[Weekday, str] = Field(
        default_factory=lambda: dict.fromkeys(WEEKDAYS[:5], "09:00-18:00"),
        description="weekday → 'HH:MM-HH:MM'.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @field_validator("days")
    @classmethod
    def _spans(cls, value: dict[Weekday, str]) -> dict[Weekday, str]:
        for span in value.values():
            _parse_span(span)
        if not value:
            raise ValueError("at least one working day is needed")
        return value

    def span(self, weekday: int) -> tuple[time, time] | None:
        """Opening span of a weekday (0 = Monday), or None when closed."""
        text = self.days.get(WEEKDAYS[weekday])
        return _parse_span(text) if text else None


class InternalDepartment(_Model):
    """A department that uses the system: it reads tasks from ``tasks.<topic>``."""

    kind: Literal["internal"] = "internal"
    title: str | dict[str, str] = Field(default="", description="Name, or per language.")
    topic: str | None = Field(default=None, description="Task topic suffix (default: its key).")
    skills: list[str] = Field(default_factory=list)
    hours: BusinessHours | None = Field(default=None, description="None: around the clock.")
    supervisor: str | None = Field(default=None, description="E-mail of the supervisor.")


class ExternalDepartment(_Model):
    """Parties outside the system, reached by e-mail: a directory or fixed addresses."""

    kind: Literal["external"] = "external"
    title: str | dict[str, str] = Field(default="", description="Name, or per language.")
    directory: Literal["stores"] | None = Field(
        default=None, description="Contacts come from this directory (stores → director)."
    )
    contacts: list[str] = Field(default_factory=list, description="Fixed addresses.")
    hours: BusinessHours | None = None
    supervisor: str | None = None
    language: str | None = Field(
        default=None, description="Language of e-mails to this party (default: the customer's)."
    )


Department = Annotated[InternalDepartment | ExternalDepartment, Field(discriminator="kind")]


class Store(BaseModel):
    """One store of the directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(min_length=1, description="Store code, e.g. 'MSK-012'.")
    name: str = Field(default="", description="Display name.")
    address: str = Field(default="", description="Street address, e.g. 'ул. Садовая, 12'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names customers use.")
    city: str = Field(default="", description="City.")
    director_email: str | None = Field(default=None, description="Director's e-mail.")


class Group(_Model):
    """Recipients of a broadcast: fixed addresses and/or a whole directory."""

    members: list[str] = Field(default_factory=list, description="Fixed e-mail addresses.")
    directory: Literal["stores"] | None = Field(
        default=None, description="Add every store director of the directory."
    )
    department: str | None = Field(
        default=None, description="Department the broadcast sub-requests are tracked under."
    )
    language: str | None = Field(
        default=None,
        description="Language of broadcasts to this group (default: the department's, "
        "then default_language).",
    )


# ---------------------------------------------------------------- rules


class EntityCondition(_Model):
    """An entity of ``kind`` is present (or absent), optionally with one of ``values``."""

    kind: str
    present: bool = True
    values: StrList | None = None


class Conditions(_Model):
    """Every field that is set must hold; lists mean 'any of'."""

    intent: StrList | None = None
    category: StrList | None = None
    tags_any: StrList | None = None
    tags_all: StrList | None = None
    tags_none: StrList | None = None
    entities: list[EntityCondition] = Field(default_factory=list)
    priority: Annotated[list[Level], BeforeValidator(_as_list)] | None = None
    min_score: float | None = Field(default=None, ge=0, le=100)
    channel: Annotated[list[Channel], BeforeValidator(_as_list)] | None = None
    language: StrList | None = None
    segment: StrList | None = None
    tier: StrList | None = None
    weekdays: Annotated[list[Weekday], BeforeValidator(_as_list)] | None = None
    time: str | None = Field(default=None, description="Time of day 'HH:MM-HH:MM'.")
    timezone: str = Field(default="UTC", description="Zone of weekdays/time.")

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_span(value)
        return value


class _Action(_Model):
    pass


class InternalAction(_Action):
    """Internal sub-request to a department's task topic."""

    type: Literal["internal"]
    department: str


class ExternalAction(_Action):
    """External e-mail sub-request: the named store's director or a fixed address."""

    type: Literal["external"]
    department: str = Field(description="External department (tracking + directory).")
    to: Literal["store_director"] | None = Field(
        default=None, description="Resolve the recipient from the message's store entity."
    )
    address: str | None = Field(default=None, description="Fixed recipient.")
    fallback_department: str | None = Field(
        default=None, description="Internal department when no recipient can be resolved."
    )


class BroadcastAction(_Action):
    """One tracked sub-request per member of a group."""

    type: Literal["broadcast"]
    group: str
    template: str | None = Field(default=None, description="Custom template name for the text.")


class SetPriorityAction(_Action):
    """Override the case's priority level."""

    type: Literal["set_priority"]
    level: Level


class SlaAction(_Action):
    """Use this SLA policy for the sub-requests of the intent."""

    type: Literal["sla"]
    policy: str


class AutoReplyAction(_Action):
    """Answer the customer with a template (kind auto_reply) and route nothing else."""

    type: Literal["auto_reply"]
    template: str


class EscalateAction(_Action):
    """Raise the priority one level and, with ``department``, also send it there."""

    type: Literal["escalate"]
    department: str | None = None


class TriageAction(_Action):
    """Send the intent to the human triage department."""

    type: Literal["triage"]


Action = Annotated[
    InternalAction
    | ExternalAction
    | BroadcastAction
    | SetPriorityAction
    | SlaAction
    | AutoReplyAction
    | EscalateAction
    | TriageAction,
    Field(discriminator="type"),
]


class Rule(_Model):
    """``when`` all conditions hold → apply ``then``; ``stop`` ends the intent's evaluation."""

    name: str
    description: str = ""
    when: Conditions = Field(default_factory=Conditions)
    then: list[Action] = Field(min_length=1)
    stop: bool = True


# ---------------------------------------------------------------- SLA, surveys, templates


class EscalationStep(_Model):
    """What happens at an SLA breach."""

    type: Literal["raise_priority", "reroute", "notify_supervisor"]
    department: str | None = Field(default=None, description="reroute: where to.")
    address: str | None = Field(
        default=None, description="notify_supervisor: address (default: department supervisor)."
    )


class SlaPolicy(_Model):
    """First-response and resolution targets per priority level."""

    departments: list[str] = Field(
        default_factory=list, description="Departments this policy is the default for."
    )
    first_response: dict[Level, Minutes] = Field(default_factory=dict)
    resolution: dict[Level, Minutes] = Field(default_factory=dict)
    business_hours: bool = Field(
        default=True, description="Count only the department's working time."
    )
    warn_before: float = Field(
        default=0.2, gt=0, lt=1, description="Warn when this fraction of the time is left."
    )
    escalation: list[EscalationStep] = Field(default_factory=list)


class SurveyPolicy(_Model):
    """After a case of these categories is resolved, ask this survey."""

    categories: StrList
    kind: Literal["csat", "nps"]


class LanguageTemplates(_Model):
    """Texts for one language. ``{placeholders}`` are filled by str.format."""

    acknowledgement: str
    resolution: str = Field(description="Whole answer; {items} is the list of resolutions.")
    resolution_item: str = Field(default="• {resolution}")
    incident_notice: str
    survey_csat: str
    survey_nps: str
    survey_thanks: str = ""
    triage: str
    reopened: str = ""
    rejection: str = Field(
        default="",
        description="Whole answer when no request could be done: {items} lists rejection_item "
        "per request, then what happens next (empty → the resolution template).",
    )
    partial: str = Field(
        default="",
        description="Whole answer when some requests were done and some not: {items} mixes "
        "resolution_item and rejection_item (empty → the resolution template).",
    )
    rejection_item: str = Field(
        default="• {resolution}",
        description="One request that could not be done: {department} (its title), "
        "{resolution} (the department's reason).",
    )
    survey_retry_csat: str = Field(default="", description="Asked again after an unclear score.")
    survey_retry_nps: str = Field(default="", description="Asked again after an unclear score.")
    small_talk: str = Field(
        default="", description="Answer to thanks after a resolution or survey (empty → none)."
    )
    breach_update: str = Field(
        default="",
        description="Short update to the customer when their request breaches its SLA, once "
        "per case and policy (empty → none).",
    )
    custom: dict[str, str] = Field(default_factory=dict)


class IncidentPolicy(_Model):
    """N reports within a window in one bucket → broadcast to a group."""

    name: str
    categories: StrList
    threshold: int = Field(ge=2)
    window_minutes: Minutes
    bucket_by: list[Literal["category", "store"]] = Field(default=["category", "store"])
    group: str
    template: str = Field(description="Custom template name (templates.<lang>.custom).")


class Workflow(_Model):
    """The whole workflow file."""

    version: Literal[1]
    triage_department: str = "triage"
    default_language: str = "ru"
    departments: dict[str, Department]
    groups: dict[str, Group] = Field(default_factory=dict)
    stores: list[Store] = Field(default_factory=list)
    tag_rules: list[TagRule] = Field(default_factory=list)
    priority: PriorityWeights | None = Field(
        default=None, description="Priority weights and level cut-offs of the classifier."
    )
    rules: list[Rule] = Field(default_factory=list)
    sla_policies: dict[str, SlaPolicy] = Field(default_factory=dict)
    default_sla: str | None = None
    surveys: list[SurveyPolicy] = Field(default_factory=list)
    templates: dict[str, LanguageTemplates]
    incidents: list[IncidentPolicy] = Field(default_factory=list)
    review_rejections: str | None = Field(
        default=None,
        description="Department whose human reviews a rejection or partial outcome before the "
        "customer is told (None: the customer is told at once).",
    )

    # ---- look-ups used by the engine

    def party_language(self, department: str, group: str | None = None) -> str | None:
        """Language set for mail to an external party or a broadcast group, if any."""
        g = self.groups.get(group) if group else None
        if g is not None and g.language:
            return g.language
        dep = self.departments.get(department)
        if isinstance(dep, ExternalDepartment) and dep.language:
            return dep.language
        return None

    def task_departments(self) -> list[str]:
        """Names of the task topics (without prefix) of the internal departments."""
        return sorted(d.topic or n for n, d in self.departments.items() if d.kind == "internal")

    def store(self, code: str) -> Store | None:
        """Store by code (case-insensitive)."""
        for s in self.stores:
            if s.code.lower() == code.lower():
                return s
        return None

    def group_members(self, name: str) -> list[str]:
        """Distinct recipient addresses of a group, in a stable order."""
        group = self.groups[name]
        out = list(group.members)
        if group.directory == "stores":
            out += [s.director_email for s in self.stores if s.director_email]
        return list(dict.fromkeys(out))

    def title(self, department: str, language: str) -> str:
        """Department name shown to customers, in their language when given per language."""
        dep = self.departments.get(department)
        if dep is None or not dep.title:
            return department
        if isinstance(dep.title, str):
            return dep.title
        return (
            dep.title.get(language)
            or dep.title.get(self.default_language)
            or next(iter(dep.title.values()))
        )

    def templates_for(self, language: str) -> LanguageTemplates:
        """Templates of the language, else of the default language."""
        return self.templates.get(language) or self.templates[self.default_language]

    def custom_template(self, name: str, language: str) -> str:
        """Custom template ``name`` in the language, else in the default language, else any."""
        for lang in (language, self.default_language, *self.templates):
            templates = self.templates.get(lang)
            if templates is not None and name in templates.custom:
                return templates.custom[name]
        raise KeyError(name)

    def sla_policy_for(self, department: str, name: str | None = None) -> SlaPolicy | None:
        """Named policy, else the department's, else the default one."""
        if name and name in self.sla_policies:
            return self.sla_policies[name]
        for policy in self.sla_policies.values():
            if department in policy.departments:
                return policy
        return self.sla_policies.get(self.default_sla) if self.default_sla else None

    def survey_for(self, categories: Sequence[str]) -> SurveyPolicy | None:
        """First survey policy covering any of the categories."""
        for policy in self.surveys:
            if set(policy.categories) & set(categories):
                return policy
        return None


# ---------------------------------------------------------------- loading


Loc = tuple[str | int, ...]


def _references(wf: Workflow) -> Iterator[tuple[Loc, str]]:
    """Cross-references the schema cannot check: names of departments, groups, templates."""
    deps = wf.departments
    if wf.triage_department not in deps:
        yield ("triage_department",), f"unknown department {wf.triage_department!r}"
    if wf.default_language not in wf.templates:
        yield ("default_language",), f"no templates for {wf.default_language!r}"
    if wf.review_rejections is not None and wf.review_rejections not in deps:
        yield ("review_rejections",), f"unknown department {wf.review_rejections!r}"
    if wf.default_sla is not None and wf.default_sla not in wf.sla_policies:
        yield ("default_sla",), f"unknown SLA policy {wf.default_sla!r}"
    custom = {name for t in wf.templates.values() for name in t.custom}
    for name, dep in deps.items():
        if isinstance(dep, ExternalDepartment) and not dep.directory and not dep.contacts:
            yield ("departments", name), "external department needs a directory or contacts"
        if isinstance(dep, ExternalDepartment) and dep.language not in (None, *wf.templates):
            yield ("departments", name, "language"), f"no templates for {dep.language!r}"
    for gname, group in wf.groups.items():
        if group.department is not None and group.department not in deps:
            yield ("groups", gname, "department"), f"unknown department {group.department!r}"
        if group.language not in (None, *wf.templates):
            yield ("groups", gname, "language"), f"no templates for {group.language!r}"
    seen: set[str] = set()
    for i, rule in enumerate(wf.rules):
        if rule.name in seen:
            yield ("rules", i, "name"), f"duplicate rule name {rule.name!r}"
        seen.add(rule.name)
        for j, act in enumerate(rule.then):
            where: Loc = ("rules", i, "then", j)
            if isinstance(act, InternalAction | EscalateAction) and act.department is not None:
                if act.department not in deps:
                    yield where, f"unknown department {act.department!r}"
                elif isinstance(act, InternalAction) and deps[act.department].kind != "internal":
                    yield where, f"department {act.department!r} is not internal"
            if isinstance(act, ExternalAction):
                if act.department not in deps:
                    yield where, f"unknown department {act.department!r}"
                if act.to is None and act.address is None:
                    yield where, "external action needs 'to: store_director' or 'address'"
                if act.fallback_department is not None and act.fallback_department not in deps:
                    yield where, f"unknown department {act.fallback_department!r}"
            if isinstance(act, BroadcastAction):
                if act.group not in wf.groups:
                    yield where, f"unknown group {act.group!r}"
                if act.template is not None and act.template not in custom:
                    yield where, f"unknown template {act.template!r}"
            if isinstance(act, SlaAction) and act.policy not in wf.sla_policies:
                yield where, f"unknown SLA policy {act.policy!r}"
            if isinstance(act, AutoReplyAction) and act.template not in custom:
                yield where, f"unknown template {act.template!r}"
    for pname, policy in wf.sla_policies.items():
        for d in policy.departments:
            if d not in deps:
                yield ("sla_policies", pname, "departments"), f"unknown department {d!r}"
        for k, step in enumerate(policy.escalation):
            if step.type == "reroute" and (step.department is None or step.department not in deps):
                yield (
                    ("sla_policies", pname, "escalation", k),
                    f"reroute needs a known department, got {step.department!r}",
                )
    if wf.priority is not None:
        rule_tags = {r.tag for r in wf.tag_rules}
        for tag in wf.priority.tags:
            if tag not in rule_tags:
                yield ("priority", "tags", tag), f"no tag rule adds the tag {tag!r}"
    for k, inc in enumerate(wf.incidents):
        if inc.group not in wf.groups:
            yield ("incidents", k, "group"), f"unknown group {inc.group!r}"
        if inc.template not in custom:
            yield ("incidents", k, "template"), f"unknown template {inc.template!r}"


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest YAML node the location reaches."""
    node = root
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
        if child is None:
            continue  # e.g. the discriminator tag pydantic inserts, or a missing key
        node = child
        if not isinstance(node, yaml.MappingNode) or isinstance(part, int):
            line = node.start_mark.line + 1
    return line


def parse_workflow(text: str, *, source: str = "<workflow>") -> Workflow:
    """Validate workflow YAML text; ConfigError lists every problem as ``source:line: msg``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the workflow must be a mapping with 'version: 1'")
    problems: list[tuple[int | None, str]] = []
    try:
        wf = Workflow.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc: Loc = tuple(err["loc"])
            where = ".".join(str(p) for p in loc) or "<root>"
            problems.append((_line_of(root, loc), f"{where}: {err['msg']}"))
    else:
        for loc, msg in _references(wf):
            where = ".".join(str(p) for p in loc)
            problems.append((_line_of(root, loc), f"{where}: {msg}"))
        if not problems:
            return wf
    lines = [f"{source}:{line if line is not None else '?'}: {msg}" for line, msg in problems]
    raise ConfigError(f"{len(problems)} error(s) in {source}\n" + "\n".join(lines))


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow file (ConfigError with line numbers on any problem)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read workflow: {exc}") from exc
    return parse_workflow(text, source=str(p))
