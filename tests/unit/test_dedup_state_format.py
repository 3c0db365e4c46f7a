"""The dedup state's stored format (pipeline.classify.dedup): packed signatures, base64 in
JSON; states written as int lists by earlier workers still load and decide the same."""

from __future__ import annotations

import base64
import json
import random
from datetime import timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.classify import dedup
from pipeline.classify.agents import sweep_tables
from pipeline.classify.dedup import CustomerDedupState, DedupEntry, check_duplicate, remember
from tests.unit.test_similarity_dedup import T0, msg

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
