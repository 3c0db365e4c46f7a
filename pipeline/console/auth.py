"""Console users, passwords (scrypt) and signed session cookies. Pure functions.

Users come from ``PIPELINE_CONSOLE_USERS`` (JSON) or ``PIPELINE_CONSOLE_USERS_PATH`` (a JSON
file of the same shape)::

    [{"name": "anna", "password": "scrypt$16384$8$1$<salt>$<hash>", "role": "supervisor"},
     {"name": "ivan", "password": "scrypt$...", "role": "agent", "department": "loyalty-it"}]

A supervisor sees every case; an agent sees the cases and sub-requests of their department
only. ``pipeline console hash-password`` prints a hash to paste there.

A session is a cookie ``<payload>.<hmac>``: the payload holds a random session id, the user
name (empty before login) and the expiry. The CSRF token of every form is an HMAC of the
session id, so it needs no server-side storage and works across console replicas that share
``PIPELINE_CONSOLE_SESSION_SECRET``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.config import Settings
from pipeline.errors import ConfigError

__all__ = [
    "DEMO_USERS",
    "LoginThrottle",
    "Session",
    "User",
    "csrf_token",
    "hash_password",
    "load_users",
    "new_session",
    "read_session",
    "session_cookie",
    "users_json",
    "verify_password",
]

Role = Literal["supervisor", "agent"]

# scrypt cost: 2^14 × 8 × 1 (≈16 MiB, ~50 ms) — the interactive-login setting of RFC 7914.
_N, _R, _P = 2**14, 8, 1


class User(BaseModel):
    """One console user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    password: str = Field(description="scrypt$N$r$p$salt$hash (hash-password).")
    role: Role = "agent"
    department: str | None = Field(default=None, description="An agent's department.")

    def sees(self, department: str | None) -> bool:
        """Whether this user may see work of ``department``."""
        return self.role == "supervisor" or (
            department is not None and department == self.department
        )


_USERS = TypeAdapter(list[User])

#: The demo's and the browser tests' logins: (name, password, role, department).
DEMO_USERS: tuple[tuple[str, str, Role, str | None], ...] = (
    ("supervisor", "demo-supervisor", "supervisor", None),
    ("loyalty", "demo-loyalty", "agent", "loyalty-it"),
    ("logistics", "demo-logistics", "agent", "logistics"),
)


def users_json(users: tuple[tuple[str, str, Role, str | None], ...]) -> str:
    """``PIPELINE_CONSOLE_USERS`` for (name, plain password, role, department) tuples."""
    return orjson.dumps(
        [
            {"name": n, "password": hash_password(p), "role": r, "department": d}
            for n, p, r, d in users
        ]
    ).decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of a password."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the stored scrypt hash (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=128 * 1024 * 1024,
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


def load_users(settings: Settings) -> dict[str, User]:
    """The configured users by name; ConfigError for a malformed list."""
    raw: str | None = settings.console_users
    if settings.console_users_path is not None:
        try:
            raw = Path(settings.console_users_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read console users: {exc}") from exc
    if not raw:
        return {}
    try:
        users = _USERS.validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(f"console users are malformed: {exc}") from exc
    for u in users:
        if u.role == "agent" and not u.department:
            raise ConfigError(f"console user {u.name!r} is an agent without a department")
    return {u.name: u for u in users}


@dataclass
class LoginThrottle:
    """Refuses a login name after ``limit`` failed attempts within ``window`` (per process;
    scrypt already makes each guess cost ~50 ms, this caps the guesses per name)."""

    limit: int = 5
    window: timedelta = timedelta(minutes=15)
    failures: dict[str, list[datetime]] = field(default_factory=dict)

    def blocked(self, name: str, now: datetime) -> bool:
        """Whether ``name`` may not try now."""
        recent = [t for t in self.failures.get(name, []) if now - t < self.window]
        if recent:
            self.failures[name] = recent
        else:
            self.failures.pop(name, None)
        return len(recent) >= self.limit

    def failed(self, name: str, now: datetime) -> None:
        """Count a failed attempt."""
        if len(self.failures) > 10_000:  # a flood of made-up names must not grow memory
            self.failures.clear()
        self.failures.setdefault(name, []).append(now)

    def succeeded(self, name: str) -> None:
        """Forget the failures of a name that logged in."""
        self.failures.pop(name, None)


@dataclass(frozen=True)
class Session:
    """A browser session: anonymous (user '') until login."""

    sid: str
    user: str
    expires_at: int


def new_session(user: str, now: datetime, settings: Settings) -> Session:
    """A fresh session (a new id on every login: no session fixation)."""
    expires = now + timedelta(hours=settings.console_session_hours)
    return Session(secrets.token_urlsafe(18), user, int(expires.timestamp()))


def _mac(secret: bytes, purpose: bytes, data: bytes) -> str:
    digest = hmac.new(secret, purpose + b"\x00" + data, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def session_cookie(session: Session, secret: bytes) -> str:
    """The signed cookie value of a session."""
    payload = base64.urlsafe_b64encode(
        orjson.dumps({"s": session.sid, "u": session.user, "e": session.expires_at})
    ).decode("ascii")
    return f"{payload}.{_mac(secret, b'session', payload.encode())}"


def read_session(value: str | None, secret: bytes, now: datetime) -> Session | None:
    """The session of a genuine, unexpired cookie, else None."""
    if not value or len(value) > 2000:
        return None
    payload, sep, mac = value.partition(".")
    if not sep or not hmac.compare_digest(mac, _mac(secret, b"session", payload.encode())):
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(payload))
        session = Session(str(data["s"]), str(data["u"]), int(data["e"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return session if now.timestamp() < session.expires_at else None


def csrf_token(session: Session, secret: bytes) -> str:
    """The CSRF token of every form of this session."""
    return _mac(secret, b"csrf", session.sid.encode())
