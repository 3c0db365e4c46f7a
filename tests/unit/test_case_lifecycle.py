"""The case lifecycle as a contact-center lead expects it (issue 17): pure transitions."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from pipeline.config import Settings
from pipeline.domain.cases import case_flags
from pipeline.events import Priority, PriorityComponent, SubRequestKind
from pipeline.notify.compose import compose_external
from pipeline.route.core import route_message
from tests.unit.test_route_fixtures import NOW, default_workflow, seed_message

SETTINGS = Settings(reply_domain="example.com")


def _body(msg: EmailMessage) -> str:
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_director_mail_states_the_customers_language_and_asks_for_it() -> None:
    d = route_message(seed_message(language="en"), default_workflow(), now=NOW, settings=SETTINGS)
    (external,) = [s for s in d.sub_requests if s.kind is SubRequestKind.external]
    assert external.language == "ru"  # the store directors' own language
    assert external.customer_language == "en"
    body = _body(compose_external(external, SETTINGS))
    assert "Язык клиента: английский" in body
    assert "Пожалуйста, ответьте на этом языке" in body


def test_vip_and_legal_threat_flags_reach_every_sub_request() -> None:
    d = route_message(seed_message(tier="vip"), default_workflow(), now=NOW, settings=SETTINGS)
    assert d.case is not None and case_flags(d.case) == ["vip"]
    assert all(s.flags == ["vip"] for s in d.sub_requests) and len(d.sub_requests) == 2
    legal = d.case.model_copy(
        update={
            "priority": Priority(
                score=80,
                level="P1",
                components=[PriorityComponent(name="legal_threat", points=30, reason="суд")],
            )
        }
    )
    assert case_flags(legal) == ["vip", "legal_threat"]
    (external,) = [s for s in d.sub_requests if s.kind is SubRequestKind.external]
    assert "Внимание: VIP-клиент" in _body(compose_external(external, SETTINGS))
