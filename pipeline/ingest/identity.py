"""One customer across channels: identities (phone, e-mail, Telegram id, Chatwoot contact...)
mapped to one customer id with a profile.

The directory is an in-memory view of the compacted ``customers`` topic (one
``CustomerRecord`` per customer, keyed by customer id; a tombstone removes a
provisional customer merged into another). ``resolve`` is pure: it returns what to
publish; ``commit`` applies it once the broker acknowledged.

An unknown identity gets the stable provisional id ``derive_id("prov", kind, value)``;
a message carrying several identities links them, and a provisional customer whose
identity turns out to belong to a known one is merged into it.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline.domain.text import normalize_identity
from pipeline.errors import ConfigError, InvalidInput
from pipeline.events import CustomerProfile, CustomerRecord, Identity, derive_id

__all__ = ["CustomerDirectory", "Resolution", "load_customers"]

log = logging.getLogger(__name__)

PROVISIONAL_PREFIX = "prov_"
#: Which identity names a provisional customer when a message carries several.
_KIND_ORDER = ("phone", "email", "telegram", "chatwoot", "webchat", "social", "other")
_IDENTITY_COLUMNS = {
    "phone": "phone",
    "phones": "phone",
    "email": "email",
    "emails": "email",
    "telegram": "telegram",
    "telegram_id": "telegram",
    "chatwoot": "chatwoot",
    "chatwoot_contact": "chatwoot",
    "webchat": "webchat",
    "social": "social",
}
_PROFILE_FIELDS = ("name", "tier", "segment", "preferred_language", "home_store")

Key = tuple[str, str]


def _key(identity: Identity) -> Key:
    return (identity.kind, identity.value)


def is_provisional(customer_id: str) -> bool:
    """Whether an id was made up for an unknown identity."""
    return customer_id.startswith(PROVISIONAL_PREFIX)


def provisional_id(identity: Identity) -> str:
    """The stable provisional customer id of an identity."""
    return derive_id("prov", identity.kind, identity.value)


@dataclass(frozen=True)
class Resolution:
    """Who wrote, and what the directory must persist for it."""

    profile: CustomerProfile
    records: tuple[CustomerRecord, ...] = ()
    removed: tuple[str, ...] = ()  # provisional customers merged away (tombstones)


class CustomerDirectory:
    """Identity → customer id → (profile, identities)."""

    def __init__(self) -> None:
        self._profiles: dict[str, CustomerProfile] = {}
        self._identities: dict[str, set[Key]] = {}
        self._owner: dict[Key, str] = {}
        self._updated: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    # ------------------------------------------------------------ queries

    def lookup(self, identity: Identity) -> str | None:
        """Customer id that owns an identity."""
        return self._owner.get(_key(identity))

    def profile(self, customer_id: str) -> CustomerProfile | None:
        """Current profile of a customer."""
        return self._profiles.get(customer_id)

    def updated_at(self, customer_id: str) -> datetime | None:
        """When the directory's entry of a customer was last written."""
        return self._updated.get(customer_id)

    def identities(self, customer_id: str) -> list[Identity]:
        """Known identities of a customer, sorted."""
        keys = sorted(self._identities.get(customer_id, set()))
        return [Identity(kind=k, value=v) for k, v in keys]

    def record(self, customer_id: str, at: datetime) -> CustomerRecord:
        """The directory entry of a customer as a bus record."""
        profile = self._profiles[customer_id]
        return CustomerRecord(
            profile=profile, identities=self.identities(customer_id), updated_at=at
        )

    # ------------------------------------------------------------ planning (pure)

    def resolve(
        self,
        identities: Sequence[Identity],
        *,
        now: datetime,
        name: str | None = None,
        customer_id: str | None = None,
    ) -> Resolution:
        """The customer of a message with these identities, and the records to persist.

        ``customer_id`` is an id the caller vouches for (the generic API); otherwise the
        first known owner wins, else the first provisional owner, else a new provisional id.
        """
        if not identities and not customer_id:
            raise InvalidInput("no customer identity", field="customer")
        owners: list[str] = []
        for ident in identities:
            owner = self._owner.get(_key(ident))
            if owner is not None and owner not in owners:
                owners.append(owner)
        if customer_id:
            primary = customer_id
        elif owners:
            known = [o for o in owners if not is_provisional(o)]
            primary = known[0] if known else owners[0]
        else:
            first = sorted(identities, key=lambda i: (_KIND_ORDER.index(i.kind), i.value))[0]
            primary = provisional_id(first)
        profile = self._profiles.get(primary) or CustomerProfile(customer_id=primary)
        keys = set(self._identities.get(primary, set()))
        before_keys = set(keys)
        removed: list[str] = []
        for owner in owners:
            if owner == primary:
                continue
            if is_provisional(owner):
                keys |= self._identities.get(owner, set())
                other = self._profiles.get(owner)
                if profile.name is None and other is not None and other.name:
                    profile = profile.model_copy(update={"name": other.name})
                removed.append(owner)
        for ident in identities:
            owner = self._owner.get(_key(ident))
            # An identity of another known customer stays theirs (no silent account merge).
            if owner is None or owner == primary or owner in removed:
                keys.add(_key(ident))
        if name and profile.name is None:
            profile = profile.model_copy(update={"name": name[:200]})
        changed = (
            primary not in self._profiles
            or keys != before_keys
            or profile != self._profiles.get(primary)
            or bool(removed)
        )
        if not changed:
            return Resolution(profile=profile)
        record = CustomerRecord(
            profile=profile,
            identities=[Identity(kind=k, value=v) for k, v in sorted(keys)],
            updated_at=now,
        )
        return Resolution(profile=profile, records=(record,), removed=tuple(removed))

    def plan_import(self, records: Iterable[CustomerRecord], now: datetime) -> Resolution | None:
        """Records to publish so imported customers (profiles, identities) are in the directory.

        Imported profile fields win; identities are added, and provisional customers that
        own an imported identity are merged into the imported customer.
        """
        out: list[CustomerRecord] = []
        removed: list[str] = []
        scratch = self.copy()
        for rec in records:
            res = scratch.resolve(rec.identities, now=now, customer_id=rec.profile.customer_id)
            current = (
                res.records[0] if res.records else scratch.record(rec.profile.customer_id, now)
            )
            merged = CustomerRecord(
                profile=rec.profile, identities=current.identities, updated_at=now
            )
            if res.records or scratch.profile(rec.profile.customer_id) != rec.profile:
                out.append(merged)
                removed.extend(res.removed)
                scratch.commit(
                    Resolution(profile=rec.profile, records=(merged,), removed=res.removed)
                )
        if not out:
            return None
        return Resolution(profile=out[-1].profile, records=tuple(out), removed=tuple(removed))

    # ------------------------------------------------------------ state changes

    def copy(self) -> CustomerDirectory:
        """An independent copy."""
        other = CustomerDirectory()
        other._profiles = dict(self._profiles)
        other._identities = {k: set(v) for k, v in self._identities.items()}
        other._owner = dict(self._owner)
        other._updated = dict(self._updated)
        return other

    def commit(self, resolution: Resolution) -> None:
        """Apply a resolution whose records the broker acknowledged."""
        for cid in resolution.removed:
            self.remove(cid)
        for rec in resolution.records:
            self.apply(rec)

    def apply(self, record: CustomerRecord) -> None:
        """Upsert one customer; its identities move to it (known owners keep theirs)."""
        cid = record.profile.customer_id
        for key in self._identities.pop(cid, set()):
            if self._owner.get(key) == cid:
                del self._owner[key]
        keys: set[Key] = set()
        for ident in record.identities:
            key = _key(ident)
            owner = self._owner.get(key)
            if owner is not None and owner != cid:
                if not is_provisional(owner) and is_provisional(cid):
                    continue
                self._identities.get(owner, set()).discard(key)
            self._owner[key] = cid
            keys.add(key)
        self._profiles[cid] = record.profile
        self._identities[cid] = keys
        self._updated[cid] = record.updated_at

    def remove(self, customer_id: str) -> None:
        """Forget a customer (tombstone)."""
        for key in self._identities.pop(customer_id, set()):
            if self._owner.get(key) == customer_id:
                del self._owner[key]
        self._profiles.pop(customer_id, None)
        self._updated.pop(customer_id, None)

    # ------------------------------------------------------------ rebuilding

    @classmethod
    def from_topic_records(
        cls, records: Iterable[tuple[bytes | None, bytes | None]]
    ) -> CustomerDirectory:
        """Rebuild from (key, value) pairs of the customers topic in log order.

        Compaction semantics: the last value per key wins and a tombstone deletes. Known
        customers claim identities before provisional ones.
        """
        latest: dict[str, CustomerRecord | None] = {}
        for key, value in records:
            if key is None:
                continue
            cid = key.decode("utf-8", errors="replace")
            if value is None:
                latest[cid] = None
                continue
            try:
                latest[cid] = CustomerRecord.model_validate_json(value)
            except ValidationError as exc:
                log.warning("skipping undecodable customer record %s: %s", cid, exc)
        directory = cls()
        alive = [r for r in latest.values() if r is not None]
        alive.sort(key=lambda r: (is_provisional(r.profile.customer_id), r.updated_at))
        for rec in alive:
            directory.apply(rec)
        return directory


