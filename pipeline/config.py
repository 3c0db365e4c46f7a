"""One frozen settings object, read from the environment.

Every variable is prefixed ``PIPELINE_`` except the broker address, which is the
conventional ``KAFKA_BOOTSTRAP_SERVERS``. When it is unset the embedded Tansu
broker is started (``pipeline.broker``).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG_DIR = PACKAGE_DIR / "resources"


class Settings(BaseSettings):
    """All configuration of the router. Frozen: build a new one to change it."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", frozen=True, extra="ignore")

    # --- broker
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="host:port[,host:port]; unset → the embedded Tansu broker is started.",
    )
    app_id: str = Field(default="care-router", description="Faust app id (consumer group).")
    topic_prefix: str = Field(default="care.", description="Prefix of every topic name.")
    partitions: int = Field(default=2, ge=1, description="Partitions of each topic.")
    replication_factor: int = Field(default=1, ge=1)
    fetch_max_wait_ms: int = Field(
        default=100, ge=1, le=10_000, description="Consumer fetch wait (Faust hard-codes 1500)."
    )
    session_timeout_s: float = Field(default=10.0, gt=0)
    commit_interval_s: float = Field(
        default=2.8,
        gt=0,
        description="How often a worker commits its processed input offsets (Faust's "
        "broker_commit_interval): at most about this much input is read again after a crash.",
    )
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    produce_timeout_s: float = Field(default=10.0, gt=0, description="Ack wait before 503.")
    producer_linger_ms: int = Field(
        default=0,
        ge=0,
        le=1_000,
        description="Worker producer (changelogs and outputs): wait to fill a produce request.",
    )
    table_standby_replicas: int = Field(
        default=1,
        ge=0,
        description="Standby copies of each table partition kept by other workers: a takeover "
        "starts from them instead of the whole changelog; each copy reads its tables' "
        "changelogs as they are written (CPU and memory on every worker).",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The worker's event loop: uvloop (libuv) or the standard library's.",
    )
    shutdown_grace_s: float = Field(
        default=15.0, gt=0, description="A worker still stopping after this is ended hard."
    )
    lag_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="Consumer lag measured, and the broker asked (worker and console), every.",
    )
    stall_after_s: float = Field(
        default=300.0,
        gt=0,
        description="An input partition with records waiting and no processed (committed) "
        "progress for this long is stalled: /healthz answers 503 so a supervisor restarts "
        "the worker.",
    )
    recovery_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A worker not ready (joining its group, restoring its tables) for this "
        "long answers /healthz 503 so a supervisor restarts it (/readyz is 503 all along).",
    )

    # --- logs
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: human-readable lines; json: one JSON object per line (log shippers).",
    )

    # --- worker
    web_host: str = Field(default="127.0.0.1", description="Worker web bind address.")
    web_port: int = Field(default=6066, ge=0, le=65535, description="/metrics, /healthz.")
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "care-router",
        description="Worker state and trained-model cache (outside the repository).",
    )
    classify_batch_size: int = Field(default=256, ge=1)
    classify_batch_within_s: float = Field(default=0.05, gt=0)

    # --- ingest
    ingest_host: str = Field(default="127.0.0.1")
    ingest_port: int = Field(default=8080, ge=0, le=65535)
    smtp_host: str = Field(default="127.0.0.1")
    smtp_port: int = Field(default=2525, ge=0, le=65535)
    support_addresses: list[str] = Field(
        default_factory=lambda: ["support@example.com"],
        description="E-mail addresses the SMTP adapter accepts mail for.",
    )
    reply_token_secret: SecretStr = Field(
        default=SecretStr("change-me"), description="HMAC key of reply+TOKEN@ addresses."
    )
    reply_domain: str = Field(
        default="example.com", description="Domain of reply+TOKEN@ addresses for external parties."
    )
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, description="Per-request limit.")
    max_text_chars: int = Field(default=20_000, ge=100, description="Longer text is truncated.")
    smtp_max_message_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="SMTP DATA size limit (with attachments)."
    )
    telegram_secret_token: SecretStr | None = Field(default=None)
    twilio_auth_token: SecretStr | None = Field(default=None)
    chatwoot_hmac_token: SecretStr | None = Field(default=None)
    generic_api_token: SecretStr | None = Field(
        default=None, description="Bearer token for /ingest and /webhooks/voice."
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8080",
        description="URL the platforms call, as they see it (behind a proxy: the proxy's): "
        "Twilio signs it, and Twilio status callbacks are sent to it.",
    )
    whatsapp_app_secret: SecretStr | None = Field(
        default=None, description="Meta app secret: X-Hub-Signature-256 of WhatsApp webhooks."
    )
    whatsapp_verify_token: SecretStr | None = Field(
        default=None, description="hub.verify_token of the WhatsApp webhook GET handshake."
    )
    vk_secret: SecretStr | None = Field(
        default=None, description="VK Callback API secret key (the 'secret' field)."
    )
    vk_confirmation_code: str | None = Field(
        default=None, description="The string VK's 'confirmation' request must be answered with."
    )
    vk_group_id: int | None = Field(
        default=None, description="VK community id; set → events of other communities refused."
    )
    ingest_allow_unauthenticated: bool = Field(
        default=False,
        description="Let `pipeline ingest` listen on a non-loopback address although an "
        "endpoint has no credentials configured.",
    )

    # --- configuration files
    rules_path: Path = Field(default=DEFAULT_CONFIG_DIR / "workflow.yaml")
    rules_source: Literal["newest", "topic", "file"] = Field(
        default="newest",
        description="Which workflow a worker runs: the newest of file and config topic, the "
        "topic whenever it holds one (hosts whose files may be stale), or only the file.",
    )
    kb_dir: Path = Field(default=DEFAULT_CONFIG_DIR / "kb")
    customers_path: Path | None = Field(
        default=DEFAULT_CONFIG_DIR / "customers.csv",
        description="Customer directory (CSV/JSON: ids, names, tiers, identities) ingest imports "
        "at start; the shipped demo directory by default, empty → none.",
    )
    model_path: Path | None = Field(
        default=None,
        description="Trained classifier; unset → default model (trained on first use).",
    )
    model_target_precision: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Abstention: per language, the lowest confidence threshold whose answers "
        "reach this precision on held-out paraphrase families (chosen at training).",
    )

    # --- notify
    smtp_relay_host: str = Field(default="127.0.0.1")
    smtp_relay_port: int = Field(default=25, ge=0, le=65535)
    smtp_relay_user: str | None = None
    smtp_relay_password: SecretStr | None = None
    mail_from: str = Field(default="support@example.com")
    telegram_api_base_url: str = Field(default="http://127.0.0.1:8081")
    telegram_bot_token: SecretStr | None = None
    chatwoot_api_base_url: str = Field(default="http://127.0.0.1:8082")
    chatwoot_api_token: SecretStr | None = None
    chatwoot_account_id: str = "1"
    twilio_api_base_url: str = Field(default="http://127.0.0.1:8083")
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_from_number: str = "+10000000000"
    whatsapp_api_base_url: str = Field(
        default="http://127.0.0.1:8084",
        description="WhatsApp Cloud API base (real: https://graph.facebook.com/v21.0).",
    )
    whatsapp_access_token: SecretStr | None = None
    whatsapp_phone_number_id: str | None = Field(
        default=None, description="Business number to send from when a reply does not say."
    )
    vk_api_base_url: str = Field(
        default="http://127.0.0.1:8085",
        description="VK API base (real: https://api.vk.com/method).",
    )
    vk_access_token: SecretStr | None = Field(
        default=None, description="Community access token for messages.send."
    )
    vk_api_version: str = Field(default="5.199", description="VK API version sent as 'v'.")
    delivery_max_attempts: int = Field(default=5, ge=1)
    delivery_backoff_s: float = Field(default=0.5, gt=0)
    delivery_backoff_max_s: float = Field(
        default=30.0, gt=0, description="Cap of one backoff delay (before Retry-After)."
    )
    delivery_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of one HTTP/SMTP delivery attempt."
    )
    delivery_rate_limits: dict[str, float] = Field(
        default_factory=lambda: {
            "telegram": 25.0,  # Bot API: ~30 msg/s per bot overall
            "chatwoot": 10.0,
            "twilio": 1.0,  # one long-code number: 1 message segment/s
            "whatsapp": 20.0,  # Cloud API: 80 msg/s per number; stay well under
            "vk": 15.0,  # community token: 20 requests/s
            "email": 5.0,
            "webhook": 20.0,
        },
        description="Sends/s per transport (token bucket, burst max(1, rate)); absent → no limit.",
    )
    smtp_relay_starttls: bool = Field(default=False, description="STARTTLS to the relay.")
    outbound_webhook_url: str | None = Field(
        default=None,
        description="POST target (JSON Reply) for webchat/api/social; unset → undeliverable.",
    )
    outbound_webhook_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the outbound webhook."
    )

    # --- operator console (pipeline console)
    console_host: str = Field(default="127.0.0.1", description="Console bind address.")
    console_port: int = Field(default=8090, ge=0, le=65535, description="Console HTTP port.")
    console_public_url: str | None = Field(
        default=None,
        description="Console URL as external parties reach it; set → e-mails to them carry "
        "a signed link to the answer page.",
    )
    console_link_ttl_days: float = Field(
        default=14.0, gt=0, description="How long an answer-page link stays valid."
    )
    console_users: str | None = Field(
        default=None,
        description="Console users as JSON: [{name, password (scrypt hash), role, department}].",
    )
    console_users_path: Path | None = Field(
        default=None, description="File with the console users (JSON, same shape)."
    )
    console_session_secret: SecretStr | None = Field(
        default=None,
        description="Signs session cookies; the same on every console replica (unset → "
        "random per process: sessions do not survive a restart).",
    )
    console_session_hours: float = Field(default=12.0, gt=0, description="Session lifetime.")
    console_db_path: Path | None = Field(
        default=None,
        description="SQLite read model (rebuilt from the topics at start); unset → a file "
        "under data_dir.",
    )
    console_secure_cookies: bool = Field(
        default=False, description="Mark cookies Secure (set behind HTTPS)."
    )

    # --- similarity
    case_retention_days: float = Field(
        default=30.0,
        ge=7.0,  # recontacts within 7 days must still find their case
        description="Resolved cases are forgotten by the workers' tables this long after "
        "resolution (the case-events topic keeps the audit trail).",
    )
    dedup_window_s: float = Field(default=24 * 3600, gt=0)

    # --- case lifecycle
    thread_window_hours: float = Field(
        default=168.0,
        gt=0,
        description="A customer's new message this long after their case's last activity "
        "(open, or resolved) can still continue that case when it is about it.",
    )
    survey_expiry_hours: float = Field(
        default=72.0,
        gt=0,
        description="A survey answer later than this after the question is not scored.",
    )

    @field_validator("customers_path", mode="before")
    @classmethod
    def _no_directory(cls, value: object) -> object:
        # PIPELINE_CUSTOMERS_PATH= (empty) turns the shipped directory off
        return None if isinstance(value, str) and not value.strip() else value

    def topic(self, name: str) -> str:
        """Full topic name with the configured prefix."""
        return f"{self.topic_prefix}{name}"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only; names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the process environment (cached).

    ConfigError naming each bad variable and what is wrong with it (not its value: it may be a
    secret), instead of pydantic's traceback.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a settings error's location (and where inside it)."""
    if not loc:
        return "settings"  # a check of several variables together
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    var = alias.choices[0] if isinstance(alias, AliasChoices) else f"PIPELINE_{name.upper()}"
    return ".".join([str(var), *map(str, loc[1:])])
