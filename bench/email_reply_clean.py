"""Reply cleaning: our cleaner against maintained libraries on the same ru/en samples.

Each sample is a short new text followed by a quote header (as Gmail, Apple Mail, Yandex,
Mail.ru or Outlook write it), a forwarded block or a signature; a cleaner is right when
it returns exactly the new text. Libraries that are not installed are reported as such::

    python -m venv /tmp/cmp && /tmp/cmp/bin/pip install mail-parser-reply \
        email-reply-parser quotequail
    PYTHONPATH=/tmp/cmp/lib/python3.11/site-packages python bench/email_reply_clean.py
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from pipeline.ingest.reply_clean import clean_reply

REPLY = "reply+aeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcai@example.com"
NEW = {"ru": "Огурцы заменили, выкладку проверили.", "en": "We replaced the cucumbers."}
QUOTED = {"ru": "> Здравствуйте!\n> Клиент обратился…", "en": "> Hello,\n> A customer wrote…"}
HEADERS: dict[str, dict[str, str]] = {
    "gmail": {
        "ru": f"сб, 5 дек. 2026 г. в 16:20, Служба заботы <{REPLY}>:",
        "en": f"On Sat, Dec 5, 2026 at 4:20 PM Care <{REPLY}> wrote:",
    },
    "gmail-wrapped": {
        "ru": f"сб, 5 дек. 2026 г. в 16:20, Служба заботы <\n{REPLY}>:",
        "en": f"On Sat, Dec 5, 2026 at 4:20 PM Care <\n{REPLY}> wrote:",
    },
    "apple": {
        "ru": f"5 дек. 2026 г., в 16:20, Служба заботы <{REPLY}> написал(а):",
        "en": f"On 5 Dec 2026, at 16:20, Care <{REPLY}> wrote:",
    },
    "yandex": {
        "ru": f'05.12.2026, 16:20, "Служба заботы" <{REPLY}>:',
        "en": f'05.12.2026, 16:20, "Care" <{REPLY}>:',
    },
    "mailru": {
        "ru": f"Суббота, 5 декабря 2026, 16:20 +03:00 от Служба заботы <{REPLY}>:",
        "en": f"Saturday, 5 December 2026, 16:20 +03:00 from Care <{REPLY}>:",
    },
    "outlook": {
        "ru": f"-----Исходное сообщение-----\nОт: Служба заботы <{REPLY}>\n"
        "Отправлено: 5 декабря 2026 г. 16:20\nКому: Директор\nТема: Запрос",
        "en": f"-----Original Message-----\nFrom: Care <{REPLY}>\n"
        "Sent: Saturday, December 5, 2026 4:20 PM\nTo: Director\nSubject: Request",
    },
    "forward": {
        "ru": "-------- Пересылаемое сообщение --------\nОт: Служба заботы",
        "en": "---------- Forwarded message ---------\nFrom: Care",
    },
    "signature-dashes": {"ru": "-- \nИван Петров\nДиректор", "en": "-- \nIvan Petrov\nDirector"},
    "signature-sign-off": {
        "ru": "С уважением,\nИван Петров\n+7 812 555-01-23",
        "en": "Best regards,\nIvan Petrov\n+7 812 555-01-23",
    },
    "signature-no-dashes": {
        "ru": "Иван Петров\nДиректор магазина\n+7 (812) 555-01-23",
        "en": "Ivan Petrov\nStore director\n+7 (812) 555-01-23",
    },
}


def _samples() -> list[tuple[str, str, str]]:
    out = []
    for client, langs in HEADERS.items():
        for lang, header in langs.items():
            tail = f"\n\n{QUOTED[lang]}\n" if not client.startswith("signature") else "\n"
            out.append((f"{client}/{lang}", f"{NEW[lang]}\n\n{header}{tail}", NEW[lang]))
    return out


def _cleaners() -> dict[str, Callable[[str], str] | str]:
    found: dict[str, Callable[[str], str] | str] = {
        "care-router clean_reply": lambda t: clean_reply(t, contact_block=True)
    }
    try:
        mpr = importlib.import_module("mailparser_reply")
        parser = mpr.EmailReplyParser(languages=["en", "de", "fr"])
        found["mail-parser-reply"] = lambda t: str(parser.read(t).replies[0].body)
    except ImportError:
        found["mail-parser-reply"] = "not installed"
    try:
        erp = importlib.import_module("email_reply_parser")
        found["email-reply-parser"] = lambda t: str(erp.EmailReplyParser.parse_reply(t))
    except ImportError:
        found["email-reply-parser"] = "not installed"
    try:
        qq = importlib.import_module("quotequail")
        found["quotequail"] = lambda t: "\n".join(str(text) for new, text in qq.quote(t) if new)
    except ImportError:
        found["quotequail"] = "not installed"
    return found


def main() -> None:
    """Print, per cleaner, how many samples it cuts to exactly the new text (ru, en)."""
    samples = _samples()
    for name, cleaner in _cleaners().items():
        if isinstance(cleaner, str):
            sys.stdout.write(f"{name:26s} {cleaner}\n")
            continue
        right: dict[str, int] = {"ru": 0, "en": 0}
        wrong: list[str] = []
        for label, text, want in samples:
            try:
                got = cleaner(text).strip()
            except Exception as exc:  # noqa: BLE001 — a library's failure is a wrong answer
                got = f"<{type(exc).__name__}>"
            if got == want:
                right[label.rsplit("/", 1)[1]] += 1
            else:
                wrong.append(label)
        per = len(samples) // 2
        sys.stdout.write(
            f"{name:26s} ru {right['ru']}/{per}  en {right['en']}/{per}  "
            f"wrong: {', '.join(wrong) or '-'}\n"
        )


if __name__ == "__main__":
    main()
