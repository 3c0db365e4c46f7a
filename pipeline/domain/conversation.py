"""What a short customer message does in a conversation: thanks, a status question, a case number.

Pure text helpers (ru/en) for the case lifecycle: small talk after an answer is
acknowledged, not routed; "ну что там?" continues the open case instead of opening one.
"""

from __future__ import annotations

import re

from pipeline.domain.text import LowerCasePattern

__all__ = [
    "FOLLOW_UP_MAX_CHARS",
    "SMALL_TALK_MAX_CHARS",
    "is_small_talk",
    "is_status_question",
    "mentions_case_ref",
]

SMALL_TALK_MAX_CHARS = 80
FOLLOW_UP_MAX_CHARS = 160

_SMALL_TALK_WORDS = frozenset(
    (
        "спасибо",
        "спасиб",
        "благодарю",
        "благодарим",
        "спс",
        "пасиб",
        "ок",
        "окей",
        "ok",
        "okay",
        "хорошо",
        "понятно",
        "понял",
        "поняла",
        "ясно",
        "отлично",
        "супер",
        "класс",
        "здорово",
        "замечательно",
        "прекрасно",
        "всё",
        "все",
        "ясно",
        "ага",
        "угу",
        "да",
        "ладно",
        "большое",
        "огромное",
        "вам",
        "тебе",
        "вы",
        "молодцы",
        "молодец",
        "и",
        "за",
        "помощь",
        "ответ",
        "оперативность",
        "thanks",
        "thank",
        "you",
        "thx",
        "ty",
        "great",
        "perfect",
        "cool",
        "fine",
        "got",
        "it",
        "alright",
        "all",
        "right",
        "nice",
        "awesome",
        "much",
        "so",
        "very",
        "for",
        "the",
        "help",
        "your",
        "a",
        "lot",
        "good",
        "cheers",
        "excellent",
        "wonderful",
        "yes",
        "sure",
        "хорошего",
        "дня",
        "всего",
        "доброго",
        "добрый",
        "день",
        "have",
        "nice",
        "day",
    )
)
_WORD = re.compile(r"[a-zа-яё']+", re.IGNORECASE)
_THANKS = re.compile(r"спасиб|благодар|\bспс\b|thank|\bthx\b|\bty\b|👍|🙏|❤", re.IGNORECASE)
_ACK = re.compile(r"^\W*(ок|окей|ok|okay|хорошо|понятно|ясно|отлично|great|perfect|got it)\W*$")

_STATUS = LowerCasePattern(
    r"ну\s+что\s+там|что\s+там\s+с|как\s+там|когда\s+(?:вы\s+)?(?:ответите|решите|будет|вернете|"
    r"вернёте|начислите|спишете)|так\s+и\s+не|до\s+сих\s+пор|всё\s+ещё|все\s+еще|есть\s+новости|"
    r"почему\s+(?:вы\s+)?отказ|почему\s+не\s+(?:вернули|начислили|списали|решили)|какой\s+статус|статус\s+(?:обращения|заявки)|жду\s+ответа|"
    r"any\s+(?:news|update)|still\s+(?:waiting|not)|what'?s\s+the\s+status|when\s+will\s+you|"
    r"is\s+there\s+an?\s+update|haven'?t\s+heard|why\s+(?:was\s+it|did\s+you|were\s+we)\s+"
    r"(?:reject|declin|refus)"
)


def is_small_talk(text: str) -> bool:
    """Thanks, "ок", "всё отлично" — a short message that asks for nothing."""
    t = text.strip()
    if not t or len(t) > SMALL_TALK_MAX_CHARS or "?" in t:
        return False
    words = [w.lower() for w in _WORD.findall(t)]
    if not words:
        return bool(_THANKS.search(t))  # an emoji alone
    known = sum(w in _SMALL_TALK_WORDS for w in words)
    # the word count first: it rules out nearly every request without the two regexes
    return known >= len(words) - 1 and (bool(_THANKS.search(t)) or bool(_ACK.match(t.lower())))


def is_status_question(text: str) -> bool:
    """A short "any news?" about a request already made ("Ну что там с моими бонусами?")."""
    t = text.strip()
    return 0 < len(t) <= FOLLOW_UP_MAX_CHARS and _STATUS.found_in(t)


def mentions_case_ref(text: str, ref: str) -> bool:
    """Whether the text quotes a case reference (``cases.case_ref``), e.g. "№ 1A2B3C4D"."""
    if not ref or ref.lower() not in text.lower():
        # The regex (compiled per reference: a cache miss for nearly every case) only when the
        # reference is there at all: it took a fifth of the route agent's time.
        return False
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(ref)}(?![0-9A-Za-z])", text, re.I) is not None
