"""Customer directory: provisional ids, linking, merging, rebuild, import; reply tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.domain.tokens import parse_reply_address, reply_address, reply_token
from pipeline.errors import ConfigError, InvalidInput
from pipeline.events import Identity, derive_id
from pipeline.ingest.identity import CustomerDirectory, load_customers

NOW = datetime(2024, 5, 1, tzinfo=UTC)
SAMPLE = Path(__file__).resolve().parents[2] / "pipeline" / "resources" / "customers.csv"
TG = Identity(kind="telegram", value="777")
PHONE = Identity(kind="phone", value="+79990001122")
EMAIL = Identity(kind="email", value="x@example.org")


def _directory() -> CustomerDirectory:
    d = CustomerDirectory()
    plan = d.plan_import(load_customers(SAMPLE, NOW), NOW)
    assert plan is not None
    d.commit(plan)
    return d


def test_sample_import_has_linked_gold_customer() -> None:
    d = _directory()
    anna = [
        Identity(kind="phone", value="+79161234567"),
        Identity(kind="email", value="anna.smirnova@example.ru"),
        Identity(kind="telegram", value="100200300"),
    ]
    assert {d.lookup(i) for i in anna} == {"cust_anna_smirnova"}
    profile = d.profile("cust_anna_smirnova")
    assert profile is not None and profile.tier == "gold" and profile.preferred_language == "ru"
    assert d.lookup(Identity(kind="email", value="e.clark@example.org")) == "cust_emily_clark"
    assert d.lookup(Identity(kind="chatwoot", value="1:42")) == "cust_john_miller"


def test_unknown_identity_gets_stable_provisional_id() -> None:
    d = CustomerDirectory()
    res = d.resolve([TG], now=NOW, name="Петя")
    assert res.profile.customer_id == derive_id("prov", "telegram", "777")
    assert res.profile.name == "Петя"
    assert len(res.records) == 1
    d.commit(res)
    again = d.resolve([TG], now=NOW)
    assert again.profile.customer_id == res.profile.customer_id and again.records == ()


def test_second_identity_links_and_provisional_merges_into_known() -> None:
    d = _directory()
    first = d.resolve([TG], now=NOW)
    d.commit(first)
    prov = first.profile.customer_id
    # A message with the telegram id and a known phone reveals who this is.
    res = d.resolve([TG, Identity(kind="phone", value="+79161234567")], now=NOW)
    assert res.profile.customer_id == "cust_anna_smirnova"
    assert res.removed == (prov,)
    d.commit(res)
    assert d.lookup(TG) == "cust_anna_smirnova"
    assert d.profile(prov) is None


def test_two_provisionals_link() -> None:
    d = CustomerDirectory()
    d.commit(d.resolve([PHONE], now=NOW))
    res = d.resolve([EMAIL, PHONE], now=NOW)
    d.commit(res)
    assert d.lookup(EMAIL) == d.lookup(PHONE) == derive_id("prov", "phone", PHONE.value)


def test_known_customers_are_never_merged_silently() -> None:
    d = _directory()
    ivan = Identity(kind="email", value="ivan.petrov@example.ru")
    anna = Identity(kind="telegram", value="100200300")
    res = d.resolve([anna, ivan], now=NOW)
    d.commit(res)
    assert d.lookup(ivan) == "cust_ivan_petrov" and d.lookup(anna) == "cust_anna_smirnova"


def test_explicit_customer_id_and_no_identity() -> None:
    d = CustomerDirectory()
    res = d.resolve([EMAIL], now=NOW, customer_id="crm-9")
    assert res.profile.customer_id == "crm-9"
    with pytest.raises(InvalidInput):
        d.resolve([], now=NOW)


def test_rebuild_from_topic_records_with_tombstones() -> None:
    d = _directory()
    first = d.resolve([TG], now=NOW)
    d.commit(first)
    merge = d.resolve([TG, Identity(kind="phone", value="+79161234567")], now=NOW + timedelta(1))
    log: list[tuple[bytes | None, bytes | None]] = []
    for cid in ["cust_anna_smirnova", "cust_ivan_petrov"]:
        log.append((cid.encode(), encode(d.record(cid, NOW))))
    log.append((first.profile.customer_id.encode(), encode(first.records[0])))
    for rec in merge.records:
        log.append((rec.profile.customer_id.encode(), encode(rec)))
    log.extend((cid.encode(), None) for cid in merge.removed)
    log.append((b"broken", b"{not json"))
    rebuilt = CustomerDirectory.from_topic_records(log)
    assert rebuilt.lookup(TG) == "cust_anna_smirnova"
    assert rebuilt.profile(first.profile.customer_id) is None
    assert len(rebuilt) == 2
    # Crash between the merged record and the tombstone: the known customer still wins.
    no_tombstone = [(k, v) for k, v in log if v is not None]
    assert CustomerDirectory.from_topic_records(no_tombstone).lookup(TG) == "cust_anna_smirnova"


def test_import_json_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    rows = [{"customer_id": "c1", "name": "Jo", "tier": "vip", "email": ["A@B.co"]}]
    path.write_bytes(orjson.dumps({"customers": rows}))
    (rec,) = load_customers(path, NOW)
    assert rec.profile.tier == "vip" and rec.identities == [Identity(kind="email", value="a@b.co")]
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,tier\nc1,platinum\n")
    with pytest.raises(ConfigError):
        load_customers(bad, NOW)
    bad.write_text("customer_id,phone\nc1,12\n")
    with pytest.raises(ConfigError):
        load_customers(bad, NOW)
    with pytest.raises(ConfigError):
        load_customers(tmp_path / "missing.csv", NOW)


def test_reimport_is_a_no_op() -> None:
    d = _directory()
    assert d.plan_import(load_customers(SAMPLE, NOW), NOW) is None


# ---------------------------------------------------------------- reply tokens


def test_reply_address_round_trip_and_forgery() -> None:
    s = Settings(reply_domain="reply.example.com", reply_token_secret=SecretStr("k1"))
    case_id, sub_id = derive_id("case", "m"), derive_id("sr", "m", "store")
    addr = reply_address(sub_id, case_id, s)
    local = addr.split("@")[0]
    assert len(local) <= 64 and local == local.lower() and local.startswith("reply+")
    assert parse_reply_address(addr, s) == (case_id, sub_id)
    assert parse_reply_address(f"Store <{addr.upper()}>", s) == (case_id, sub_id)
    other = Settings(reply_domain="reply.example.com", reply_token_secret=SecretStr("k2"))
    assert parse_reply_address(addr, other) is None  # different secret
    token = reply_token(sub_id, case_id, s)
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert parse_reply_address(f"reply+{flipped}@reply.example.com", s) is None
    assert parse_reply_address(f"reply+{token}@evil.example.com", s) is None
    assert parse_reply_address("support@reply.example.com", s) is None
    assert parse_reply_address("reply+!!@reply.example.com", s) is None


def test_reply_address_free_form_ids() -> None:
    s = Settings()
    addr = reply_address("sub 1/ü", "CASE-42", s)
    assert parse_reply_address(addr, s) == ("CASE-42", "sub 1/ü")


def test_following_the_topic_ignores_stale_records_and_tombstones() -> None:
    from pipeline.bus import Publisher, Record
    from pipeline.events import CustomerProfile, CustomerRecord
    from pipeline.ingest.service import IngestService

    settings = Settings()
    service = IngestService(settings, Publisher(settings))
    t0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    phone = Identity(kind="phone", value="+79994445566")
    email = Identity(kind="email", value="moves@example.org")

    def rec(ids: list[Identity], at: datetime) -> Record:
        value = encode(
            CustomerRecord(
                profile=CustomerProfile(customer_id="c-1"), identities=ids, updated_at=at
            )
        )
        return Record("care.customers", 0, 0, b"c-1", value, int(at.timestamp() * 1000))

    service.take_record(rec([phone, email], t0 + timedelta(minutes=5)))
    assert service.directory.lookup(email) == "c-1"
    service.take_record(rec([phone], t0))  # an older version (a re-read): ignored
    assert service.directory.lookup(email) == "c-1"
    old_tombstone = Record("care.customers", 0, 1, b"c-1", None, int(t0.timestamp() * 1000))
    service.take_record(old_tombstone)
    assert service.directory.lookup(phone) == "c-1"
    later = int((t0 + timedelta(minutes=9)).timestamp() * 1000)
    service.take_record(Record("care.customers", 0, 2, b"c-1", None, later))
    assert service.directory.lookup(phone) is None
    service.take_record(Record("care.customers", 0, 3, b"c-2", b"{not json", later))  # logged
    assert len(service.directory) == 0


async def test_new_customers_in_a_broker_outage_fail_without_queueing_behind_each_other() -> None:
    """A new customer's directory record holds the directory until the broker acknowledges it.
    In an outage the messages behind it fail (503) once the produce timeout passed, as a send
    would, not one produce timeout after another (the last one past the platform's webhook
    timeout); the turn is free again afterwards."""
    import asyncio

    from pipeline.bus import Publisher
    from pipeline.errors import BrokerUnavailable
    from pipeline.events import Channel, Event
    from pipeline.ingest.message import ParsedMessage
    from pipeline.ingest.service import IngestService

    class Silent(Publisher):
        """A broker that acknowledges nothing until ``answer`` is set."""

        def __init__(self, settings: Settings) -> None:
            super().__init__(settings)
            self.answer = asyncio.Event()
            self.sent: list[Event] = []

        async def send(self, topic: str, key: str | None, event: Event) -> None:
            await self.answer.wait()
            self.sent.append(event)

    settings = Settings(produce_timeout_s=0.05)
    publisher = Silent(settings)
    service = IngestService(settings, publisher)

    def new_customer(n: int) -> ParsedMessage:
        return ParsedMessage(
            channel=Channel.telegram,
            channel_message_id=f"{700 + n}:1",
            identities=(Identity(kind="telegram", value=str(700 + n)),),
            text="Где мой заказ?",
        )

    async with asyncio.timeout(30):  # a failure bound: before the fix the rest waited forever
        first = asyncio.create_task(service.accept(new_customer(0)))
        await asyncio.sleep(0)  # the first takes the turn and waits for the broker
        rest = await asyncio.gather(
            *(service.accept(new_customer(n)) for n in range(1, 6)), return_exceptions=True
        )
        assert all(isinstance(r, BrokerUnavailable) for r in rest), rest
        assert "customer directory busy" in str(rest[0])
        assert not first.done()
        publisher.answer.set()  # the broker answers again
        assert (await first).customer_id
        again = await service.accept(new_customer(1))  # the turn was given back
    assert again.customer_id and len(publisher.sent) == 4  # two directory records, two messages
