"""Duplicate detection for ONE customer: platform retries, resends and rewordings.

Pure functions over a small per-customer state (``CustomerDedupState``) that the worker
keeps in a Faust table keyed by customer id (invariant 5: one customer, one partition).
Different customers never share a state, so they are never duplicates of each other.

Three checks, cheapest first:

* ``exact_id``  — same message id or same channel + channel message id (platform retry);
* ``same_text`` — same normalized text (case, punctuation, greeting, signature ignored);
* ``near``      — MinHash estimate of character-shingle similarity over the cleaned text,
  taken as max(Jaccard, containment) so an e-mail that adds a long signature or quote to
  the chat message it repeats still matches (containment needs enough shingles on both
  sides, else a two-word message would be "contained" in everything).

Entries expire after ``window_s`` and at most ``max_entries`` are kept (oldest dropped),
so the state of one customer is bounded (≈ 0.35 KB per entry as JSON, measured). An entry's
MinHash is stored packed (hex of its 16-bit values): a customer's state is read and
written with every message of theirs, and 64 JSON numbers per entry cost more to parse,
write and compare than one string (checked by pydantic-core's pattern, no Python per entry).
"""

from __future__ import annotations

import hashlib
import operator
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Literal, cast

import numpy as np
from datasketch import MinHash
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pipeline.events import InboundMessage

__all__ = [
    "CustomerDedupState",
    "DedupConfig",
    "DedupDecision",
    "DedupEntry",
    "check_duplicate",
    "clean_text",
    "count_contact",
    "estimate_similarity",
    "expire",
    "fingerprint",
    "fingerprints",
    "normalize_text",
    "remember",
    "remember_and_count",
    "replayed",
    "shingles",
    "signature",
    "signatures",
    "text_hash",
]

DuplicateReason = Literal["exact_id", "same_text", "near"]

#: MinHash permutations: 64 keeps the similarity estimate's standard error ≈ 0.06, enough
#: for a threshold near 0.6 (chosen in bench/similarity_dedup.py).
NUM_PERM = 64
SHINGLE = 4
_MIN_SHINGLES_CONTAINMENT = 12
#: A signature as an entry stores it (``_packed``): 4 hex digits per value.
PackedSignature = Annotated[str, StringConstraints(pattern=rf"^(?:[0-9a-f]{{{4 * NUM_PERM}}})?$")]


class DedupConfig(BaseModel):
    """Tunables of the duplicate check (defaults chosen in bench/similarity_dedup.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(default=24 * 3600, gt=0, description="Entries older than this expire.")
    max_entries: int = Field(default=50, ge=1, description="Cap on remembered messages.")
    near_threshold: float = Field(
        default=0.6, gt=0, le=1, description="Similarity at or above which a message is 'near'."
    )


class DedupEntry(BaseModel):
    """One remembered message: ids, fingerprints (hashes as ints, the MinHash packed), time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str
    case_id: str | None = None
    id_hash: int = Field(description="64-bit hash of channel + channel message id.")
    text_hash: int = Field(description="64-bit hash of the normalized text (0: empty).")
    sig: PackedSignature | list[Annotated[int, Field(ge=0, le=0xFFFF)]] = Field(
        default="",
        description="MinHash: its 16-bit values little-endian, as hex ('': no shingles); "
        "a list of the values (states written before) is read too.",
    )
    n: int = Field(default=0, ge=0, description="Number of distinct shingles.")
    at: float = Field(description="Epoch seconds it was remembered.")


class CustomerDedupState(BaseModel):
    """Recent messages of one customer, oldest first. Serialize with ``model_dump_json``.

    Also the times of the customer's recent contacts (priority counts them): one state per
    customer, so one table and one changelog record per message.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    entries: list[DedupEntry] = Field(default_factory=list)
    contacts: list[float] = Field(
        default_factory=list,
        description="Epoch seconds of the messages that were not duplicates, oldest first.",
    )


class DedupDecision(BaseModel):
    """Outcome of ``check_duplicate``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    is_duplicate: bool
    duplicate_of: str | None = Field(default=None, description="Message id of the original.")
    reason: DuplicateReason | None = None
    case_id: str | None = Field(default=None, description="Case of the original, if known.")
    similarity: float = Field(default=0.0, ge=0.0, le=1.0)


# ---------------------------------------------------------------- text


