"""E-mail reply cleaning: the quote headers, forwards and signatures real clients produce."""

from __future__ import annotations

from email.mime.text import MIMEText

import pytest

from pipeline.bus import Publisher
from pipeline.config import Settings
from pipeline.domain.tokens import reply_address, scrub_tokens
from pipeline.events import Event
from pipeline.ingest.reply_clean import clean_reply
from pipeline.ingest.service import IngestService

TOKEN = "aeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcai"
REPLY = f"reply+{TOKEN}@example.com"
NEW_RU = "Огурцы заменили, выкладку проверили."
NEW_EN = "We replaced the cucumbers and checked the shelves."
QUOTED_RU = "> Здравствуйте!\n> Клиент обратился в нашу службу поддержки…"
QUOTED_EN = "> Hello,\n> A customer contacted our support…"

#: (client, language, the quote header block as that client writes it)
HEADERS: list[tuple[str, str, str]] = [
    ("gmail", "ru", f"сб, 5 дек. 2026 г. в 16:20, Служба заботы <{REPLY}>:"),
    ("gmail-wrapped", "ru", f"сб, 5 дек. 2026 г. в 16:20, Служба заботы <\n{REPLY}>:"),
    ("gmail", "en", f"On Sat, Dec 5, 2026 at 4:20 PM Customer Care <{REPLY}> wrote:"),
    (
        "gmail-wrapped",
        "en",
        f"On Sat, Dec 5, 2026 at 4:20 PM Customer Care <\n{REPLY}> wrote:",
    ),
    ("apple", "ru", f"5 дек. 2026 г., в 16:20, Служба заботы <{REPLY}> написал(а):"),
    ("apple", "en", f"On 5 Dec 2026, at 16:20, Customer Care <{REPLY}> wrote:"),
    ("yandex", "ru", f'05.12.2026, 16:20, "Служба заботы" <{REPLY}>:'),
    ("yandex", "en", f'05.12.2026, 16:20, "Customer Care" <{REPLY}>:'),
    ("mailru", "ru", f"Суббота, 5 декабря 2026, 16:20 +03:00 от Служба заботы <{REPLY}>:"),
    ("mailru", "en", f"Saturday, 5 December 2026, 16:20 +03:00 from Customer Care <{REPLY}>:"),
    (
        "outlook",
        "ru",
        f"________________________________\nОт: Служба заботы <{REPLY}>\n"
        "Отправлено: 5 декабря 2026 г. 16:20\nКому: Директор\nТема: Запрос по обращению",
    ),
    (
        "outlook",
        "en",
        f"-----Original Message-----\nFrom: Customer Care <{REPLY}>\n"
        "Sent: Saturday, December 5, 2026 4:20 PM\nTo: Director\nSubject: Customer request",
    ),
    (
        "outlook-no-rule",
        "en",
        f"From: Customer Care <{REPLY}>\nSent: Saturday, December 5, 2026 4:20 PM\n"
        "To: Director\nSubject: Customer request",
    ),
    ("outlook-ru-rule", "ru", "-----Исходное сообщение-----\nОт: Служба заботы\nКому: Директор"),
    ("forward", "en", "---------- Forwarded message ---------\nFrom: Customer Care"),
    ("forward", "ru", "-------- Пересылаемое сообщение --------\n05.12.2026, 16:20, Служба"),
    ("forward-apple", "en", "Begin forwarded message:\n\nFrom: Customer Care"),
]


@pytest.mark.parametrize(("client", "lang", "header"), HEADERS)
def test_quote_header_cuts_the_history(client: str, lang: str, header: str) -> None:
    new = NEW_RU if lang == "ru" else NEW_EN
    quoted = QUOTED_RU if lang == "ru" else QUOTED_EN
    text = f"{new}\n\n{header}\n\n{quoted}\n"
    cleaned = clean_reply(text)
    assert cleaned == new, client
    assert TOKEN not in cleaned


SIGNATURES: list[tuple[str, str]] = [
    ("-- \nИван Петров\nДиректор магазина", "dashes"),
    ("--\nIvan Petrov", "dashes without space"),
    ("С уважением,\nИван Петров\n+7 (812) 555-01-23", "sign-off ru"),
    ("Best regards,\nIvan Petrov\nStore director", "sign-off en"),
    ("Отправлено из мобильной Почты Mail.ru", "mail.ru footer"),
    ("Отправлено с iPhone", "iphone ru"),
    ("Sent from my iPhone", "iphone en"),
    ("Get Outlook for Android", "outlook mobile"),
]


