"""The event contract, the codec and the generated schemas."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from pipeline import schema_gen
from pipeline.codec import dead_letter, decode, decode_task_record, encode
from pipeline.errors import DecodeError
from pipeline.events import (
    EVENT_TYPES,
    Channel,
    InboundMessage,
    Outcome,
    OutcomeKind,
    SubRequest,
    TaskNotice,
    derive_id,
    utcnow,
)

if TYPE_CHECKING:
    from tests.plugins.events import MakeSubRequest


def _inbound(**kw: object) -> InboundMessage:
    base: dict[str, object] = {
        "message_id": derive_id("msg", "webchat", "1"),
        "channel": Channel.webchat,
        "channel_message_id": "1",
        "customer_id": "c1",
        "text": "Где мой заказ?",
        "received_at": utcnow(),
    }
    base.update(kw)
    return InboundMessage.model_validate(base)


def test_round_trip_keeps_everything() -> None:
    msg = _inbound(language="ru", routing_hints={"ivr_menu": "1>3"})
    assert decode(InboundMessage, encode(msg)) == msg
    assert b'"schema_version":1' in encode(msg)


def test_timestamps_are_normalised_to_utc() -> None:
    moscow = timezone(timedelta(hours=3))
    at = datetime(2026, 1, 1, 12, 0, tzinfo=moscow)
    msg = _inbound(received_at=at, sent_at=at)
    assert msg.received_at.utcoffset() == timedelta(0)
    assert msg.received_at.hour == 9
    assert msg.sent_at is not None and msg.sent_at.utcoffset() == timedelta(0)  # optional one
    moscow_raw = encode(msg).replace(b"09:00:00Z", b"12:00:00+03:00")
    assert moscow_raw.count(b"+03:00") == 2
    assert decode(InboundMessage, moscow_raw) == msg


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(DecodeError, match="received_at"):
        decode(InboundMessage, encode(_inbound()).replace(b"Z", b""))


def test_derive_id_is_deterministic_and_separates_parts() -> None:
    assert derive_id("sr", "m1", "loyalty") == derive_id("sr", "m1", "loyalty")
    assert derive_id("sr", "m1", "loyalty") != derive_id("sr", "m1l", "oyalty")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "invalid Outcome"),
        (b'{"message_id": "m"}', "outcome"),
        (b"[]", "invalid Outcome"),
        (None, "tombstone"),
    ],
)
def test_decode_errors_name_the_problem(raw: bytes | None, needle: str) -> None:
    with pytest.raises(DecodeError, match=needle):
        decode(Outcome, raw)


def test_unknown_fields_are_refused() -> None:
    good = Outcome(message_id="m", outcome=OutcomeKind.routed, stage="t", decided_at=utcnow())
    with pytest.raises(DecodeError, match="Extra inputs"):
        decode(Outcome, encode(good)[:-1] + b',"surprise":1}')


def test_dead_letter_keeps_raw_bytes_and_position() -> None:
    raw = b"\x00\x01garbage"
    dl = dead_letter(
        stage="classify",
        error=ValueError("boom"),
        raw=raw,
        topic="t",
        partition=1,
        offset=7,
        key=b"k",
    )
    assert base64.b64decode(dl.raw_b64) == raw
    assert (dl.topic, dl.partition, dl.offset, dl.key) == ("t", 1, 7, "k")
    assert dl.error_type == "ValueError" and dl.error == "boom"


def test_every_event_has_schema_version_and_docstrings() -> None:
    for name, model in EVENT_TYPES.items():
        assert "schema_version" in model.model_fields, name
        assert model.__doc__, name
        schema = model.model_json_schema()
        assert schema["properties"]["schema_version"]["const"] == 1


def test_schema_files_match_the_models() -> None:
    stale = schema_gen.drift()
    assert stale == [], f"run `pipeline schemas`: stale {stale}"


def test_drift_is_detected(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    schema_gen.write(d)
    assert schema_gen.drift(d) == []
    (d / "Outcome.schema.json").write_text("{}")
    (d / "Stray.schema.json").write_text("{}")
    assert schema_gen.drift(d) == ["Outcome.schema.json", "Stray.schema.json"]


def test_a_task_record_is_decoded_as_the_kind_it_is(make_sub_request: MakeSubRequest) -> None:
    # Even a sub-request whose text names the notice's field (escaped in the JSON).
    sub = make_sub_request(text='Клиент пишет: "notice_id" в письме')
    notice = TaskNotice(
        notice_id=derive_id("notice", sub.sub_request_id, "closed"),
        type="closed",
        case_id=sub.case_id,
        sub_request_id=sub.sub_request_id,
        department=sub.department,
        text="Answered elsewhere.",
        at=utcnow(),
    )
    assert decode_task_record(encode(sub)) == sub
    assert isinstance(decode_task_record(encode(sub)), SubRequest)
    assert decode_task_record(encode(notice)) == notice
    with pytest.raises(DecodeError, match="invalid TaskNotice"):
        decode_task_record(b'{"notice_id": "n"}')
    with pytest.raises(DecodeError, match="invalid SubRequest"):
        decode_task_record(b"{}")
