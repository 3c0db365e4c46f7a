"""Reply addresses for external parties: ``reply+<token>@<reply_domain>``.

The token carries the case id and the sub-request id plus a truncated HMAC-SHA256
(``settings.reply_token_secret``), so a reply can be routed back without any lookup
and an address cannot be forged. It is lower-case base32 without padding, which is
safe in an e-mail local part and survives case-folding mail servers.

Ids of the usual ``<prefix>_<24 hex>`` shape (``events.derive_id``) are packed into
13 bytes (a prefix code + 12 raw bytes) so the local part stays within 64 characters;
any other id is carried verbatim (longer token, still valid).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from pipeline.config import Settings

__all__ = ["parse_reply_address", "reply_address", "reply_token", "scrub_tokens"]

_LOCAL_PREFIX = "reply+"
_MAC_BYTES = 6
_VERSION = 1
_DERIVED = re.compile(r"^([a-z]{1,8})_([0-9a-f]{24})$")
#: Prefix codes 0..63 for common id prefixes; 64..127 = literal prefix; 128..255 = raw id.
_KNOWN_PREFIXES: tuple[str, ...] = ("case", "sr", "sub", "req", "task", "msg", "c", "s")


def _pack_id(value: str) -> bytes:
    m = _DERIVED.match(value)
    if m:
        prefix, hexpart = m.group(1), m.group(2)
        raw = bytes.fromhex(hexpart)
        if prefix in _KNOWN_PREFIXES:
            return bytes([_KNOWN_PREFIXES.index(prefix)]) + raw
        return bytes([64 + len(prefix)]) + prefix.encode("ascii") + raw
    data = value.encode("utf-8")
    if not data or len(data) > 127:
        raise ValueError(f"id must be 1..127 bytes: {value[:40]!r}")
    return bytes([128 + len(data)]) + data


def _unpack_id(buf: bytes, pos: int) -> tuple[str, int]:
    tag = buf[pos]
    pos += 1
    if tag < 64:
        if tag >= len(_KNOWN_PREFIXES) or pos + 12 > len(buf):
            raise ValueError("bad id")
        return f"{_KNOWN_PREFIXES[tag]}_{buf[pos : pos + 12].hex()}", pos + 12
    if tag < 128:
        n = tag - 64
        end = pos + n + 12
        if n == 0 or end > len(buf):
            raise ValueError("bad id")
        prefix = buf[pos : pos + n].decode("ascii")
        return f"{prefix}_{buf[pos + n : end].hex()}", end
    n = tag - 128
    if n == 0 or pos + n > len(buf):
        raise ValueError("bad id")
    return buf[pos : pos + n].decode("utf-8"), pos + n


def _mac(settings: Settings, payload: bytes) -> bytes:
    key = settings.reply_token_secret.get_secret_value().encode("utf-8")
    return hmac.new(key, b"reply-token\x00" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def reply_token(sub_request_id: str, case_id: str, settings: Settings) -> str:
    """The token alone (lower-case base32, no padding)."""
    payload = bytes([_VERSION]) + _pack_id(case_id) + _pack_id(sub_request_id)
    raw = payload + _mac(settings, payload)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def reply_address(sub_request_id: str, case_id: str, settings: Settings) -> str:
    """``reply+<token>@<settings.reply_domain>`` for an external party's answer."""
    token = reply_token(sub_request_id, case_id, settings)
    return f"{_LOCAL_PREFIX}{token}@{settings.reply_domain}"


def parse_reply_address(addr: str, settings: Settings) -> tuple[str, str] | None:
    """(case_id, sub_request_id) of a genuine reply address, else None.

    Accepts a bare address or ``Name <address>``; the domain must be the reply domain.
    """
    text = addr.strip()
    if "<" in text and text.endswith(">"):
        text = text[text.rfind("<") + 1 : -1]
    local, sep, domain = text.rpartition("@")
    if not sep or domain.lower() != settings.reply_domain.lower():
        return None
    local = local.lower()
    if not local.startswith(_LOCAL_PREFIX):
        return None
    token = local[len(_LOCAL_PREFIX) :]
    if not token or len(token) > 400 or not token.isascii() or not token.isalnum():
        return None
    try:
        raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= _MAC_BYTES + 1 or raw[0] != _VERSION:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(settings, payload)):
        return None
    try:
        case_id, pos = _unpack_id(payload, 1)
        sub_request_id, pos = _unpack_id(payload, pos)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    if pos != len(payload):
        return None
    return case_id, sub_request_id


_TOKEN_RUN = re.compile(r"\b[a-z2-7]{20,}\b")


def scrub_tokens(text: str, reply_domain: str | None = None) -> str:
    """``text`` without ``reply+…@`` addresses, addresses of ``reply_domain`` or bare tokens.

    Whatever reaches a customer goes through it: a token lets its holder answer as the
    external party. Tokens are lower-case base32 runs of 20+ characters: no Russian or
    English word is that long in that alphabet.
    """
    ours = rf"|[\w.+\-]+@{re.escape(reply_domain.lower())}" if reply_domain else ""
    addr = re.compile(rf"<?(?:mailto:)?(?:reply\+[\w.\-+]*@[\w.\-]+{ours})>?", re.IGNORECASE)
    out = addr.sub("", text)
    out = _TOKEN_RUN.sub("", out)
    out = re.sub(r"[ \t]{2,}", " ", out)
    return re.sub(r"[ \t]+([,.;:!?)])", r"\1", out).strip()