@pytest.mark.parametrize(("signature", "why"), SIGNATURES)
def test_signature_is_cut(signature: str, why: str) -> None:
    assert clean_reply(f"{NEW_RU}\n\n{signature}") == NEW_RU, why


@pytest.mark.parametrize(
    "block",
    [
        "Иван Петров\nДиректор магазина «Садовая, 12»\n+7 (812) 555-01-23",
        "Иван Петров\nдиректор",
        "Ivan Petrov\nStore Director, SPB-012\nTel. +7 812 555 01 23\nwww.example.com",
        "И. Петров, тел. 8 812 555-01-23",
        "Иван Петров",
    ],
)
def test_contact_block_without_dashes_is_cut_for_external_parties(block: str) -> None:
    assert clean_reply(f"{NEW_RU}\n\n{block}", contact_block=True) == NEW_RU
    # customers' own messages keep it: their second paragraph may be the request itself
    assert block.splitlines()[0] in clean_reply(f"{NEW_RU}\n\n{block}")


def test_director_answer_as_gmail_sends_it_is_its_first_paragraph() -> None:
    text = (
        f"{NEW_RU}\n\nИван Петров\nДиректор магазина на Садовой, 12\n+7 (812) 555-01-23\n\n"
        f"сб, 5 дек. 2026 г. в 16:20, Служба заботы <\n{REPLY}>:\n\n{QUOTED_RU}\n"
    )
    assert clean_reply(text, contact_block=True) == NEW_RU


@pytest.mark.parametrize(
    "text",
    [
        "Огурцы заменили.\n\nПоставщику направлена претензия, проверим следующую партию.",
        "We replaced them.\n\nThe supplier has been notified: the next batch will be checked.",
        "Вот что мы сделали:\n- заменили товар\n- проверили выкладку",
        "From: my phone I cannot log in.",
        "Бонусы начислены.\n\nЕсли не появятся до 10:00 завтра, напишите нам снова!",
    ],
)
def test_content_is_kept(text: str) -> None:
    assert clean_reply(text, contact_block=True) == text


def test_answer_between_quoted_lines_is_kept() -> None:
    text = "> Проверьте огурцы\nПроверили, заменили.\n> И выкладку\nВыкладку поправили."
    assert clean_reply(text) == "Проверили, заменили.\nВыкладку поправили."


def test_only_a_signature_keeps_the_text() -> None:
    assert clean_reply("Sent from my iPhone") == "Sent from my iPhone"


def test_hostile_reply_embedding_the_token_is_scrubbed() -> None:
    hostile = (
        f"Готово. Если что, пишите прямо на {REPLY} или <mailto:{REPLY}>, "
        f"токен {TOKEN}, а копию на care@example.com."
    )
    out = scrub_tokens(hostile, "example.com")
    assert TOKEN not in out and "reply+" not in out and "care@example.com" not in out
    assert out.startswith("Готово.")
    other = "Пишите на sadovaya@shop.example.org"
    assert scrub_tokens(other, "example.com") == other
    assert "reply+" not in scrub_tokens(hostile) and TOKEN not in scrub_tokens(hostile)


class _Captured(Publisher):
    """Keeps what ingest would publish (this test is about the text, not the broker)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: list[Event] = []

    async def send(self, topic: str, key: str | None, event: Event) -> None:
        self.sent.append(event)


async def test_director_answer_becomes_a_clean_task_update() -> None:
    settings = Settings(reply_domain="example.com")
    address = reply_address("sr_" + "1" * 24, "case_" + "2" * 24, settings)
    token = address.split("+", 1)[1].split("@", 1)[0]
    mail = MIMEText(
        f"{NEW_RU} Пишите на {address}\n\nИван Петров\nДиректор магазина на Садовой, 12\n"
        f"+7 (812) 555-01-23\n\nсб, 5 дек. 2026 г. в 16:20, Служба заботы <\n{address}>:\n\n"
        f"{QUOTED_RU}\n",
        "plain",
        "utf-8",
    )
    mail["From"] = "director.spb-sadovaya@example.com"
    mail["To"] = address
    mail["Subject"] = "Re: Запрос по обращению клиента"
    mail["Message-ID"] = "<d1@example.org>"
    publisher = _Captured(settings)
    result = await IngestService(settings, publisher).accept_email(mail.as_bytes(), [address])
    (update,) = result.task_updates
    assert update.resolution == f"{NEW_RU} Пишите на"
    assert token not in str(update.resolution) and "Петров" not in str(update.resolution)
    assert publisher.sent == [update]
