"""The whole flow through the real stage cores, in memory (no Kafka): the in-memory seam.

ingest parser → normalization → classifier (default model) → KB → route → case transitions
→ e-mail composition and reply-address round trip — the same functions the agents call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from pipeline.classify.core import Classifier
from pipeline.config import Settings
from pipeline.domain.cases import apply_customer_message, apply_task_update
from pipeline.domain.tokens import parse_reply_address
from pipeline.domain.workflow import Workflow, load_workflow
from pipeline.events import InboundMessage, TaskStatus, TaskUpdate
from pipeline.notify.compose import compose_external
from pipeline.route.core import route_message
from pipeline.route.kb import KbIndex

if TYPE_CHECKING:
    from tests.plugins.inbound import TelegramInbound

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def parts() -> Iterator[tuple[Settings, Workflow, Classifier, KbIndex]]:
    s = Settings()
    wf = load_workflow(s.rules_path)
    clf = Classifier.from_settings(s, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority)
    yield s, wf, clf, KbIndex.from_dir(s.kb_dir)


Telegram = Callable[[Settings, int, int, str], InboundMessage]


@pytest.fixture
def tg(telegram_inbound: TelegramInbound) -> Telegram:
    """``tg(settings, chat, msg_id, text)``: a Telegram message received at NOW."""

    def _telegram(settings: Settings, chat: int, msg_id: int, text: str) -> InboundMessage:
        return telegram_inbound(settings, chat, msg_id, text, NOW)

    return _telegram


def test_seed_example_end_to_end_in_memory(
    parts: tuple[Settings, Workflow, Classifier, KbIndex],
    tg: Telegram,
) -> None:
    s, wf, clf, _ = parts
    text = (
        "Добрый день! В магазине на Садовой, 12 продают несвежие огурцы, а ещё на кассе "
        "не списались бонусы с карты лояльности."
    )
    inbound = tg(s, 4242, 1, text)
    assert inbound.language == "ru"
    [cm] = clf.classify_batch([inbound], now=NOW)
    assert {i.category for i in cm.intents} == {"STORE_QUALITY", "LOYALTY"}
    decision = route_message(cm, wf, now=NOW, kb_match=None, settings=s)
    assert decision.outcome.outcome.value == "routed"
    kinds = {(sr.kind.value, sr.department) for sr in decision.sub_requests}
    assert kinds == {("external", "store-directors"), ("internal", "loyalty-it")}
    external = next(sr for sr in decision.sub_requests if sr.kind.value == "external")
    internal = next(sr for sr in decision.sub_requests if sr.kind.value == "internal")
    mail = compose_external(external, s)
    assert mail["To"] == external.recipient
    assert parse_reply_address(str(mail["Reply-To"]), s) == (
        external.case_id,
        external.sub_request_id,
    )
    assert decision.case is not None
    state = decision.case
    replies = []
    for n, (sub, answer) in enumerate(
        [(internal, "Бонусы начислены."), (external, "Огурцы заменены.")], 1
    ):
        tr = apply_task_update(
            state,
            TaskUpdate(
                update_id=f"u{n}",
                sub_request_id=sub.sub_request_id,
                case_id=sub.case_id,
                status=TaskStatus.resolved,
                resolution=answer,
                at=NOW + timedelta(hours=n),
            ),
            wf,
            now=NOW + timedelta(hours=n),
        )
        state = tr.state
        replies.extend(tr.replies)
    assert state.status == "resolved"
    kinds_sent = [r.kind.value for r in replies]
    assert kinds_sent.count("resolution") == 1, kinds_sent
    resolution = next(r for r in replies if r.kind.value == "resolution")
    assert "Бонусы начислены." in resolution.text and "Огурцы заменены." in resolution.text
    assert resolution.channel.value == "telegram"
    assert resolution.reply_to.get("chat_id") == "4242"
    # The NPS answer comes back through the same channel and closes the loop.
    answer = tg(s, 4242, 2, "9")
    tr = apply_customer_message(state, answer, wf, now=NOW + timedelta(hours=3))
    assert tr.state.survey is not None and tr.state.survey.score == 9
    assert tr.state.survey.nps_class == "promoter"


def test_password_question_is_auto_replied_in_memory(
    parts: tuple[Settings, Workflow, Classifier, KbIndex],
    tg: Telegram,
) -> None:
    s, wf, clf, kb = parts
    for lang, text in [
        ("en", "I forgot my password, how do I reset it?"),
        ("ru", "Забыл пароль от личного кабинета, как восстановить?"),
    ]:
        inbound = tg(s, 5151, 1, text)
        [cm] = clf.classify_batch([inbound], now=NOW)
        match = kb.search(text, inbound.language, [i.label for i in cm.intents])
        decision = route_message(cm, wf, now=NOW, kb_match=match, settings=s)
        assert decision.outcome.outcome.value == "auto_resolved", (lang, match.reason)
        [reply] = decision.replies
        assert reply.article_id == "password-recovery" and reply.language == lang
