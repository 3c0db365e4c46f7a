"""Dead-letter records of rejected requests: one id per raw record, the offending field named."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.codec import dead_letter
from pipeline.errors import InvalidInput

STAGES = st.sampled_from(["ingest.generic", "ingest.telegram", "ingest.sms", "ingest.whatsapp"])


@given(st.lists(st.binary(max_size=300), min_size=2, max_size=20, unique=True), STAGES)
def test_different_bodies_on_one_endpoint_never_share_an_id(
    bodies: list[bytes], stage: str
) -> None:
    # Bodies sharing their first 64 characters collided before (the id used a prefix).
    ids = {dead_letter(stage=stage, error=ValueError("x"), raw=b).dead_letter_id for b in bodies}
    assert len(ids) == len(bodies)


@given(st.binary(max_size=300), STAGES, STAGES)
def test_the_same_body_keeps_its_id_per_origin(raw: bytes, a: str, b: str) -> None:
    first = dead_letter(stage=a, error=ValueError("x"), raw=raw).dead_letter_id
    again = dead_letter(stage=a, error=KeyError("y"), raw=raw).dead_letter_id
    other = dead_letter(stage=b, error=ValueError("x"), raw=raw).dead_letter_id
    assert first == again
    assert (first == other) == (a == b)


def test_a_long_shared_prefix_gives_different_ids() -> None:
    prefix = b'{"channel": "webchat", "message_id": "m1", "customer": {"email": "a@b.co"}, '
    ids = {
        dead_letter(stage="ingest.generic", error=ValueError("x"), raw=prefix + tail).dead_letter_id
        for tail in (b'"text": 1}', b'"text": null}', b'"text": []}')
    }
    assert len(ids) == 3


def test_the_offending_field_is_in_the_record() -> None:
    dl = dead_letter(
        stage="ingest.generic", error=InvalidInput("is required", field="text"), raw=b"{}"
    )
    assert dl.field == "text"
    assert dead_letter(stage="ingest.generic", error=ValueError("x"), raw=b"{}").field is None
