"""The new text of an e-mail reply: quoted history, forwarded blocks and signatures cut off.

Pure, no I/O. Written for the clients our customers and external parties use, in Russian
and English (see ``tests/unit/test_ingest_reply_clean.py`` for one sample of each):

* quote headers — Gmail ("On Sat, Dec 5, 2026 at 4:20 PM X <x@y> wrote:",
  "сб, 5 дек. 2026 г. в 16:20, X <x@y>:", wrapped over two or three lines), Apple Mail
  ("On 5 Dec 2026, at 16:20, X wrote:", "5 дек. 2026 г., в 16:20, X написал(а):"),
  Yandex ("05.12.2026, 16:20, "X" <x@y>:"), Mail.ru ("Суббота, 5 декабря 2026, 16:20 +03:00
  от X <x@y>:"), Outlook ("-----Original Message-----", a "From:/Sent:/To:/Subject:" or
  "От:/Отправлено:/Кому:/Тема:" block, the "_____" rule before it);
* forwarded blocks ("---------- Forwarded message ---------", "Пересылаемое сообщение",
  "Begin forwarded message:");
* ``>``-quoted lines (an answer written between quoted lines is kept);
* signatures: after "-- ", after a sign-off ("С уважением,", "Best regards,") with a short
  tail, mobile footers ("Sent from my iPhone", "Отправлено из мобильной Почты Mail.ru"), and —
  with ``contact_block=True``, for external parties' answers — a trailing block of short
  lines with a name, a job title, a phone or an address and no "-- " before it.

No maintained library covers this: mail-parser-reply (MIT) knows 13 languages but not
Russian, email-reply-parser (MIT, GitHub's port) and quotequail (MIT) only the English
"On … wrote:" forms; ``bench/email_reply_clean.py`` runs all of them on the same samples.

``pipeline.domain.tokens.scrub_tokens`` then removes our ``reply+TOKEN@`` addresses and bare
tokens, so an answer that embeds them (a quote header we did not recognise, a hostile copy)
cannot hand the token to the customer.
"""

from __future__ import annotations

import re

__all__ = ["clean_reply"]

_MONTH = (
    r"(?:янв|фев|мар|апр|ма[йя]|июн|июл|авг|сен|окт|ноя|дек"
    r"|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-zа-яё]*\.?"
)
_DATE = re.compile(
    rf"\d{{1,2}}[./-]\d{{1,2}}[./-]\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}}"
    rf"|\b\d{{1,2}}\s+{_MONTH}|\b{_MONTH}\s+\d{{1,2}}\b",
    re.IGNORECASE,
)
_TIME = re.compile(r"\b\d{1,2}:\d{2}\b")
_ADDRESS = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")
_WROTE = re.compile(
    r"\b(wrote|writes|написал[аи]?|написал\(а\)|пишет|schrieb|a écrit)\s*:?\s*$", re.IGNORECASE
)
_FROM_WORD = re.compile(r"(?:^|[\s,])(от|from)\s", re.IGNORECASE)

_SEPARATOR = re.compile(
    r"^\s*(?:-{2,}|_{2,}|={2,})?\s*("
    r"original message|forwarded message|исходное сообщение|пересылаемое сообщение"
    r"|пересланное сообщение|переадресованное сообщение"
    r")\s*(?:-{2,}|_{2,}|={2,})?\s*:?\s*$"
    r"|^\s*(begin forwarded message|начало переадресованного сообщения)\s*:\s*$"
    r"|^\s*_{10,}\s*$",
    re.IGNORECASE,
)
_HEADER_KEYS = ("from:", "sent:", "date:", "to:", "subject:", "от:", "отправлено:", "дата:")
_HEADER_KEYS_ALL = (*_HEADER_KEYS, "кому:", "тема:", "cc:", "копия:")

_DASHES = re.compile(r"^\s*(--|—|–)\s*$")
_SIGN_OFF = re.compile(
    r"^\s*("
    r"с уважением|с наилучшими пожеланиями|всего доброго|всего хорошего|с благодарностью"
    r"|best regards|kind regards|warm regards|regards|sincerely|cheers|best wishes|best"
    r")[\s,.!]*$",
    re.IGNORECASE,
)
_MOBILE_FOOTER = re.compile(
    r"^\s*(sent from my \w+|sent from (yandex|mail\.ru|outlook)\b|get outlook for \w+"
    r"|отправлено (с|из) .{0,40}$|получено с помощью|sent with \w+)",
    re.IGNORECASE,
)
_PHONE = re.compile(r"(?:\+|\b)\d[\d ()\-]{8,}\d\b")
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)
_TITLE = re.compile(
    r"\b(директор|управляющ|менеджер|руководител|администратор|специалист|начальник"
    r"|заведующ|заместител|тел\b|тел\.|моб\.|director|manager|head of|supervisor|specialist"
    r"|officer|tel\b|tel\.|phone|mob\.|mobile)",
    re.IGNORECASE,
)
_NAME = re.compile(r"^[A-ZА-ЯЁ][a-zа-яё]+(?:[ -][A-ZА-ЯЁ][a-zа-яё.]+){0,2}$")
_MAX_HEADER_CHARS = 400


