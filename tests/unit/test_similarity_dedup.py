"""Per-customer duplicate detection (pipeline.classify.dedup), and the dedup state's stored
format: packed signatures, base64 in JSON; states written as int lists by earlier workers
still load and decide the same."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.classify import dedup
from pipeline.classify.agents import sweep_tables
from pipeline.classify.dedup import (
    CustomerDedupState,
    DedupConfig,
    DedupEntry,
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


# ---------------------------------------------------------------- the stored format
#: What the code before packed signatures wrote for ``_state()``'s messages (its
#: ``model_dump_json``, sig as a list of ints): a record of an older worker's changelog.
OLD_JSON = (
    '{"entries":[{"message_id":"a","case_id":"case-a","id_hash":4450719607307432356,"text'
    '_hash":4562109091170190417,"sig":[37833,28230,36853,51766,37911,8576,15762,61608,518'
    "00,21041,6130,56878,30879,59472,22130,16654,50903,56149,17900,8910,34010,19852,37673"
    ",1258,14711,50603,44038,54849,318,30134,42022,29280,57593,11786,36096,20611,27935,62"
    "491,44734,3144,3042,19895,56948,52521,45036,10211,43936,4097,44526,61198,60092,40373"
    ',15181,54682,22817,16232,17308,26574,48463,50019,52656,1699,37168,20796],"n":49,"at"'
    ':1740830400.0},{"message_id":"b","case_id":"case-b","id_hash":7565549794159002168,"t'
    'ext_hash":-8535107672742057450,"sig":[3925,46321,35449,56643,17540,42200,39089,15339'
    ",30476,50010,18036,43792,12205,28723,39145,51986,61007,36352,13572,26969,26543,52898"
    ",21015,16583,56282,56281,16040,29014,53961,8451,30759,46526,51671,37437,30500,7771,4"
    "5157,15225,12691,8934,63048,3808,22370,3018,50647,12879,16687,36375,42201,59143,3230"
    '7,37660,50570,55294,4334,52832,63384,11479,42103,4225,49073,9229,2499,22976],"n":1,"'
    'at":1740830460.0},{"message_id":"c","case_id":"case-c","id_hash":3829254352097301751'
    ',"text_hash":0,"sig":[],"n":0,"at":1740830520.0}],"contacts":[1740830520.0]}'
)


def _state() -> CustomerDedupState:
    st = remember(
        CustomerDedupState(),
        msg("a", "Where is my order 5521? I paid for express delivery."),
        "case-a",
        T0,
    )
    st = remember(st, msg("b", "ok"), "case-b", T0 + timedelta(minutes=1))
    st = remember(st, msg("c", "!!!"), "case-c", T0 + timedelta(minutes=2))
    st, _ = dedup.count_contact(st, T0 + timedelta(minutes=2), 3600, 10, True)
    return st


PROBES = [
    msg("a", "anything"),  # the same record again
    msg("p1", "where is my order 5521, i paid for express delivery"),  # same text
    msg("p2", "Hello, where is my order 5521? I paid for express delivery!\n\nThanks,\nJohn"),
    msg("p3", "Where is order 5521? I paid for the express delivery yesterday."),  # near
    msg("p4", "I want to change my delivery address"),  # not a duplicate
    msg("p5", "ok"),
    msg("p6", "?"),  # no shingles
]


def test_an_old_record_loads_as_the_state_the_new_code_builds() -> None:
    old = CustomerDedupState.model_validate_json(OLD_JSON)
    assert old == _state()
    raw = json.loads(OLD_JSON)
    for entry, stored in zip(old.entries, raw["entries"], strict=True):
        assert list(np.frombuffer(entry.sig, dtype="<u2")) == stored["sig"]
    assert [len(e["sig"]) for e in raw["entries"]] == [dedup.NUM_PERM, dedup.NUM_PERM, 0]


def test_an_old_record_decides_as_the_new_state() -> None:
    old, new = CustomerDedupState.model_validate_json(OLD_JSON), _state()
    later = T0 + timedelta(minutes=5)
    decisions = [check_duplicate(old, p, later) for p in PROBES]
    assert decisions == [check_duplicate(new, p, later) for p in PROBES]
    assert [d.reason for d in decisions] == [
        None,
        "same_text",
        "same_text",
        "near",
        None,
        "same_text",
        None,
    ]


def test_the_new_format_round_trips_and_is_what_is_written() -> None:
    st = _state()
    text = st.model_dump_json()
    stored = json.loads(text)["entries"]
    assert [type(e["sig"]) for e in stored] == [str, str, str]
    assert base64.urlsafe_b64decode(stored[0]["sig"]) == st.entries[0].sig
    assert stored[2]["sig"] == ""
    again = CustomerDedupState.model_validate_json(text)
    assert again == st and again.model_dump_json() == text
    # a state read from an old record is written in the new format
    assert CustomerDedupState.model_validate_json(OLD_JSON).model_dump_json() == text
    assert len(text) < len(OLD_JSON)


def test_the_packed_signature_is_the_minhash_signature() -> None:
    texts = ["Where is my order 5521? I paid for express delivery.", "Где мой заказ?", "", "ok"]
    sets = [dedup.shingles(dedup.normalize_text(t)) for t in texts]
    packed = [fp[1] for fp in dedup.fingerprints([msg(str(i), t) for i, t in enumerate(texts)])]
    assert packed == [dedup.pack_signature(s) for s in dedup.signatures(sets)]
    assert [len(p) for p in packed] == [128, 128, 0, 128]


def _entry_json(sig: object) -> str:
    entry = {"message_id": "m", "id_hash": 1, "text_hash": 2, "sig": sig, "n": 5, "at": 1.0}
    return json.dumps({"entries": [entry]})


@pytest.mark.parametrize(
    "sig",
    [
        base64.b64encode(bytes(10)).decode(),  # wrong length
        base64.b64encode(bytes(130)).decode(),
        "!!!not base64!!!",
        "ab=c",
        [1] * 63,  # an old list of the wrong length
        [1] * 65,
        [-1] + [1] * 63,  # old lists: negative, over 16 bits, not ints
        [65536] + [1] * 63,
        [1.5] + [1] * 63,
        [True] + [1] * 63,
        ["1"] + [1] * 63,
        5,
        None,
    ],
)
def test_a_hostile_signature_is_a_validation_error(sig: object) -> None:
    with pytest.raises(ValidationError, match="sig"):
        CustomerDedupState.model_validate_json(_entry_json(sig))


def test_a_wrong_length_is_refused_in_python_too() -> None:
    with pytest.raises(ValidationError, match="0 or 128 bytes"):
        DedupEntry(message_id="m", id_hash=1, text_hash=2, sig=bytes(3), at=1.0)
    with pytest.raises(ValueError, match="0 or 64 values"):
        dedup.pack_signature([1, 2, 3])


#: few values (many ties), with those at the edges of a packed value's bits
_VALUES = [0, 1, 2, 0x7FFF, 0x8000, 0xFFFF]


def test_equal_values_of_packed_signatures() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        a = [rng.choice([*_VALUES, rng.randrange(0x10000)]) for _ in range(dedup.NUM_PERM)]
        b = [v if rng.random() < 0.5 else rng.choice([*_VALUES, rng.randrange(0x10000)]) for v in a]
        pa, pb = (int.from_bytes(dedup.pack_signature(s), "little") for s in (a, b))
        assert dedup._equal_values(pa, pb) == sum(x == y for x, y in zip(a, b, strict=True))


def test_nearest_is_the_pairwise_estimate_newest_first() -> None:
    # the numpy scan picks the entry, and the value, the pairwise estimate picks
    rng = random.Random(7)
    for _ in range(300):
        base = [rng.choice(_VALUES) for _ in range(dedup.NUM_PERM)]
        k = rng.randrange(1, 30)
        sigs = [
            [v if rng.random() < 0.7 else rng.choice(_VALUES) for v in base]
            if rng.random() < 0.9
            else []
            for _ in range(k)
        ]
        entries = [
            DedupEntry(
                message_id=f"m{i}",
                id_hash=i,
                text_hash=i,
                sig=dedup.pack_signature(s),
                n=rng.choice([1, 5, 11, 12, 13, 40, 200]) if s else 0,
                at=1.0,
            )
            for i, s in enumerate(sigs)
        ]
        n = rng.choice([1, 11, 12, 60])
        best, best_sim = None, 0.0
        for e, s in zip(reversed(entries), reversed(sigs), strict=True):
            sim = dedup.estimate_similarity(base, n, s, e.n)
            if sim > best_sim:
                best, best_sim = e, sim
        got = dedup._nearest(entries, dedup.pack_signature(base), n)
        assert got == (best, best_sim)
        assert type(got[1]) is float
    assert dedup._nearest([], dedup.pack_signature(base), 5) == (None, 0.0)
    assert dedup._nearest(entries, b"", 0) == (None, 0.0)


async def test_the_sweep_reads_old_and_new_records() -> None:
    # OLD_JSON's entries are at T0..T0+2min, its contact at T0+2min (a one-hour window here)
    cfg = dedup.DedupConfig(window_s=3600)
    table = {"old": OLD_JSON, "new": _state().model_dump_json()}
    assert await sweep_tables(table, cfg, T0 + timedelta(minutes=30)) == 0
    assert table == {"old": OLD_JSON, "new": _state().model_dump_json()}  # kept as they were
    assert await sweep_tables(table, cfg, T0 + timedelta(days=60)) == 2
    assert table == {}
