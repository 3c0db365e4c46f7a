"""Every exception the router raises on purpose.

Hierarchy::

    PipelineError
    ├── ConfigError            bad settings, rules or KB files (fatal at start-up)
    ├── BrokerError            the broker cannot be started or reached
    │   └── BrokerUnavailable  a produce was not acknowledged in time (→ HTTP 503)
    ├── InvalidInput           a record or request that cannot be accepted (→ DLQ / HTTP 4xx)
    │   ├── DecodeError        bytes that are not valid JSON / UTF-8 / the event schema
    │   ├── PayloadTooLarge    over the configured size limit (→ HTTP 413)
    │   └── Unauthorized       missing or forged channel credentials (→ HTTP 401/403)
    ├── ModelError             a classifier artifact that cannot be loaded or trained
    └── DeliveryError          a reply or e-mail could not be delivered (retried, then DLQ)

Stages catch ``Exception`` around the pure core only to dead-letter the record and go on;
they never swallow ``BaseException`` (cancellation, Ctrl-C).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of all router errors."""


class ConfigError(PipelineError):
    """Settings, rules or knowledge-base files are invalid."""


class BrokerError(PipelineError):
    """The Kafka broker cannot be started or reached."""


class BrokerUnavailable(BrokerError):
    """A record was not acknowledged by the broker in time."""


class InvalidInput(PipelineError):
    """Input that cannot be accepted; ``field`` names the offending field when known."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class DecodeError(InvalidInput):
    """Bytes that do not decode into the expected event."""


class PayloadTooLarge(InvalidInput):
    """Input over the size limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=413)


class Unauthorized(InvalidInput):
    """Missing (401) or wrong (403) channel credentials."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message, status=status)


class ModelError(PipelineError):
    """A classifier artifact cannot be trained or loaded."""


class DeliveryError(PipelineError):
    """A reply or e-mail could not be delivered.

    ``status`` is the HTTP/SMTP status when there was one; ``transient`` says whether a
    retry may help (5xx, 429, connection errors) or not (other 4xx); ``retry_after`` is
    the wait in seconds the server asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.retry_after = retry_after
