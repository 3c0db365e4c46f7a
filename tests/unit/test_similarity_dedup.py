"""Per-customer duplicate detection (pipeline.classify.dedup)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from pipeline.classify.dedup import (
    CustomerDedupState,
    DedupConfig,
    check_duplicate,
    normalize_text,
    remember,
)
from pipeline.events import Channel, InboundMessage

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def msg(
    mid: str, text: str, *, customer: str = "c1", channel: Channel = Channel.webchat
) -> InboundMessage:
    return InboundMessage(
        message_id=mid,
        channel=channel,
        channel_message_id=mid,
        customer_id=customer,
        text=text,
        received_at=T0,
    )


def state_with(m: InboundMessage, case: str = "case-1") -> CustomerDedupState:
    return remember(CustomerDedupState(), m, case, T0)


def test_the_same_record_again_decides_as_the_first_time() -> None:
    # A broker redelivery (or a platform retry with the same message id) must keep one
    # outcome: it opened case-1 itself, so it is again not a duplicate — of itself or else.
    first = msg("tg-1", "Не пришёл заказ 5521")
    d = check_duplicate(state_with(first), first, T0 + timedelta(seconds=5))
    assert not d.is_duplicate and d.duplicate_of is None
    # a retry is not remembered twice
    assert len(remember(state_with(first), first, "case-1", T0).entries) == 1


def test_the_same_platform_message_under_another_id_is_an_exact_duplicate() -> None:
    first = msg("tg-1", "Не пришёл заказ 5521")
    again = first.model_copy(update={"message_id": "tg-1-reimported", "text": "другой текст"})
    d = check_duplicate(state_with(first), again, T0 + timedelta(seconds=5))
    assert d.is_duplicate and d.reason == "exact_id"
    assert d.duplicate_of == "tg-1" and d.case_id == "case-1" and d.similarity == 1.0


@pytest.mark.parametrize(
    ("original", "resend"),
    [
        ("Where is my order 5521?", "where is my order 5521"),
        ("Где мой заказ 5521?", "ГДЕ МОЙ ЗАКАЗ 5521!!!"),
    ],
)
def test_same_normalized_text_is_duplicate(original: str, resend: str) -> None:
    d = check_duplicate(state_with(msg("a", original)), msg("b", resend), T0)
    assert d.is_duplicate and d.reason == "same_text" and d.duplicate_of == "a"


@pytest.mark.parametrize(
    ("chat", "email"),
    [
        (
            "I was charged twice for order 5521, please refund the second payment",
            "Hello,\n\nI was charged twice for order 5521 -- pls refund the second "
            "paymnet asap.\n\nBest regards,\nJohn Smith\n--\nJohn Smith\nAcme Ltd\n"
            "Tel. +1 555 0100\nSent from my iPhone",
        ),
        (
            "С карты дважды списали деньги за заказ 5521, верните второй платёж",
            "Здравствуйте!\n\nС карты дважды списали деньги за заказ 5521, верните, "
            "пожалуйста, второй платеж.\n\nС уважением,\nИванов Иван\n-- \n"
            "ООО «Ромашка»\nтел. +7 916 123-45-67",
        ),
    ],
)
def test_reworded_via_email_with_signature_links_to_case(chat: str, email: str) -> None:
    st = state_with(msg("chat-1", chat), case="case-77")
    d = check_duplicate(st, msg("mail-1", email, channel=Channel.email), T0 + timedelta(hours=2))
    assert d.is_duplicate, d
    assert d.reason == "near" and d.similarity >= DedupConfig().near_threshold
    assert d.duplicate_of == "chat-1" and d.case_id == "case-77"


def test_different_customers_same_text_are_not_duplicates() -> None:
    text = "I forgot my password, how do I reset it?"
    st = state_with(msg("a", text, customer="c1"))
    # the worker looks up the OTHER customer's state: empty
    other = msg("b", text, customer="c2")
    assert not check_duplicate(CustomerDedupState(), other, T0).is_duplicate
    # and the first customer's state only holds the first customer's message
    assert [e.message_id for e in st.entries] == ["a"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("How do I reset my password?", "When will my order 5521 be delivered?"),
        ("Как сбросить пароль?", "Когда привезут заказ 5521?"),
    ],
)
def test_same_customer_different_request_is_not_duplicate(first: str, second: str) -> None:
    d = check_duplicate(state_with(msg("a", first)), msg("b", second), T0)
    assert not d.is_duplicate and d.similarity < DedupConfig().near_threshold


def test_expiry_and_cap_bound_the_state() -> None:
    cfg = DedupConfig(window_s=3600, max_entries=5)
    st = CustomerDedupState()
    for i in range(20):
        st = remember(
            st, msg(f"m{i}", f"distinct request number {i}"), None, T0 + timedelta(minutes=i), cfg
        )
    assert len(st.entries) == 5
    assert [e.message_id for e in st.entries] == [f"m{i}" for i in range(15, 20)]
    later = T0 + timedelta(hours=3)
    assert not check_duplicate(st, msg("x", "distinct request number 19"), later, cfg).is_duplicate
    st2 = remember(st, msg("y", "new"), None, later, cfg)
    assert [e.message_id for e in st2.entries] == ["y"]


def test_outside_window_not_duplicate() -> None:
    st = state_with(msg("a", "Where is my order 5521?"))
    d = check_duplicate(st, msg("b", "Where is my order 5521?"), T0 + timedelta(days=2))
    assert not d.is_duplicate


def test_state_round_trips_as_json() -> None:
    st = state_with(msg("a", "Где мой заказ?"))
    again = CustomerDedupState.model_validate_json(st.model_dump_json())
    assert again == st
    assert check_duplicate(again, msg("b", "где мой заказ"), T0).is_duplicate


def test_normalize_strips_greeting_and_signoff() -> None:
    assert normalize_text("Здравствуйте! Где мой заказ?\nСпасибо\nАнна") == "где мой заказ"
    assert normalize_text("Hi, where is my order?\n\nThanks,\nJohn") == "where is my order"


def _datasketch_signature(shingle_set: set[str]) -> list[int]:
    """The signature as datasketch computes it (what stored states hold)."""
    from datasketch import MinHash

    from pipeline.classify import dedup

    if not shingle_set:
        return []
    mh = MinHash(
        num_perm=dedup.NUM_PERM,
        hashfunc=dedup._hash32,
        permutations=dedup._permutations(),
        scheme="affine32",
    )
    mh.update_batch([s.encode("utf-8") for s in shingle_set])
    return [int(v) & 0xFFFF for v in mh.hashvalues]


def test_signatures_are_datasketch_minhash_values() -> None:
    # Stored states hold these values: the batch computation must not change them.
    from pipeline.classify import dedup

    texts = [
        "Where is my order 5521? I paid for express delivery a week ago.",
        "Здравствуйте! Не пришёл заказ, деньги списали дважды, верните.",
        "",
        "ok",
        "Ёлка; ёжик — 12 шт.",
        "Where is my order 5521? I paid for express delivery a week ago.",
    ]
    sets = [dedup.shingles(normalize_text(t)) for t in texts]
    want = [_datasketch_signature(s) for s in sets]
    assert want[0] and want[1] and want[2] == [] and want[3]
    assert dedup.signatures(sets) == want
    assert [dedup.signature(s) for s in sets] == want
    msgs = [msg(f"m{i}", t) for i, t in enumerate(texts)]
    assert dedup.fingerprints(msgs) == [dedup.fingerprint(m) for m in msgs]


def test_shingle_hashes_stay_bounded_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.classify import dedup

    monkeypatch.setattr(dedup, "_SHINGLE_HASHES", {})
    monkeypatch.setattr(dedup, "_MAX_SHINGLE_HASHES", 40)
    for text in ("Где мой заказ? Где посылка?", "Where is my parcel? It is late.", "Где мой"):
        sh = dedup.shingles(normalize_text(text))
        assert 20 < len(sh) <= 40 or text == "Где мой"
        assert dedup.signature(sh) == _datasketch_signature(sh)
        assert len(dedup._SHINGLE_HASHES) <= 40


def _as_written_before(state: CustomerDedupState) -> str:
    """The state as versions before the packed signature wrote it: each MinHash a list."""
    data = state.model_dump(mode="json")
    for entry in data["entries"]:
        packed = entry["sig"]
        entry["sig"] = [
            int.from_bytes(bytes.fromhex(packed[i : i + 4]), "little")
            for i in range(0, len(packed), 4)
        ]
    return orjson.dumps(data).decode()


def test_a_state_written_with_signature_lists_decides_as_the_packed_one() -> None:
    texts = [
        "Where is my order 5521? I paid for express delivery a week ago and nothing came.",
        "Не пришёл заказ 5521, деньги списали дважды, верните пожалуйста.",
        "ok",
    ]
    state = CustomerDedupState()
    for n, text in enumerate(texts):
        state = remember(state, msg(f"m{n}", text), f"case-{n}", T0)
    assert all(isinstance(e.sig, str) for e in state.entries) and state.entries[0].sig
    before = _as_written_before(state)
    assert '"sig":[' in before
    older = CustomerDedupState.model_validate_json(before)
    probes = [
        "Hello, where is my order 5521? I paid for express delivery a week ago, nothing came",
        "Не пришел заказ 5521 деньги списали дважды верните",
        "I want to change the address of my account",
        "ok!",
    ]
    later = T0 + timedelta(minutes=5)
    for n, text in enumerate(probes):
        probe = msg(f"p{n}", text)
        assert check_duplicate(older, probe, later) == check_duplicate(state, probe, later)
    # written back, the old entries keep their lists and the new one is packed; both read
    mixed = remember(older, msg("p2", probes[2]), "case-p2", later)
    again = CustomerDedupState.model_validate_json(mixed.model_dump_json())
    assert [type(e.sig) for e in again.entries] == [list, list, list, str]
    near = msg("p9", probes[0])
    assert check_duplicate(again, near, later) == check_duplicate(state, near, later)
    assert check_duplicate(again, near, later).reason == "near"


@pytest.mark.parametrize(
    "sig",
    ["zz" * 128, "ab" * 127, "AB" * 128, [1, 2, 70000], [-1]],
    ids=["not-hex", "short", "upper-case", "not-16-bit", "negative"],
)
def test_a_damaged_signature_makes_the_state_unreadable(sig: object) -> None:
    entry = {"message_id": "m1", "id_hash": 1, "text_hash": 2, "sig": sig, "n": 20, "at": 1.0}
    with pytest.raises(ValidationError):
        CustomerDedupState.model_validate_json(orjson.dumps({"entries": [entry]}))