_QUOTE = re.compile(r"^\s*>")
_SIG_DELIM = re.compile(r"^\s*(--|__+|—)\s*$")
_SIGNOFF = re.compile(
    r"^\s*(best regards|kind regards|warm regards|regards|best wishes|best|cheers|thanks|"
    r"thank you|many thanks|sincerely|yours sincerely|sent from my|get outlook for|"
    r"с уважением|всего доброго|всего хорошего|спасибо|заранее спасибо|благодарю|"
    r"отправлено с|отправлено из|с наилучшими пожеланиями)\b[ ,.!]*",
    re.IGNORECASE,
)
_ON_WROTE = re.compile(r"^\s*(on .+ wrote:|.+ писал[а]?\s*(\(а\))?:)\s*$", re.IGNORECASE)
_GREETING = re.compile(
    r"^\s*(hi|hello|hey|dear [\w .]+|good (morning|afternoon|evening)|greetings|"
    r"здравствуйте|добрый (день|вечер)|доброе утро|привет|приветствую|"
    r"уважаем\w+ [\w .]+)\b[ ,.!:]*",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def clean_text(text: str) -> str:
    """Message body without quoted reply, signature, leading greeting."""
    kept: list[str] = []
    for line in text.splitlines():
        if _SIG_DELIM.match(line) or _ON_WROTE.match(line):
            break
        if _QUOTE.match(line):
            continue
        if _SIGNOFF.match(line) and len(line) < 60:
            break  # a short sign-off line ends the message (the name follows)
        kept.append(line)
    body = "\n".join(kept) if kept else text
    return _GREETING.sub("", body, count=1)


def normalize_text(text: str) -> str:
    """Lower-case word tokens joined by single spaces (NFKC, ё→е, no punctuation)."""
    t = unicodedata.normalize("NFKC", clean_text(text)).casefold().replace("ё", "е")
    return " ".join(_NON_WORD.sub(" ", t).replace("_", " ").split())


def _h64(data: str) -> int:
    """Signed 64-bit hash (fits a JSON number and a Java long)."""
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest(), "big") - (
        1 << 63
    )


def text_hash(normalized: str) -> int:
    """Hash of normalized text; 0 for empty text (never matches)."""
    return _h64(normalized) if normalized else 0


def shingles(normalized: str, k: int = SHINGLE) -> set[str]:
    """Character k-grams of the normalized text (padded so short words count)."""
    t = f" {normalized} "
    if len(t) <= k:
        return {t} if normalized else set()
    return {t[i : i + k] for i in range(len(t) - k + 1)}


@lru_cache(maxsize=1)
def _permutations() -> tuple[np.ndarray, np.ndarray]:
    # Built once: MinHash() would otherwise draw them again for every message.
    return MinHash(num_perm=NUM_PERM, seed=1).permutations  # type: ignore[no-any-return]


def _hash32(b: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b, digest_size=4).digest(), "little")


#: blake2b of every shingle is most of a signature's cost, and texts share most shingles:
#: their hashes are kept (bounded: emptied when full, ~4 MB).
_SHINGLE_HASHES: dict[str, int] = {}
_MAX_SHINGLE_HASHES = 1 << 15


def _shingle_hashes(shingles: list[str]) -> list[int]:
    hashes: list[int | None] = list(map(_SHINGLE_HASHES.get, shingles))
    if None in hashes:
        if len(_SHINGLE_HASHES) + len(shingles) > _MAX_SHINGLE_HASHES:
            _SHINGLE_HASHES.clear()
        for i, h in enumerate(hashes):
            if h is None:
                hashes[i] = _SHINGLE_HASHES[shingles[i]] = _hash32(shingles[i].encode("utf-8"))
    return cast(list[int], hashes)  # no None left


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch pre-mixes every hash with it)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    out: np.ndarray = h ^ (h >> np.uint32(16))
    return out


def _minimums(shingle_sets: Sequence[set[str]]) -> list[np.ndarray | None]:
    """Each set's MinHash as NUM_PERM 16-bit values (None: no shingles), in one numpy pass
    over all their shingles.

    datasketch's ``MinHash(scheme="affine32").update_batch`` computed directly (same
    values): each shingle's 32-bit hash pre-mixed by the finalizer, then a·h + b mod 2^32
    per permutation (uint32 arithmetic wraps), the minimum per permutation and set.
    """
    sizes = [len(s) for s in shingle_sets]
    out: list[np.ndarray | None] = [None] * len(shingle_sets)
    hv = np.array(_shingle_hashes([x for s in shingle_sets for x in s]), dtype=np.uint32)
    if not hv.size:
        return out
    a, b = _permutations()
    # one row per permutation: the minimum per set is a reduction along contiguous memory
    phv = a[:, None] * _fmix32(hv)[None, :] + b[:, None]
    starts = np.cumsum([0, *sizes[:-1]])
    filled = [i for i, n in enumerate(sizes) if n]
    mins = (np.minimum.reduceat(phv, starts[filled], axis=1) & 0xFFFF).T.astype("<u2")
    for i, row in zip(filled, mins, strict=True):
        out[i] = row
    return out


