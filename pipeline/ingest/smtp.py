"""The SMTP adapter (aiosmtpd handler): customer mail to support addresses, and external
parties' answers to ``reply+TOKEN@reply_domain`` addresses.

RCPT is accepted only for ``settings.support_addresses`` and genuine reply-token
addresses (550 otherwise). DATA is answered 250 only after the broker acknowledged
every record; broker down → 451 (the sending MTA retries); unusable mail → 554 and a
dead-letter record.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import BrokerUnavailable, InvalidInput
from pipeline.ingest.service import IngestService

__all__ = ["SmtpHandler"]

log = logging.getLogger(__name__)


class SmtpHandler:
    """aiosmtpd handler bound to one IngestService."""

    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        ours, tokens = self.service.classify_recipients([address])
        if not ours and not tokens:
            log.info("smtp: refused recipient %s", address[:200])
            return "550 5.1.1 Recipient address rejected: not a support address"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        if not isinstance(raw, bytes):
            return "554 5.6.0 No message content"
        try:
            result = await self.service.accept_email_checked(raw, list(envelope.rcpt_tos))
        except BrokerUnavailable as exc:
            log.warning("smtp: broker unavailable: %s", exc)
            return "451 4.3.0 Temporary failure: message not stored, try again later"
        except InvalidInput as exc:
            detail = str(exc).replace("\r", " ").replace("\n", " ")[:200]
            return f"554 5.6.0 Message rejected: {detail}"
        ref = result.message.message_id if result.message else "task-update"
        return f"250 2.0.0 OK queued as {ref}"
