"""Which of a customer's cases a new message continues (the thread), if any.

Pure. A message joins a case when it is about it, within a window after the case's last
activity (an open case is always live):

1. a duplicate joins the case of its original;
2. an answer to the pending survey joins the case that asked;
3. the case reference in the text ("№ 1A2B3C4D") picks that case;
4. an e-mail reply to our message (its References carry the case's thread);
5. thanks or "ок" go to the latest case (acknowledged there, never routed);
6. "не помогло" / "did not help" goes to the latest resolved case (reopened);
7. the same request: an intent category or an entity (order, store, card) the case has;
8. a short follow-up with no new request ("Ну что там?", "когда ответите?") goes to the
   open case, else the latest one.

Anything else is a new request and opens a new case, even from a customer with an open one.

A message never continues the case it opened itself: a replay (a worker died after the case
was stored, before the source offset was committed; a rebalance) sees the state its first
pass wrote and must decide again as that pass did, not as a follow-up on its own case (which
gave the message a second, conflicting Outcome and a second reply).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from pipeline.domain.cases import CaseState, case_ref, survey_pending
from pipeline.domain.conversation import (
    FOLLOW_UP_MAX_CHARS,
    is_small_talk,
    is_status_question,
    mentions_case_ref,
)
from pipeline.domain.surveys import read_answer
from pipeline.events import ClassifiedMessage, InboundMessage

__all__ = ["ThreadMatch", "match_thread"]

#: Entities that identify what a request is about (an amount or a date does not).
_IDENTIFYING = frozenset({"order", "store", "loyalty_card", "card", "product"})


@dataclass(frozen=True)
class ThreadMatch:
    """The case a message continues, and why; ``case`` None: a new request."""

    case: CaseState | None
    reason: str = ""

    @property
    def recontact(self) -> bool:
        """The customer came back to a case that was resolved."""
        return self.case is not None and self.case.status == "resolved"


def _live(cases: Sequence[CaseState], msg: InboundMessage, window: timedelta) -> list[CaseState]:
    now = msg.received_at
    live = [
        c
        for c in cases
        if c.status != "resolved" or (c.resolved_at is not None and now - c.resolved_at <= window)
    ]
    return sorted(live, key=lambda c: c.updated_at, reverse=True)


def _replies_to(msg: InboundMessage, case: CaseState) -> bool:
    if not msg.channel == case.channel == "email":
        return False
    ours = {case.reply_to.get("message_id", ""), *case.reply_to.get("references", "").split()}
    ours.discard("")
    theirs = {*msg.references, msg.in_reply_to or "", msg.conversation_id or ""}
    return bool(ours & theirs)


def _same_request(topics: set[str], mine: set[tuple[str, str]], case: CaseState) -> bool:
    """``topics``/``mine``: the message's intent categories and identifying entities."""
    if topics & set(case.categories):
        return True
    return bool(mine & {(e.kind, e.value.lower()) for e in case.entities})


def match_thread(
    cm: ClassifiedMessage,
    cases: Sequence[CaseState],
    *,
    window: timedelta,
    survey_expiry: timedelta | None = None,
    not_helped: Callable[[str, str], bool] = lambda text, language: False,
) -> ThreadMatch:
    """The customer's case ``cm`` continues (see the module docstring for the order).

    ``not_helped(text, language)``: the "did not help" detector of the caller's choice.
    """
    cases = [c for c in cases if c.first_message_id != cm.message_id]  # a replay's own case
    sim = cm.similarity
    if sim.duplicate_of is not None:
        return ThreadMatch(next((c for c in cases if c.case_id == sim.case_id), None), "duplicate")
    msg = cm.inbound
    live = _live(cases, msg, window)
    if not live:
        return ThreadMatch(None)
    text = msg.text
    latest = live[0]
    survey = latest.survey
    if (
        survey is not None
        and survey_pending(latest, msg.received_at, survey_expiry)
        and read_answer(text, survey.kind) is not None
    ):
        return ThreadMatch(latest, "survey")
    for case in live:
        if mentions_case_ref(text, case_ref(case.case_id)):
            return ThreadMatch(case, "case_ref")
    for case in live:
        if _replies_to(msg, case):
            return ThreadMatch(case, "reply")
    if is_small_talk(text):
        return ThreadMatch(latest, "small_talk")
    resolved = [c for c in live if c.status == "resolved"]
    if resolved and not_helped(text, msg.language):
        return ThreadMatch(resolved[0], "not_helped")
    topics = {i.category for i in cm.intents if i.label != "unknown"}
    mine = {(e.kind, e.value.lower()) for e in cm.entities if e.kind in _IDENTIFYING}
    same = [c for c in live if _same_request(topics, mine, c)]
    if same:
        return ThreadMatch(same[0], "same_request")
    opened = [c for c in live if c.status != "resolved"]
    unknown = all(i.label == "unknown" for i in cm.intents)
    if is_status_question(text):
        return ThreadMatch((opened or live)[0], "follow_up")
    if opened and unknown and len(text.strip()) <= FOLLOW_UP_MAX_CHARS:
        return ThreadMatch(opened[0], "follow_up")
    return ThreadMatch(None)
