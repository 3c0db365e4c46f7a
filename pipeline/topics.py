"""Every topic of the router, declared in one place with its partitions and cleanup policy.

Tansu auto-creates undeclared topics with 4 partitions and default configs, so every
topic the router touches is created explicitly (``ensure_topics``) before use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import Settings


@dataclass(frozen=True)
class TopicSpec:
    """A topic the router owns."""

    name: str
    compacted: bool = False
    description: str = ""


#: Logical topic names (without prefix) and what flows on them.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("inbound", description="InboundMessage, keyed by customer_id"),
    TopicSpec(
        "classified",
        description="ClassifiedMessage for route (the incident detector's; classify routes "
        "the others in the same step), keyed by customer_id",
    ),
    TopicSpec(
        "classifications",
        description="ClassifiedMessage, every message as classified (the record of the "
        "decision: console, audit), keyed by customer_id",
    ),
    TopicSpec(
        "incident-signals",
        description="IncidentSignal (a message in an incident bucket) from classify; "
        "IncidentResolved from the case keeper; keyed by bucket",
    ),
    TopicSpec("external", description="SubRequest for external parties (e-mail), keyed by case_id"),
    TopicSpec("replies", description="Reply to customers, keyed by customer_id"),
    TopicSpec(
        "task-updates", description="TaskUpdate from departments and e-mail, keyed by case_id"
    ),
    TopicSpec("case-events", description="CaseEvents (a transition's audit trail), by case_id"),
    TopicSpec("outcomes", description="Outcome, one per accepted message, keyed by message_id"),
    TopicSpec("dlq", description="DeadLetter from every stage"),
    TopicSpec("deliveries", description="DeliveryReceipt, keyed by delivery id"),
    TopicSpec("quality", description="CaseEvent for negative survey answers"),
    TopicSpec(
        "case-state",
        compacted=True,  # the newest snapshot of every case: a console rebuilds from it
        description="CaseSnapshot from route to the case keeper, by case_id",
    ),
    TopicSpec(
        "case-commands",
        description="CaseCommand from the console's supervisors; IncidentLink from route",
    ),
    TopicSpec("case-status", description="CaseSnapshot from the case keeper to route, by customer"),
    TopicSpec("customers", compacted=True, description="CustomerRecord directory, keyed by id"),
    TopicSpec("kb", compacted=True, description="KbArticle, keyed by article_id"),
    TopicSpec("config", compacted=True, description="WorkflowPublished, keyed by 'workflow'"),
)

TASKS_PREFIX = "tasks."


def task_topic(settings: Settings, department: str) -> str:
    """Full name of a department's task topic."""
    return settings.topic(f"{TASKS_PREFIX}{department}")


def all_topic_names(settings: Settings, departments: Sequence[str] = ()) -> list[str]:
    """Full names of the fixed topics plus one task topic per department."""
    return [settings.topic(t.name) for t in TOPICS] + [task_topic(settings, d) for d in departments]


def compacted_names(settings: Settings) -> set[str]:
    """Full names of compacted topics."""
    return {settings.topic(t.name) for t in TOPICS if t.compacted}