def signatures(shingle_sets: Sequence[set[str]]) -> list[list[int]]:
    """``signature`` of each set (one numpy pass over all their shingles)."""
    return [[] if row is None else row.tolist() for row in _minimums(shingle_sets)]


def _packed_row(row: np.ndarray | None) -> str:
    """A signature as an entry stores it: its 16-bit values little-endian, as hex (one
    ``bytes.fromhex`` reads the signatures of all of a customer's entries at once)."""
    return "" if row is None else row.tobytes().hex()


def _packed(sig: str | list[int]) -> str:
    """An entry's signature packed (a list: written before the packing)."""
    return sig if isinstance(sig, str) else _packed_row(np.asarray(sig, dtype="<u2"))


def signature(shingle_set: set[str]) -> list[int]:
    """MinHash of the shingles as 16-bit ints (empty list for no shingles).

    b-bit MinHash: the low 16 bits halve the stored size; a false match costs 1/65536.
    """
    return signatures([shingle_set])[0]


def estimate_similarity(sig_a: Sequence[int], n_a: int, sig_b: Sequence[int], n_b: int) -> float:
    """max(Jaccard, containment) estimated from two MinHash signatures and set sizes."""
    if not sig_a or not sig_b or len(sig_a) != len(sig_b):
        return 0.0
    same: int = sum(map(operator.eq, sig_a, sig_b))  # numpy costs more for 64 values
    return _from_matches(same, len(sig_a), n_a, n_b)


def _from_matches(same: int, size: int, n_a: int, n_b: int) -> float:
    """``estimate_similarity`` from the number of equal values of two signatures."""
    jac = same / size
    if min(n_a, n_b) < _MIN_SHINGLES_CONTAINMENT:
        return jac
    inter = jac * (n_a + n_b) / (1.0 + jac)
    return min(1.0, max(jac, inter / min(n_a, n_b)))


def _similarities(sig: str, n: int, entries: Sequence[DedupEntry]) -> list[float]:
    """``estimate_similarity`` of a packed signature and each entry's, in one comparison."""
    out = [0.0] * len(entries)
    packed = [_packed(e.sig) for e in entries]
    rows = [i for i, p in enumerate(packed) if p and len(p) == len(sig)]
    if not sig or not rows:
        return out
    mine = np.frombuffer(bytes.fromhex(sig), dtype="<u2")
    theirs = np.frombuffer(bytes.fromhex("".join(packed[i] for i in rows)), dtype="<u2")
    same = (theirs.reshape(len(rows), mine.size) == mine).sum(axis=1).tolist()
    for i, k in zip(rows, same, strict=True):
        out[i] = _from_matches(k, mine.size, n, entries[i].n)
    return out


# ---------------------------------------------------------------- state


def _id_hash(msg: InboundMessage) -> int:
    return _h64(f"{msg.channel.value}\x1f{msg.channel_message_id}")


def _epoch(now: datetime) -> float:
    return now.timestamp()


def _live(entries: list[DedupEntry], now: datetime, config: DedupConfig) -> list[DedupEntry]:
    """The entries not older than the window, at most ``max_entries`` newest (``entries``
    itself when none is dropped)."""
    cutoff = _epoch(now) - config.window_s
    kept = [e for e in entries if e.at >= cutoff][-config.max_entries :]
    return entries if len(kept) == len(entries) else kept


def expire(state: CustomerDedupState, now: datetime, config: DedupConfig) -> CustomerDedupState:
    """State without entries older than the window, capped to ``max_entries`` newest."""
    kept = _live(state.entries, now, config)
    return state if kept is state.entries else state.model_copy(update={"entries": kept})


Fingerprint = tuple[int, str, int]


def fingerprint(msg: InboundMessage) -> Fingerprint:
    """(text hash, packed MinHash signature, shingle count): compute once, pass to both
    calls."""
    return fingerprints([msg])[0]


def fingerprints(msgs: Sequence[InboundMessage]) -> list[Fingerprint]:
    """``fingerprint`` of each message (the signatures in one numpy pass)."""
    norms = [normalize_text(m.text) for m in msgs]
    sets = [shingles(n) for n in norms]
    return [
        (text_hash(n), _packed_row(row), len(sh))
        for n, sh, row in zip(norms, sets, _minimums(sets), strict=True)
    ]


