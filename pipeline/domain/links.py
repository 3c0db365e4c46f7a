"""Signed, expiring links to the external responder's answer page (the operator console).

The e-mail to an external party (a store director, who has no account) carries, beside the
``reply+TOKEN@`` address, a link ``<console_public_url>/respond/<token>``. The token holds
the case id, the sub-request id and an expiry time, signed with HMAC-SHA256 under
``settings.reply_token_secret`` (domain-separated from the reply addresses), so the page
needs no login and the link cannot be forged or extended. The expiry is derived from the
sub-request's creation time: the same sub-request always gets the same link (the e-mail
stays byte-for-byte deterministic for resends).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from pipeline.config import Settings

__all__ = ["ResponderLink", "parse_responder_token", "responder_token", "responder_url"]

_MAC_BYTES = 16
_DOMAIN = b"responder-link\x00"


@dataclass(frozen=True)
class ResponderLink:
    """What a genuine responder token says."""

    case_id: str
    sub_request_id: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(settings: Settings, payload: bytes) -> bytes:
    key = settings.reply_token_secret.get_secret_value().encode("utf-8")
    return hmac.new(key, _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def responder_token(
    sub_request_id: str, case_id: str, created_at: datetime, settings: Settings
) -> str:
    """The URL-safe token for one sub-request, valid ``console_link_ttl_days`` after creation."""
    expires = created_at + timedelta(days=settings.console_link_ttl_days)
    payload = orjson.dumps({"c": case_id, "s": sub_request_id, "e": int(expires.timestamp())})
    return f"{_b64(payload)}.{_b64(_mac(settings, payload))}"


def responder_url(
    sub_request_id: str, case_id: str, created_at: datetime, settings: Settings
) -> str | None:
    """The answer page's URL, or None when no console URL is configured."""
    if not settings.console_public_url:
        return None
    token = responder_token(sub_request_id, case_id, created_at, settings)
    return f"{settings.console_public_url.rstrip('/')}/respond/{token}"


def parse_responder_token(token: str, settings: Settings, *, now: datetime) -> ResponderLink | None:
    """The link's ids when the token is genuine and not expired at ``now``, else None."""
    body, sep, mac = token.partition(".")
    if not sep or len(token) > 1000:
        return None
    try:
        payload = _unb64(body)
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _mac(settings, payload)):
        return None
    try:
        data = orjson.loads(payload)
        link = ResponderLink(
            case_id=str(data["c"]),
            sub_request_id=str(data["s"]),
            expires_at=datetime.fromtimestamp(int(data["e"]), UTC),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return link if now < link.expires_at else None
