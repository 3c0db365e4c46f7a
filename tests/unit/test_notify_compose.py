"""E-mail composition for external parties and e-mail customers, in Russian and English."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.config import Settings
from pipeline.domain.tokens import parse_reply_address
from pipeline.errors import InvalidInput
from pipeline.events import (
    Channel,
    Entity,
    Priority,
    Reply,
    ReplyKind,
    SubRequestKind,
)
from pipeline.notify.compose import compose_external, compose_reply_email, message_id_for

if TYPE_CHECKING:
    from tests.plugins.events import MakeSubRequest

SETTINGS = Settings(reply_domain="reply.example.com", mail_from="care@example.com")
EN_TEXT = "The cucumbers in store 0412 are stale. My card {card}, reach me at john@mail.com"


def roundtrip(msg: EmailMessage) -> EmailMessage:
    """Serialize to wire bytes and parse back, as the recipient would."""
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def test_external_ru_headers_and_body(make_sub_request: MakeSubRequest) -> None:
    sr = make_sub_request()
    msg = roundtrip(compose_external(sr, SETTINGS))
    assert msg["To"] == "director.0412@stores.example.com"
    assert msg["From"] == "care@example.com"
    assert sr.case_id in msg["Subject"] and sr.sub_request_id in msg["Subject"]
    assert "магазин 0412" in msg["Subject"] and "[P2]" in msg["Subject"]
    assert msg["Content-Language"] == "ru"
    text = body(msg)
    assert "Здравствуйте!" in text
    assert "Магазин: 0412" in text
    assert "Приоритет: P2 (62/100)" in text
    assert "Срок ответа: 27.11.2026 15:30 UTC" in text
    assert "> В магазине 0412 продают несвежие огурцы." in text
    assert "Номер заказа: A-778" in text
    assert "Карта лояльности: **** **** **** 9012" in text
    assert "нажмите «Ответить»" in text
    assert "И бонусы не списались." in text  # full text differs from the span: included


def test_external_redacts_pii_everywhere(make_sub_request: MakeSubRequest) -> None:
    text = body(roundtrip(compose_external(make_sub_request(), SETTINGS)))
    assert "**** **** **** 5675" in text
    assert "1600" not in text and "916 123" not in text and "+* *** ***-**-67" in text
    assert "7000 1234" not in text


def test_external_en(make_sub_request: MakeSubRequest, card_number: str) -> None:
    en_text = EN_TEXT.format(card=card_number)
    sr = make_sub_request(language="en", text=en_text, full_text=en_text)
    msg = roundtrip(compose_external(sr, SETTINGS))
    assert msg["Content-Language"] == "en"
    assert "store 0412" in msg["Subject"]
    text = body(msg)
    assert text.startswith("Hello,")
    assert "Please answer by: 2026-11-27 15:30 UTC" in text
    assert "Loyalty card: **** **** **** 9012" in text
    assert "reply to this e-mail" in text
    assert "j***@mail.com" in text and "john@" not in text
    assert "The customer's full message" not in text  # same as the span: not repeated


def test_other_language_falls_back_to_english(make_sub_request: MakeSubRequest) -> None:
    msg = compose_external(make_sub_request(language="other"), SETTINGS)
    assert msg["Content-Language"] == "en"


def test_reply_to_token_parses_back(make_sub_request: MakeSubRequest) -> None:
    sr = make_sub_request()
    msg = compose_external(sr, SETTINGS)
    assert msg["Reply-To"].endswith("@reply.example.com")
    assert parse_reply_address(msg["Reply-To"], SETTINGS) == (sr.case_id, sr.sub_request_id)


def test_message_is_deterministic(make_sub_request: MakeSubRequest) -> None:
    sr = make_sub_request()
    first, second = compose_external(sr, SETTINGS), compose_external(sr, SETTINGS)
    assert bytes(first) == bytes(second)
    assert first["Message-ID"] == f"<{sr.sub_request_id}@reply.example.com>"
    other = compose_external(
        make_sub_request(sub_request_id="sr_ffffffffffffffffffffffff"), SETTINGS
    )
    assert other["Message-ID"] != first["Message-ID"]


def test_message_id_sanitizes_odd_ids() -> None:
    assert message_id_for("a b<c>@d", SETTINGS) == "<a_b_c__d@reply.example.com>"


def test_broadcast_wording(make_sub_request: MakeSubRequest) -> None:
    ru = body(compose_external(make_sub_request(kind=SubRequestKind.broadcast), SETTINGS))
    en = body(
        compose_external(make_sub_request(kind=SubRequestKind.broadcast, language="en"), SETTINGS)
    )
    assert "проверьте ситуацию у себя" in ru
    assert "check the situation on your side" in en


def test_without_sla_and_store(make_sub_request: MakeSubRequest) -> None:
    sr = make_sub_request(sla_due_at=None, entities=[], language="en", text="x", full_text="x")
    msg = compose_external(sr, SETTINGS)
    text = body(msg)
    assert "Please answer by" not in text and "Store:" not in text
    assert msg["Subject"] == f"[{sr.case_id}/{sr.sub_request_id}] Customer request: STORE [P2]"


@pytest.mark.parametrize(
    ("update", "field"),
    [({"kind": SubRequestKind.internal}, "kind"), ({"recipient": None}, "recipient")],
)
def test_not_emailable_sub_requests_rejected(
    update: dict[str, Any],
    field: str,
    make_sub_request: MakeSubRequest,
) -> None:
    with pytest.raises(InvalidInput) as info:
        compose_external(make_sub_request(**update), SETTINGS)
    assert info.value.field == field


# ---------------------------------------------------------------- replies to e-mail customers


def make_reply(**update: Any) -> Reply:
    base: dict[str, Any] = {
        "reply_id": "rep_0123456789abcdef01234567",
        "case_id": "case_89abcdef0123456789abcdef",
        "message_id": "msg_1",
        "customer_id": "cust_1",
        "channel": Channel.email,
        "reply_to": {
            "address": "ivan@mail.ru",
            "message_id": "<CAF1234@mail.ru>",
            "references": "<first@mail.ru>",
            "subject": "Огурцы и бонусы",
        },
        "language": "ru",
        "kind": ReplyKind.resolution,
        "text": "Огурцы заменены, бонусы начислены на карту.",
        "link": "https://help.example.com/kb/bonus",
        "created_at": datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
    }
    base.update(update)
    return Reply(**base)


def test_reply_email_threads_under_customer_message_ru() -> None:
    msg = roundtrip(compose_reply_email(make_reply(), SETTINGS))
    assert msg["To"] == "ivan@mail.ru"
    assert msg["Subject"] == "Re: Огурцы и бонусы"
    assert msg["In-Reply-To"] == "<CAF1234@mail.ru>"
    assert msg["References"] == "<first@mail.ru> <CAF1234@mail.ru>"
    assert msg["Message-ID"] == "<rep_0123456789abcdef01234567@reply.example.com>"
    text = body(msg)
    assert "Огурцы заменены, бонусы начислены на карту." in text
    assert "https://help.example.com/kb/bonus" in text


def test_reply_email_en_without_thread_gets_default_subject() -> None:
    reply = make_reply(language="en", reply_to={"email": "john@mail.com"}, text="Done.", link=None)
    msg = roundtrip(compose_reply_email(reply, SETTINGS))
    assert msg["To"] == "john@mail.com"
    assert msg["Subject"] == "Update on your request [case_89abcdef0123456789abcdef]"
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert body(msg) == "Done.\n"


def test_reply_email_bare_message_id_gets_brackets_and_re_not_doubled() -> None:
    reply = make_reply(reply_to={"address": "a@b.ru", "in_reply_to": "x@y", "subject": "Re: hi"})
    msg = compose_reply_email(reply, SETTINGS)
    assert msg["In-Reply-To"] == "<x@y>" and msg["References"] == "<x@y>"
    assert msg["Subject"] == "Re: hi"


def test_reply_email_without_address_rejected() -> None:
    with pytest.raises(InvalidInput):
        compose_reply_email(make_reply(reply_to={}), SETTINGS)


def test_long_cyrillic_subject_keeps_its_spaces_on_the_wire(
    make_sub_request: MakeSubRequest,
) -> None:
    import email
    import email.policy

    from pipeline.config import Settings
    from pipeline.notify.compose import compose_external

    sub = make_sub_request(
        sub_request_id="sr_9ef938a7292b8085de39dda7",
        case_id="case_211e5ca28f1d203bd4034820",
        department="store-directors",
        category="STORE_QUALITY",
        text="огурцы",
        full_text="огурцы",
        priority=Priority(score=10, level="P4"),
        sla_due_at=None,
        entities=[Entity(kind="store", value="SPB-012")],
    )
    msg = compose_external(sub, Settings())
    wire = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert "Запрос по обращению клиента" in str(parsed["Subject"])