def check_duplicate(
    state: CustomerDedupState,
    msg: InboundMessage,
    now: datetime,
    config: DedupConfig | None = None,
    fp: Fingerprint | None = None,
) -> DedupDecision:
    """Is ``msg`` a repeat of a message this customer sent within the window?

    A message already remembered (the same record again: a broker redelivery, a replay
    after a crash) decides as it did the first time (``replayed``), so it keeps one outcome.
    """
    again = replayed(state, msg)
    if again is not None:
        return again
    cfg = config or DedupConfig()
    live = _live(state.entries, now, cfg)
    if not live:
        return DedupDecision(is_duplicate=False)
    idh = _id_hash(msg)
    for e in reversed(live):
        if e.id_hash == idh:
            return _duplicate_of(e, "exact_id")
    th, sig, n = fp or fingerprint(msg)
    if th:
        for e in reversed(live):
            if e.text_hash == th:
                return _duplicate_of(e, "same_text")
    best: DedupEntry | None = None
    best_sim = 0.0
    sims = _similarities(sig, n, live)
    for e, sim in zip(reversed(live), reversed(sims), strict=True):
        # newest first: ties go to the most recent case
        if sim > best_sim:
            best, best_sim = e, sim
    if best is not None and best_sim >= cfg.near_threshold:
        return _duplicate_of(best, "near", round(best_sim, 4))
    return DedupDecision(is_duplicate=False, similarity=round(best_sim, 4))


def _duplicate_of(
    entry: DedupEntry, reason: DuplicateReason, similarity: float = 1.0
) -> DedupDecision:
    return DedupDecision(
        is_duplicate=True,
        duplicate_of=entry.message_id,
        reason=reason,
        case_id=entry.case_id,
        similarity=similarity,
    )


def replayed(state: CustomerDedupState, msg: InboundMessage) -> DedupDecision | None:
    """The first decision again for a record already remembered; None when it was not.

    The record decides as it did: a duplicate of the earlier message that shares its case,
    or not a duplicate when it opened its case itself.
    """
    own = next((e for e in state.entries if e.message_id == msg.message_id), None)
    if own is None:
        return None
    first = next((e for e in state.entries if e.case_id == own.case_id), own)
    if own.case_id is None or first is own:
        return DedupDecision(is_duplicate=False)
    return _duplicate_of(first, "exact_id").model_copy(update={"case_id": own.case_id})


def remember(
    state: CustomerDedupState,
    msg: InboundMessage,
    case_id: str | None,
    now: datetime,
    config: DedupConfig | None = None,
    fp: Fingerprint | None = None,
) -> CustomerDedupState:
    """New state with ``msg`` remembered (expired entries dropped, cap applied).

    A platform retry of a message already remembered does not add an entry.
    """
    entries = _remembered(state.entries, msg, case_id, now, config or DedupConfig(), fp)
    return state if entries is state.entries else state.model_copy(update={"entries": entries})


def _remembered(
    entries: list[DedupEntry],
    msg: InboundMessage,
    case_id: str | None,
    now: datetime,
    cfg: DedupConfig,
    fp: Fingerprint | None,
) -> list[DedupEntry]:
    """``remember``'s entries (``entries`` itself when nothing changes)."""
    live = _live(entries, now, cfg)
    idh = _id_hash(msg)
    if any(e.message_id == msg.message_id or e.id_hash == idh for e in live):
        return live
    th, sig, n = fp or fingerprint(msg)
    entry = DedupEntry(
        message_id=msg.message_id,
        case_id=case_id,
        id_hash=idh,
        text_hash=th,
        sig=sig,
        n=n,
        at=_epoch(now),
    )
    return [*live, entry][-cfg.max_entries :]


def count_contact(
    state: CustomerDedupState, now: datetime, window_s: float, cap: int, counts: bool
) -> tuple[CustomerDedupState, int]:
    """The number of contacts within ``window_s`` before this message, and the state with
    this message's contact added when it ``counts`` (not a duplicate), at most ``cap`` kept."""
    times, recent = _counted(state.contacts, now, window_s, cap, counts)
    return state.model_copy(update={"contacts": times}), recent


def _counted(
    contacts: list[float], now: datetime, window_s: float, cap: int, counts: bool
) -> tuple[list[float], int]:
    now_s = _epoch(now)
    times = [t for t in contacts if now_s - t < window_s]
    recent = len(times)
    if counts:
        times = [*times, now_s][-cap:]
    return times, recent


def remember_and_count(
    state: CustomerDedupState,
    msg: InboundMessage,
    case_id: str | None,
    now: datetime,
    config: DedupConfig,
    fp: Fingerprint | None,
    *,
    window_s: float,
    cap: int,
    counts: bool,
) -> tuple[CustomerDedupState, int]:
    """``remember`` then ``count_contact`` (its ``window_s``, ``cap`` and ``counts``) in one
    new state: the agent's per-message update, one state object instead of two copies."""
    entries = _remembered(state.entries, msg, case_id, now, config, fp)
    times, recent = _counted(state.contacts, now, window_s, cap, counts)
    return CustomerDedupState(entries=entries, contacts=times), recent
