"""Masking of personal data before text leaves the company (e-mails to external parties).

Detection is the ingest stage's ``find_pii`` (cards with a Luhn check, phones, e-mails),
re-exported here so notify and ingest agree on what personal data is. Masking keeps
just enough for a human to refer to the item: the last 4 digits of a card, the last 2 of
a phone, the first letter and the domain of an e-mail.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from pipeline.domain.text import find_pii, normalize_email, normalize_phone
from pipeline.events import PiiSpan

__all__ = ["DEFAULT_KINDS", "find_pii", "mask_card", "mask_email", "mask_phone", "redact"]

DEFAULT_KINDS: tuple[str, ...] = ("card", "phone", "email")

_MASK = "*"


def _mask_digits(raw: str, keep_last: int) -> str:
    """Replace every digit but the last ``keep_last`` by ``*``, keeping the layout."""
    total = sum(ch.isdigit() for ch in raw)
    seen = 0
    out: list[str] = []
    for ch in raw:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - keep_last else _MASK)
        else:
            out.append(ch)
    return "".join(out)


def mask_card(raw: str) -> str:
    """``4276 1600 1234 5678`` → ``**** **** **** 5678``."""
    return _mask_digits(raw, 4)


def mask_phone(raw: str) -> str:
    """``+7 916 123-45-67`` → ``+* *** ***-**-67``."""
    return _mask_digits(raw, 2)


def mask_email(raw: str) -> str:
    """``ivan.petrov@mail.ru`` → ``i***@mail.ru``."""
    local, _, domain = raw.partition("@")
    return f"{local[:1]}***@{domain}"


_MASKERS = {"card": mask_card, "phone": mask_phone, "email": mask_email}


def _kept(span: PiiSpan, raw: str, keep: Collection[str]) -> bool:
    if not keep or span.kind == "card":
        return False
    normal = normalize_phone(raw) if span.kind == "phone" else normalize_email(raw)
    return normal is not None and normal in keep


def redact(
    text: str,
    spans: Iterable[PiiSpan] | None = None,
    kinds: Collection[str] = DEFAULT_KINDS,
    *,
    keep: Collection[str] = (),
) -> str:
    """``text`` with the personal data in ``spans`` (found here when None) masked.

    ``kinds`` selects what to mask; ``keep`` lists normalized phones (E.164) and
    lower-cased e-mails that may stay visible, e.g. a store's own contact. Spans that
    overlap an earlier one or fall outside the text are ignored.
    """
    found = find_pii(text) if spans is None else list(spans)
    out: list[str] = []
    pos = 0
    for span in sorted(found, key=lambda s: (s.start, s.end)):
        if span.kind not in kinds or span.start < pos or span.end > len(text):
            continue
        raw = text[span.start : span.end]
        if _kept(span, raw, keep):
            continue
        out.append(text[pos : span.start])
        out.append(_MASKERS[span.kind](raw))
        pos = span.end
    out.append(text[pos:])
    return "".join(out)
