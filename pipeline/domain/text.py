"""Pure normalization helpers shared by every channel adapter.

Phones become E.164 (libphonenumber's metadata through ``phonenumbers``; Russian numbers by
default), e-mails are lower-cased, text is cleaned (NFC, invisible and control characters
removed, whitespace collapsed), the language is guessed (ru / en / other) from the script
and common words, and personal data (payment cards with a Luhn check,
phones, e-mails) is located as character spans so later stages can redact it.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from functools import lru_cache

import phonenumbers

from pipeline.errors import InvalidInput
from pipeline.events import Channel, Identity, PiiSpan

__all__ = [
    "LowerCasePattern",
    "canonical_channel",
    "clean_text",
    "detect_language",
    "find_pii",
    "fold",
    "is_ascii_or_cyrillic",
    "is_not_helped",
    "luhn_ok",
    "model_language",
    "normalize_email",
    "normalize_identity",
    "normalize_phone",
    "parse_timestamp",
    "truncate",
]

_CHANNEL_ALIASES: dict[str, Channel] = {
    "tg": Channel.telegram,
    "twilio": Channel.sms,
    "ivr": Channel.voice,
    "phone": Channel.voice,
    "call": Channel.voice,
    "voicemail": Channel.voice,
    "mail": Channel.email,
    "e-mail": Channel.email,
    "chat": Channel.webchat,
    "web_chat": Channel.webchat,
    "form": Channel.webform,
    "web_form": Channel.webform,
}


def canonical_channel(name: str) -> Channel:
    """Map a channel name or common alias to the canonical Channel."""
    key = name.strip().lower()
    try:
        return Channel(key)
    except ValueError:
        if key in _CHANNEL_ALIASES:
            return _CHANNEL_ALIASES[key]
        raise InvalidInput(f"unknown channel {name[:40]!r}", field="channel") from None


# ---------------------------------------------------------------- identities

_PHONE_PREFIXES = ("tel:", "whatsapp:", "sms:")


@lru_cache(maxsize=8192)  # libphonenumber takes ~0.1 ms a number; customers repeat theirs
def normalize_phone(raw: str, default_region: str = "RU") -> str | None:
    """E.164 form of a valid phone number, or None.

    libphonenumber's metadata (the ``phonenumbers`` package) decides with every country's
    numbering plan: ``8 916 123-45-67`` and ``9161234567`` are Russian (+7) mobiles by the
    default region, ``+44 20 7946 0958`` / ``0044 20 7946 0958`` keep their country. A
    number written without a country must be valid in the default region; one written with
    ``+CC`` needs only the right length for that country (a newly opened range, a test or
    fiction range such as UK 07700 900xxx is still someone's address). Twilio-style
    ``tel:``/``whatsapp:``/``sms:`` prefixes go; digits other than ASCII are refused.
    """
    s = raw.strip()
    for prefix in _PHONE_PREFIXES:
        if s.lower().startswith(prefix):
            s = s[len(prefix) :]
    if not s or len(s) > 64 or any(ch.isdigit() and not ch.isascii() for ch in s):
        return None
    if s.startswith("00"):  # the international prefix most of the world dials
        s = "+" + s[2:]
    try:
        number = phonenumbers.parse(s, default_region)
    except phonenumbers.NumberParseException:
        return None
    international = s.startswith("+")
    possible = phonenumbers.is_possible_number_with_reason(number)
    if not phonenumbers.is_valid_number(number) and not (
        international and possible == phonenumbers.ValidationResult.IS_POSSIBLE
    ):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_EMAIL_RE = re.compile(
    r"^[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251})\.[A-Za-z]{2,63}$"
)


def normalize_email(raw: str) -> str | None:
    """Lower-cased address, or None when it is not a plausible e-mail address."""
    s = raw.strip().strip("<>").strip().lower()
    if not _EMAIL_RE.match(s) or ".." in s.split("@", 1)[1]:
        return None
    return s


def normalize_identity(kind: str, value: str) -> Identity:
    """One Identity with its value normalized; InvalidInput when it is not usable."""
    field = f"customer.{kind}"
    if kind == "phone":
        phone = normalize_phone(value)
        if phone is None:
            raise InvalidInput(f"not a phone number: {value[:40]!r}", field=field)
        return Identity(kind="phone", value=phone)
    if kind == "email":
        email = normalize_email(value)
        if email is None:
            raise InvalidInput(f"not an e-mail address: {value[:60]!r}", field=field)
        return Identity(kind="email", value=email)
    if kind not in ("telegram", "chatwoot", "webchat", "social", "other"):
        raise InvalidInput(f"unknown identity kind {kind!r}", field=field)
    cleaned = clean_text(value).strip()
    if not cleaned or len(cleaned) > 320:
        raise InvalidInput(f"empty or too long {kind} id", field=field)
    return Identity(kind=kind, value=cleaned)


# ---------------------------------------------------------------- text

# Zero-width, bidi controls, BOM, soft hyphen, word joiners, invisible operators.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb]"
)
_HSPACE = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """NFC, no invisible or control characters, collapsed whitespace, at most one blank line."""
    t = unicodedata.normalize("NFC", text)
    t = t.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    t = _INVISIBLE.sub("", t)
    # Control characters (Cc) other than newline/tab, plus unassigned/surrogates/private use.
    t = "".join(
        ch for ch in t if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs", "Co", "Cn")
    )
    t = _HSPACE.sub(" ", t)
    t = "\n".join(line.strip() for line in t.split("\n"))
    t = _MANY_NEWLINES.sub("\n\n", t)
    return t.strip()


def truncate(text: str, max_chars: int) -> tuple[str, bool]:
    """Text cut to ``max_chars`` (at a word boundary when one is near) and whether it was cut."""
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    space = cut.rfind(" ", max(0, max_chars - 40))
    if space > 0:
        cut = cut[:space]
    return cut.rstrip(), True


# ---------------------------------------------------------------- language

_RU_WORDS = frozenset(
    re.split(
        r"\s+",
        "и в не на я что с по как это но а у к за из мне меня мой моя мои вы вас ваш ваша "
        "здравствуйте добрый день спасибо пожалуйста заказ карта карты деньги не могу можно "
        "нет да уже ещё еще когда где почему помогите прошу был была было были есть так "
        "если чтобы до после от для при о об все всё очень",
    )
)
_EN_WORDS = frozenset(
    re.split(
        r"\s+",
        "the a an and or to of in on is are was were i my me you your it this that for with "
        "not can't cannot can please hello hi thanks thank order card money help how what "
        "when where why have has do does did be been from at by no yes would could",
    )
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
#: The languages the models and templates know.
MODEL_LANGUAGES = ("ru", "en")


#: Runs of Cyrillic and Cyrillic Supplement letters (runs: far fewer matches than letters).
_CYRILLIC = re.compile("[\u0400-\u052f]+")


#: The ASCII characters that are not letters (``str.isalpha``).
_ASCII_NON_LETTERS = bytes(c for c in range(128) if not chr(c).isalpha())
#: ``_WORD`` on lower-case ASCII text.
_ASCII_WORD = re.compile(r"[a-z]+")
#: Letters of Cyrillic alphabets that Russian lacks.
_FOREIGN_CYRILLIC = "іїєґўђјљњћџ"


def _letters(text: str) -> str:
    if text.isascii():  # most texts: the other characters dropped in C, not tested one by one
        return text.encode("ascii").translate(None, _ASCII_NON_LETTERS).decode("ascii")
    return "".join(filter(str.isalpha, text))


def _lower_words(text: str) -> list[str]:
    """``_WORD``'s words of ``text``, lower-cased."""
    if text.isascii():  # _WORD's letters are [A-Za-z] here: lower-casing first finds the same
        return _ASCII_WORD.findall(text.lower())
    return [w.lower() for w in _WORD.findall(text)]


def _scripts(letters: str) -> tuple[int, int]:
    """(Cyrillic letters, Latin letters) among ``letters`` (counted in C: the classifier
    asks for the language of every text and segment it reads)."""
    if letters.isascii():  # most texts: no Cyrillic letter to count
        return 0, len(letters)
    return sum(map(len, _CYRILLIC.findall(letters))), len(letters.encode("ascii", "ignore"))


def detect_language(text: str) -> tuple[str, float]:
    """('ru' | 'en' | 'other', confidence in [0, 1]) from script counts and common words.

    The one language detector: ingest stamps its answer on every message.
    """
    letters = _letters(text)
    if not letters:
        return "other", 0.0
    cyr, lat = _scripts(letters)
    n = len(letters)
    # Length factor: one word is weak evidence, a sentence is strong.
    length = min(1.0, 0.5 + n / 60)
    # the common words are counted only in the branch that uses them
    if cyr / n >= 0.5:
        # Cyrillic but not Russian (Ukrainian/Serbian/...) shows letters Russian lacks.
        # each letter lower-cases alone, so counting in the lower-cased letters (in C) is
        # the same as lower-casing and testing every letter (tests/unit/test_language.py)
        lowered = letters.lower()
        foreign = sum(map(lowered.count, _FOREIGN_CYRILLIC))
        if foreign / max(cyr, 1) > 0.02:
            return "other", round(min(0.9, 0.5 + foreign / cyr), 3)
        ru_hit = not _RU_WORDS.isdisjoint(map(str.lower, _WORD.findall(text)))
        conf = (cyr / n) * length + (0.1 if ru_hit else 0.0)
        return "ru", round(min(0.99, conf), 3)
    if lat / n >= 0.5:
        words = _lower_words(text)
        en_hits = sum(map(_EN_WORDS.__contains__, words))
        share = en_hits / max(len(words), 1)
        if en_hits == 0 and len(words) >= 4:
            return "other", round(min(0.8, 0.3 + len(words) / 40), 3)
        conf = (lat / n) * length * (0.75 + min(share, 0.25))
        return "en", round(min(0.99, conf), 3)
    return "other", round(min(0.95, 1 - (cyr + lat) / n), 3)


def model_language(text: str, declared: str | None = None) -> str:
    """The language a ru/en model (classifier, KB) reads ``text`` in.

    ``declared`` (the detector's answer stamped by ingest) when it is ru or en; otherwise the
    alphabet with more letters in the text (Cyrillic → ru, ties too; Latin → en), so a message
    detected as 'other' (Ukrainian, a bare order number with one word) is still read by the
    closer model; 'other' when the text has no Cyrillic or Latin letter at all.
    """
    if declared in MODEL_LANGUAGES:
        return declared
    cyr, lat = _scripts(_letters(text))
    if cyr == 0 and lat == 0:
        return "other"
    return "ru" if cyr >= lat else "en"


# ---------------------------------------------------------------- matching

_WS = re.compile(r"\s+")


def fold(text: str) -> str:
    """Text for matching: NFKC, case-folded, ё → е, whitespace collapsed."""
    t = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
    return _WS.sub(" ", t).strip()


#: Every character ASCII or basic Cyrillic (U+0400-U+04FF). On such text re.IGNORECASE
#: matches a letter exactly when the text's lower() has the pattern's letter there; elsewhere it
#: also matches the likes of 'ſ', 'K' (Kelvin), 'ı', 'ᲀ', 'İ'.
_ASCII_OR_CYRILLIC = re.compile(r"[\x00-\x7f\u0400-\u04ff]*")


def is_ascii_or_cyrillic(text: str) -> bool:
    """Whether a lower-case pattern compiled without re.IGNORECASE finds in ``text.lower()``
    exactly what it finds in ``text`` with it. Worth asking: IGNORECASE turns off sre's skip to
    the branches' first letters (a search ~3-7 times slower)."""
    return _ASCII_OR_CYRILLIC.fullmatch(text) is not None


class LowerCasePattern:
    """A lower-case ASCII/Cyrillic pattern searched as with re.IGNORECASE, faster.

    IGNORECASE turns off sre's skip to the branches' first letters (the follow-up checks on a
    bench text: 9.9 -> 1.4 us, 12.5 -> 5.2 us with ``fold``). Where every character of the
    text is ASCII or basic Cyrillic the pattern without it searches ``text.lower()`` and finds
    the same (``is_ascii_or_cyrillic``); any other text takes the IGNORECASE search, which
    also matches the likes of 'ſ', 'K' (Kelvin), 'ı', 'ᲀ', 'İ' to the pattern's letters
    (tests/unit/test_lower_case_search.py).
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.plain = re.compile(pattern)
        self.ignorecase = re.compile(pattern, re.IGNORECASE)

    def found_in(self, text: str) -> bool:
        """Whether ``re.search(pattern, text, re.IGNORECASE)`` finds something."""
        if is_ascii_or_cyrillic(text):
            return self.plain.search(text.lower()) is not None
        return self.ignorecase.search(text) is not None


_NOT_HELPED = LowerCasePattern(
    r"не\s+(?:помогл[оа]?|помогает|помог|сработал[оа]?|работает|получ(?:ил|ается)ось?|"
    r"решил[оа]?|решена|решен)|"
    r"(?:по-?прежнему|вс[её]\s+(?:ещ[её]|равно)|опять|снова)\s+не\s+\w+|"
    r"бесполезн|без\s+толку|не\s+то\b|"
    r"did\s*n[o']?t\s+(?:help|work|solve|fix)|did\s+not\s+(?:help|work|solve|fix)|"
    r"does\s*n[o']?t\s+(?:help|work)|does\s+not\s+(?:help|work)|"
    r"(?:still|again)\s+(?:not|doesn'?t|does\s+not|can'?t|cannot|isn'?t|won'?t)\b|"
    r"not\s+(?:helpful|working|solved|fixed)|no\s+help|useless|"
    r"(?:problem|issue)\s+(?:is\s+)?(?:still|not)\s+(?:there|solved|fixed|resolved)|"
    r"that'?s\s+not\s+what\s+i"
)


def is_not_helped(text: str, language: str = "other") -> bool:
    """The customer says the answer did not help ("не помогло", "still not working")."""
    del language  # both languages are matched: customers switch language mid-thread
    return _NOT_HELPED.found_in(fold(text))


# ---------------------------------------------------------------- time


def parse_timestamp(value: object, field: str) -> datetime:
    """A UTC datetime from ISO 8601 text or Unix seconds; naive times are taken as UTC."""
    if isinstance(value, bool):
        raise InvalidInput("timestamp must be ISO 8601 text or Unix seconds", field=field)
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidInput(f"timestamp out of range: {value!r}", field=field) from exc
    if not isinstance(value, str):
        raise InvalidInput("timestamp must be ISO 8601 text or Unix seconds", field=field)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"not an ISO 8601 timestamp: {value[:40]!r}", field=field) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"timestamp out of range: {value[:40]!r}", field=field) from exc


# ---------------------------------------------------------------- PII

_CARD_RE = re.compile(r"(?<![\d\w])\d(?:[ -]?\d){12,18}(?![\d\w])")
_PHONE_RE = re.compile(r"(?<![\w+])(?:\+|00)?\d[\d \t().\-]{6,18}\d(?![\w])")
_EMAIL_FIND = re.compile(r"[\w.+\-]{1,64}@[\w\-]+(?:\.[\w\-]+)*\.[A-Za-z]{2,63}")


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a string of ASCII digits."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_pii(text: str) -> list[PiiSpan]:
    """Card numbers (13–19 digits passing Luhn), phone numbers and e-mails, as sorted spans."""
    spans: list[PiiSpan] = []
    taken: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    for m in _EMAIL_FIND.finditer(text):
        spans.append(PiiSpan(start=m.start(), end=m.end(), kind="email"))
        taken.append((m.start(), m.end()))
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and free(m.start(), m.end()):
            spans.append(PiiSpan(start=m.start(), end=m.end(), kind="card"))
            taken.append((m.start(), m.end()))
    for m in _PHONE_RE.finditer(text):
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        if len(digits) < 10 or not free(m.start(), m.end()):
            continue
        if normalize_phone(raw) is not None:
            spans.append(PiiSpan(start=m.start(), end=m.end(), kind="phone"))
            taken.append((m.start(), m.end()))
    return sorted(spans, key=lambda s: s.start)
