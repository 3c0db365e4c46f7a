"""Pure MIME parsing: charsets, transfer encodings, multipart, HTML, quotes, signatures."""

from __future__ import annotations

import hashlib
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from pipeline.errors import DecodeError, InvalidInput
from pipeline.events import Channel
from pipeline.ingest.email_parse import (
    html_to_text,
    parse_email,
    strip_quotes_and_signature,
    to_parsed_message,
)

RU = "Здравствуйте! Не пришёл заказ 5521, верните деньги."


def _headers(msg: MIMEText | MIMEMultipart, **extra: str) -> bytes:
    msg["From"] = extra.pop("From", "Иван <Ivan@Example.RU>")
    msg["To"] = "support@example.com"
    msg["Subject"] = extra.pop("Subject", "Заказ")
    msg["Message-ID"] = "<m1@example.ru>"
    msg["Date"] = "Wed, 01 May 2024 12:00:00 +0300"
    for k, v in extra.items():
        msg[k.replace("_", "-")] = v
    return msg.as_bytes()


@pytest.mark.parametrize("charset", ["koi8-r", "windows-1251", "utf-8"])
def test_russian_charsets_base64(charset: str) -> None:
    mail = parse_email(_headers(MIMEText(RU, "plain", charset)))
    assert mail.text == RU
    assert mail.from_address == "ivan@example.ru"
    assert mail.subject == "Заказ"
    assert mail.date is not None and mail.date.utcoffset() is not None


def test_quoted_printable_windows_1251() -> None:
    body = RU.encode("cp1251")
    import quopri

    qp = quopri.encodestring(body)
    raw = (
        b"From: ivan@example.ru\r\nTo: support@example.com\r\nSubject: =?windows-1251?Q?"
        + b"=C7=E0=EA=E0=E7?=\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=windows-1251\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp + b"\r\n"
    )
    mail = parse_email(raw)
    assert mail.text == RU
    assert mail.subject == "Заказ"


def test_undeclared_8bit_cp1251_is_guessed() -> None:
    raw = b"From: a@example.ru\r\nSubject: x\r\n\r\n" + RU.encode("cp1251")
    assert parse_email(raw).text == RU


def test_multipart_alternative_prefers_plain() -> None:
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("Plain version of my question", "plain", "utf-8"))
    alt.attach(MIMEText("<p>HTML version</p>", "html", "utf-8"))
    mail = parse_email(_headers(alt, From="bob@example.com", Subject="Q"))
    assert mail.text == "Plain version of my question"
    assert not mail.html_only


def test_html_only_with_attachment_metadata() -> None:
    outer = MIMEMultipart("mixed")
    outer.attach(
        MIMEText(
            "<html><head><style>p{}</style></head><body><p>My invoice&nbsp;is wrong.</p>"
            "<blockquote>old thread</blockquote><script>x()</script></body></html>",
            "html",
            "utf-8",
        )
    )
    data = b"%PDF-1.4\x00\x01binary"
    att = MIMEApplication(data, "pdf")
    att.add_header("Content-Disposition", "attachment", filename="счёт.pdf")
    outer.attach(att)
    mail = parse_email(_headers(outer, From="bob@example.com", Subject="Invoice"))
    assert mail.text == "My invoice is wrong."
    assert mail.html_only
    (a,) = mail.attachments
    assert a.filename == "счёт.pdf"
    assert a.content_type == "application/pdf"
    assert a.size == len(data) and a.sha256 == hashlib.sha256(data).hexdigest()


def test_threading_headers_and_parsed_message() -> None:
    raw = _headers(
        MIMEText("Any update on this?", "plain", "utf-8"),
        From="bob@example.com",
        In_Reply_To="<r2@care>",
        References="<r1@care> <r2@care>",
    )
    mail = parse_email(raw)
    assert mail.message_id == "<m1@example.ru>"
    assert mail.in_reply_to == "<r2@care>" and mail.references == ("<r1@care>", "<r2@care>")
    msg = to_parsed_message(mail, "support@example.com")
    assert msg.channel is Channel.email
    assert msg.channel_message_id == "<m1@example.ru>"
    assert msg.conversation_id == "<r1@care>"
    assert msg.reply_to["message_id"] == "<m1@example.ru>"
    assert msg.reply_to["references"] == "<r1@care> <r2@care>"
    assert msg.routing_hints == {"to_address": "support@example.com"}


def test_missing_message_id_gets_content_hash_id() -> None:
    raw = b"From: a@example.com\r\n\r\nhello there"
    msg = to_parsed_message(parse_email(raw))
    assert msg.channel_message_id.startswith("<sha256:")
    assert "message_id" not in msg.reply_to


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "My order is late.\n\nOn Mon, 1 Jan 2024 at 10:00 Support <s@x.com> wrote:\n> old",
            "My order is late.",
        ),
        (
            "Refund please.\n\n-----Original Message-----\nFrom: s@x.com\nSent: today\n",
            "Refund please.",
        ),
        ("Thanks!\n> quoted line\n> another\nNew line after", "Thanks!\nNew line after"),
        ("Help me.\n\n-- \nJohn Smith\nACME Corp", "Help me."),
        ("Help me.\n\nBest regards,\nJohn", "Help me."),
        ("Не работает.\n\nС уважением,\nИван Петров\n+7 916 000-00-00", "Не работает."),
        (
            "Всё ещё жду.\n\n15 мая 2024 г., в 10:00, Поддержка <s@x.ru> написал(а):\n> текст",
            "Всё ещё жду.",
        ),
        (
            "Не приходит смс.\n\n-----Исходное сообщение-----\nОт: s@x.ru\nКому: a@b.ru",
            "Не приходит смс.",
        ),
        ("Sent from my iPhone", "Sent from my iPhone"),  # nothing else: keep the text
        ("From: my phone I cannot log in.", "From: my phone I cannot log in."),
    ],
)
def test_strip_quotes_and_signature(text: str, want: str) -> None:
    assert strip_quotes_and_signature(text) == want


def test_html_to_text_blocks_and_entities() -> None:
    assert html_to_text("<div>A&amp;B</div><div>C<br>D</div>") == "A&B\n\nC\nD"
    assert html_to_text("<p>unclosed <b>tag") == "unclosed tag"


@pytest.mark.parametrize(
    ("raw", "err"),
    [
        (b"", DecodeError),
        (b"Subject: no sender\r\n\r\nbody", InvalidInput),
        (b"From: not an address\r\n\r\nbody", InvalidInput),
    ],
)
def test_unusable_mail(raw: bytes, err: type[Exception]) -> None:
    with pytest.raises(err):
        parse_email(raw)