# ---------------------------------------------------------------- import files


def _split(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in str(value).replace("|", ";").split(";") if p.strip()]


def _row_to_record(row: dict[str, Any], where: str, now: datetime) -> CustomerRecord:
    cid = str(row.get("customer_id") or row.get("id") or "").strip()
    if not cid:
        raise ConfigError(f"{where}: customer_id is required")
    fields = {
        f: (str(row[f]).strip() or None) for f in _PROFILE_FIELDS if row.get(f) not in (None, "")
    }
    identities: list[Identity] = []
    for column, kind in _IDENTITY_COLUMNS.items():
        for value in _split(row.get(column)):
            try:
                identities.append(normalize_identity(kind, value))
            except InvalidInput as exc:
                raise ConfigError(f"{where}: {column}: {exc}") from exc
    try:
        profile = CustomerProfile(customer_id=cid, **fields)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {exc.errors()[0].get('msg')}") from exc
    unique = sorted({_key(i): i for i in identities}.values(), key=_key)
    return CustomerRecord(profile=profile, identities=unique, updated_at=now)


def load_customers(path: Path, now: datetime) -> list[CustomerRecord]:
    """Customer import from CSV (one row per customer; ``;`` separates several values of
    an identity column) or JSON (a list of objects, or ``{"customers": [...]}``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read customers file {path}: {exc}") from exc
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".json":
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
        if isinstance(parsed, dict):
            parsed = parsed.get("customers")
        if not isinstance(parsed, list) or not all(isinstance(r, dict) for r in parsed):
            raise ConfigError(f"{path}: expected a list of customer objects")
        rows = parsed
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8") from exc
        rows = list(csv.DictReader(io.StringIO(text)))
    return [_row_to_record(row, f"{path}:{n + 1}", now) for n, row in enumerate(rows)]
