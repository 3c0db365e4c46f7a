"""Entities routing needs, from Russian and English text.

Kinds: ``order`` (order numbers), ``store`` (a store of the directory, by code, address or
alias; value = store code), ``loyalty_card`` (card number next to a loyalty word), ``amount``
(value with ISO currency, e.g. ``1200.50 RUB``), ``date`` (ISO ``YYYY-MM-DD``; relative words
resolved against ``now``).

Store addresses are matched tolerant of Russian inflection: every word of an address or alias
is reduced to a stem (its first letters) and may take any ending, street-type words ("ул.",
"street") are optional, and the house number must match exactly. So the directory address
"ул. Садовая, 12" matches "в магазине на Садовой, 12".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from pipeline.domain.text import LowerCasePattern
from pipeline.domain.workflow import Store
from pipeline.events import Entity, Span

# ---------------------------------------------------------------- orders and cards

_ORDER_RE = re.compile(
    r"(?:заказ\w*|order|заявк\w*|посылк\w*)\s*(?:(?:№|#|no\.?|number|номер)\s*)?"
    r"(?P<v>[A-ZА-Я]{0,4}-?\d[\d-]{2,18}\d)\b",
    re.IGNORECASE,
)
_ORDER_MARK_RE = re.compile(r"(?:№|#)\s*(?P<v>\d{3,20})\b")
_CARD_RE = re.compile(
    r"(?:карт\w*|card|лояльност\w*|loyalty|бонусн\w*|club)\D{0,40}?"
    r"(?P<v>\d{4}[ -]?\d{4}[ -]?\d{4,5}(?:[ -]?\d{1,4})?|\d{8,19})\b",
    re.IGNORECASE,
)
_LOYALTY_WORD_RE = re.compile(
    r"лояльност|бонус|балл|скидочн|дисконтн|постоянного покупателя|loyalty|bonus|reward|points|"
    r"club card",
    re.IGNORECASE,
)

# ---------------------------------------------------------------- amounts

_CURRENCIES: tuple[tuple[str, str], ...] = (
    (r"руб(?:\.|л[яейь]\w*|\b)|р\.|₽|rub\b|rur\b", "RUB"),
    (r"\$|usd\b|долл\w*|dollars?\b", "USD"),
    (r"€|eur\b|евро\b|euros?\b", "EUR"),
    (r"£|gbp\b|pounds?\b|фунт\w*", "GBP"),
)
_NUM = r"\d{1,3}(?:[ \u00a0 ]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_AMOUNT_RES = [
    (
        re.compile(rf"(?P<n>{_NUM})\s*(?P<k>тыс\.?|k\b)?\s*(?:{cur})", re.IGNORECASE),
        code,
    )
    for cur, code in _CURRENCIES
] + [
    (re.compile(rf"(?:{cur})\s*(?P<n>{_NUM})(?P<k>)", re.IGNORECASE), code)
    for cur, code in _CURRENCIES
    if code != "RUB"
]

# ---------------------------------------------------------------- dates

_MONTHS = {
    "янв": 1, "фев": 2, "мар": 3, "апр": 4, "мая": 5, "май": 5, "июн": 6, "июл": 7, "авг": 8,
    "сен": 9, "окт": 10, "ноя": 11, "дек": 12,
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8,
    "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH_RE = (
    r"(?P<mon>янв\w*|фев\w*|мар\w*|апр\w*|ма[яй]|июн\w*|июл\w*|авг\w*|сен\w*|окт\w*|ноя\w*|"
    r"дек\w*|jan\w*|feb\w*|mar\w*|apr\w*|may|jun\w*|jul\w*|aug\w*|sep\w*|oct\w*|nov\w*|dec\w*)"
)
_DATE_NUMERIC_RE = re.compile(r"\b(?P<d>\d{1,2})[./](?P<m>\d{1,2})(?:[./](?P<y>\d{2,4}))?\b")
_DATE_ISO_RE = re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})\b")
_DATE_DM_RE = re.compile(
    rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_RE}\.?(?:\s+(?P<y>\d{{4}}))?",
    re.IGNORECASE,
)
_DATE_MD_RE = re.compile(
    rf"\b{_MONTH_RE}\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<y>\d{{4}}))?",
    re.IGNORECASE,
)
_RELATIVE = {
    "сегодня": 0, "today": 0, "вчера": -1, "yesterday": -1, "позавчера": -2,
    "завтра": 1, "tomorrow": 1,
}  # fmt: skip
_DIGIT_RE = re.compile(r"\d")
_RELATIVE_RE = re.compile(r"\b(?:" + "|".join(_RELATIVE) + r")\b", re.IGNORECASE)
#: Whether _RELATIVE_RE finds something, a third faster (asked of every text without a digit).
_RELATIVE_WORD = LowerCasePattern(_RELATIVE_RE.pattern)


def _to_float(raw: str) -> float:
    return float(re.sub(r"[\s\u00a0\u202f]", "", raw).replace(",", "."))


def _fmt_amount(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _year(raw: str | None, now: datetime) -> int:
    if not raw:
        return now.year
    y = int(raw)
    return y + 2000 if y < 100 else y


def _make_date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def _overlaps(span: tuple[int, int], taken: Sequence[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in taken)


def _dates(text: str, now: datetime) -> list[Entity]:
    found: list[Entity] = []
    taken: list[tuple[int, int]] = []

    def add(m: re.Match[str], value: date | None) -> None:
        if value is None or _overlaps(m.span(), taken):
            return
        taken.append(m.span())
        found.append(
            Entity(kind="date", value=value.isoformat(), span=Span(start=m.start(), end=m.end()))
        )

    for m in _DATE_ISO_RE.finditer(text):
        add(m, _make_date(int(m["y"]), int(m["m"]), int(m["d"])))
    for rx in (_DATE_DM_RE, _DATE_MD_RE):
        for m in rx.finditer(text):
            month = _MONTHS.get(m["mon"][:3].lower())
            if month:
                add(m, _make_date(_year(m["y"], now), month, int(m["d"])))
    for m in _DATE_NUMERIC_RE.finditer(text):
        # "12.5" with no year is more likely a number than a date
        if m["y"] is None and "." in m.group() and int(m["m"]) > 12:
            continue
        add(m, _make_date(_year(m["y"], now), int(m["m"]), int(m["d"])))
    for m in _RELATIVE_RE.finditer(text):
        add(m, (now + timedelta(days=_RELATIVE[m.group().lower()])).date())
    return found


# ---------------------------------------------------------------- stores

_STREET_WORDS = frozenset(
    {"ул", "улица", "пр", "пр-т", "просп", "проспект", "пер", "переулок", "пл", "площадь", "б-р",
     "бульвар", "ш", "шоссе", "наб", "набережная", "д", "дом", "street", "st", "avenue", "ave",
     "road", "rd", "square", "sq", "lane", "boulevard", "blvd"}
)  # fmt: skip
_TOKEN_RE = re.compile(r"[\w-]+")
_GAP = (
    r"[\s,.]+(?:(?:ул|улиц|пр|просп|проспект|пер|переул|пл|площад|бульв|б-р|шоссе|наб|набережн|"
    r"д|дом|street|st|avenue|ave|road|rd|square|sq|lane|boulevard|blvd|no|№)\w*\.?[\s,.]*){0,2}"
)


def _stem_pattern(word: str) -> str:
    if word.isdigit():
        return re.escape(word) + r"(?!\d)"
    w = word.lower()
    keep = len(w) if len(w) <= 4 else max(4, len(w) - 2)
    return re.escape(w[:keep]) + r"\w*"


def _phrase_pattern(phrase: str) -> str | None:
    words = [w for w in _TOKEN_RE.findall(phrase) if w.lower() not in _STREET_WORDS]
    if not words:
        return None
    return r"(?<!\w)" + _GAP.join(_stem_pattern(w) for w in words)


def _without_city(address: str, city: set[str]) -> str:
    """The address without its city (customers name the street, rarely the city too)."""
    if not city:
        return address
    return " ".join(w for w in _TOKEN_RE.findall(address) if w.lower() not in city)


class StoreMatcher:
    """The store directory compiled once. A text is only run through the regexes of stores
    whose code or a word of whose address/alias occurs in it (a dictionary look-up per word)."""

    def __init__(self, stores: Sequence[Store]) -> None:
        self.stores = tuple(stores)
        self._codes = [s.code.lower() for s in self.stores]
        self._regexes: list[re.Pattern[str]] = []
        self._by_trigger: dict[str, list[int]] = {}
        for n, store in enumerate(self.stores):
            pats = [rf"(?<![\w-]){re.escape(store.code)}(?![\w-])"]
            city = {w.lower() for w in _TOKEN_RE.findall(store.city)}
            for phrase in (_without_city(store.address, city), *store.aliases):
                p = _phrase_pattern(phrase) if phrase else None
                if p:
                    pats.append(p)
                for word in _TOKEN_RE.findall(phrase.lower()):
                    if not word.isdigit() and word not in _STREET_WORDS:
                        self._by_trigger.setdefault(word[:4], []).append(n)
            self._regexes.append(re.compile("|".join(f"(?:{p})" for p in pats), re.IGNORECASE))

    def find(self, text: str) -> list[Entity]:
        """Stores mentioned in the text (value = store code), first mention of each."""
        if not self.stores:
            return []
        low = text.lower()
        candidates = {n for n, code in enumerate(self._codes) if code in low}
        for word in _TOKEN_RE.findall(low):
            hit = self._by_trigger.get(word[:4])
            if hit:
                candidates.update(hit)
        found: list[Entity] = []
        for n in sorted(candidates):
            m = self._regexes[n].search(text)
            if m:
                span = Span(start=m.start(), end=m.end())
                found.append(Entity(kind="store", value=self.stores[n].code, span=span))
        found.sort(key=lambda e: e.span.start if e.span else 0)
        return found


def match_stores(text: str, stores: Sequence[Store] | StoreMatcher) -> list[Entity]:
    """Stores of the directory mentioned in the text (value = store code)."""
    matcher = stores if isinstance(stores, StoreMatcher) else StoreMatcher(stores)
    return matcher.find(text)


def find_store(code: str, stores: Sequence[Store]) -> Store | None:
    """The store with this code, if any."""
    return next((s for s in stores if s.code == code), None)


# ---------------------------------------------------------------- all of it


def extract_entities(
    text: str, *, stores: Sequence[Store] | StoreMatcher = (), now: datetime | None = None
) -> list[Entity]:
    """Every entity in the text, in text order. Pass a ``StoreMatcher`` when calling often."""
    now = now or datetime.now(UTC)
    found: list[Entity] = []
    taken: list[tuple[int, int]] = []
    if not _DIGIT_RE.search(text):
        # no digit: no order, card, amount or calendar date; only stores and relative dates
        found.extend(match_stores(text, stores))
        if _RELATIVE_WORD.found_in(text):
            found.extend(
                e
                for e in _dates(text, now)
                if e.span
                and not _overlaps(
                    (e.span.start, e.span.end),
                    [(x.span.start, x.span.end) for x in found if x.span],
                )
            )
        found.sort(key=lambda e: (e.span.start if e.span else -1, e.kind))
        return found

    def add(kind: str, value: str, start: int, end: int) -> None:
        taken.append((start, end))
        found.append(Entity(kind=kind, value=value, span=Span(start=start, end=end)))

    for m in _CARD_RE.finditer(text):
        window = text[max(0, m.start() - 30) : m.end()]
        if _LOYALTY_WORD_RE.search(window):
            add("loyalty_card", re.sub(r"\D", "", m["v"]), m.start("v"), m.end("v"))
    for m in _ORDER_RE.finditer(text):
        if not _overlaps(m.span("v"), taken):
            add("order", m["v"].upper(), m.start("v"), m.end("v"))
    for m in _ORDER_MARK_RE.finditer(text):
        if not _overlaps(m.span("v"), taken) and not _overlaps(m.span(), taken):
            before = text[max(0, m.start() - 20) : m.start()].lower()
            if "магазин" not in before and "store" not in before and "shop" not in before:
                add("order", m["v"], m.start("v"), m.end("v"))
    for rx, code in _AMOUNT_RES:
        for m in rx.finditer(text):
            if _overlaps(m.span(), taken):
                continue
            value = _to_float(m["n"]) * (1000 if m["k"] else 1)
            add("amount", f"{_fmt_amount(value)} {code}", m.start(), m.end())
    for ent in match_stores(text, stores):
        assert ent.span is not None
        taken.append((ent.span.start, ent.span.end))
        found.append(ent)
    for ent in _dates(text, now):
        assert ent.span is not None
        if not _overlaps((ent.span.start, ent.span.end), taken):
            found.append(ent)
    found.sort(key=lambda e: (e.span.start if e.span else -1, e.kind))
    return found