def _is_attribution(text: str) -> bool:
    """An "X wrote:" line in any of the forms the clients produce (possibly joined)."""
    line = text.strip()
    if not line.endswith(":") or len(line) > _MAX_HEADER_CHARS:
        return False
    if _WROTE.search(line) and (
        line.lower().startswith("on ") or _DATE.search(line) or "@" in line
    ):
        return True
    dated = bool(_DATE.search(line)) and bool(_TIME.search(line))
    if dated and (_ADDRESS.search(line) or _FROM_WORD.search(line) or _WROTE.search(line)):
        return True
    return bool(_WROTE.search(line)) and len(line) <= 200


def _is_header_block(lines: list[str], i: int) -> bool:
    """An Outlook-style From/Sent/To/Subject block starting at line ``i``."""
    first = lines[i].strip().lower()
    if not first.startswith(_HEADER_KEYS):
        return False
    window = [ln.strip().lower() for ln in lines[i : i + 6]]
    return sum(any(ln.startswith(k) for k in _HEADER_KEYS_ALL) for ln in window) >= 2


def _quote_starts(lines: list[str], i: int) -> bool:
    if _SEPARATOR.match(lines[i]) or _is_header_block(lines, i):
        return True
    # Gmail and Outlook wrap long attribution lines: try the line joined with the next two.
    head = lines[i].strip()
    for k in (1, 2, 3):
        window = lines[i : i + k]
        if i + k > len(lines) or not all(ln.strip() for ln in window):
            break
        if k > 1 and not (_DATE.search(head) or head.lower().startswith("on ")):
            break  # only a header's own first line is continued, never a sentence before it
        joined = " ".join(ln.strip() for ln in window)
        if lines[i + k - 1].rstrip().endswith(":") and _is_attribution(joined):
            return True
    return False


def _paragraphs(lines: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            out[-1].append(line)
        elif out[-1]:
            out.append([])
    return [p for p in out if p]


def _is_contact_block(par: list[str]) -> bool:
    """A paragraph of a name, a title, a phone, an address — a signature without "-- "."""
    if not 1 <= len(par) <= 6 or any(len(ln.strip()) > 80 for ln in par):
        return False
    if any(ln.rstrip().endswith(("?", "!")) for ln in par):
        return False
    text = "\n".join(par)
    contact = bool(_PHONE.search(text) or _ADDRESS.search(text) or _URL.search(text))
    titled = any(_TITLE.search(ln) for ln in par)
    named = bool(_NAME.match(par[0].strip().rstrip(",")))
    sentences = sum(ln.rstrip().endswith(".") and not _PHONE.search(ln) for ln in par)
    return (contact or titled or (named and len(par) <= 3)) and sentences == 0


def _short_tail(lines: list[str], i: int) -> bool:
    # A sign-off only counts when little follows it (a name, a phone, a title).
    rest = [line for line in lines[i + 1 :] if line.strip()]
    return len(rest) <= 6 and sum(len(line) for line in rest) <= 400


def clean_reply(text: str, *, contact_block: bool = False) -> str:
    """The new part of a reply: no quoted history, forwarded block or signature.

    ``contact_block``: also drop a trailing block that looks like a signature without a
    "-- " line (name, title, phone); meant for external parties' answers, whose text goes
    to the customer. When nothing would be left, the text is returned stripped as it was.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith(">"):
            continue
        if _quote_starts(lines, i):
            break
        if _DASHES.match(line) or _MOBILE_FOOTER.match(line):
            break
        if _SIGN_OFF.match(line) and _short_tail(lines, i):
            break
        out.append(line)
    if contact_block:
        pars = _paragraphs(out)
        while len(pars) > 1 and _is_contact_block(pars[-1]):
            pars.pop()
        out = ["\n".join(p) + "\n" for p in pars]
    result = "\n".join(out).strip()
    return result if result else text.strip()
