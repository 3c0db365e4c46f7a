"""The ingest core shared by HTTP, SMTP and the eml import: identity, idempotency, publishing.

Order of writes for one message: customer directory records (if it changed), then the
InboundMessage — each acknowledged by the broker (acks=all) before the next and before
the caller answers 2xx. A failed publish raises BrokerUnavailable and nothing is
remembered, so the platform's retry starts over; a retry of an accepted message is
answered from a bounded LRU of recently accepted ids without publishing again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.bus import Publisher, Record, follow, read_all
from pipeline.codec import dead_letter, decode
from pipeline.config import Settings
from pipeline.domain.tokens import parse_reply_address, scrub_tokens
from pipeline.errors import BrokerUnavailable, DecodeError, InvalidInput
from pipeline.events import (
    CustomerRecord,
    DeliveryReceipt,
    Reply,
    ReplyKind,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.ingest.channels import BotCommand, PlatformReceipt
from pipeline.ingest.commands import greeting
from pipeline.ingest.email_parse import ParsedEmail, parse_email, to_parsed_message
from pipeline.ingest.identity import CustomerDirectory, Resolution, load_customers
from pipeline.ingest.message import ParsedMessage, build_inbound
from pipeline.ingest.reply_clean import clean_reply
from pipeline.metrics import Metrics

__all__ = ["Accepted", "IngestService", "MailResult"]

log = logging.getLogger(__name__)

#: The stage label of the adapters' metrics.
STAGE = "ingest"


@dataclass(frozen=True)
class Accepted:
    """An accepted customer message."""

    message_id: str
    customer_id: str
    duplicate: bool = False


@dataclass(frozen=True)
class MailResult:
    """What happened to one e-mail: a customer message and/or task updates."""

    message: Accepted | None
    task_updates: tuple[TaskUpdate, ...] = ()

    def describe(self) -> str:
        """One-line summary for the import command and logs."""
        parts: list[str] = []
        if self.message is not None:
            state = "duplicate" if self.message.duplicate else "accepted"
            parts.append(f"{self.message.message_id}\t{self.message.customer_id}\t{state}")
        for upd in self.task_updates:
            parts.append(f"{upd.update_id}\t{upd.case_id}\ttask-update:{upd.sub_request_id}")
        return "\n".join(parts)


class IngestService:
    """Accepts parsed messages and publishes them durably (one instance per process)."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        directory: CustomerDirectory | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        recent_size: int = 50_000,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        #: Served on the adapter's /metrics: messages{stage="ingest"}, dead letters.
        self.metrics = metrics if metrics is not None else Metrics()
        self.directory = directory if directory is not None else CustomerDirectory()
        self._clock = clock
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._recent_size = recent_size
        self._inflight: dict[str, asyncio.Future[Accepted]] = {}
        self._dir_lock = asyncio.Lock()

    # ------------------------------------------------------------ directory

    async def load_directory(self, *, idle_s: float = 0.5) -> int:
        """Rebuild the directory from the customers topic, then apply the import file."""
        records = await read_all(self.settings, [self.settings.topic("customers")], idle_s=idle_s)
        self.directory = CustomerDirectory.from_topic_records((r.key, r.value) for r in records)
        if self.settings.customers_path is not None:
            imported = load_customers(self.settings.customers_path, self._clock())
            plan = self.directory.plan_import(imported, self._clock())
            if plan is not None:
                await self._persist(plan)
        log.info("customer directory: %d customers", len(self.directory))
        return len(self.directory)

    def take_record(self, record: Record) -> None:
        """Apply a customers-topic record another ingest process (or this one) wrote.

        Several ingest processes each keep the directory in memory; following the compacted
        topic keeps a link or merge made by one visible to the others within moments. Records
        older than what the directory already holds (this process's own echoes, a re-read
        from the beginning) are ignored.
        """
        if record.key is None:
            return
        cid = record.key.decode("utf-8", "replace")
        known = self.directory.updated_at(cid)
        if record.value is None:
            at = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
            if known is not None and at >= known:
                self.directory.remove(cid)
            return
        try:
            rec = decode(CustomerRecord, record.value)
        except DecodeError as exc:
            log.error(
                "bad record at %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc
            )
            return
        if known is None or rec.updated_at >= known:
            self.directory.apply(rec)

    async def follow_directory(self) -> None:
        """Keep the directory in step with the customers topic (runs until cancelled)."""
        await follow(self.settings, self.settings.topic("customers"), self.take_record)

    async def _persist(self, resolution: Resolution) -> None:
        topic = self.settings.topic("customers")
        for rec in resolution.records:
            await self.publisher.send(topic, rec.profile.customer_id, rec)
        for cid in resolution.removed:
            await self.publisher.send_raw(topic, cid, None)
        self.directory.commit(resolution)

    # ------------------------------------------------------------ messages

    def recently_accepted(self, message_id: str) -> str | None:
        """Customer id of a message accepted recently (platform retry), else None."""
        return self._recent.get(message_id)

    async def accept(self, parsed: ParsedMessage) -> Accepted:
        """Publish one customer message (idempotent for recent retries)."""
        mid = parsed.message_id
        known = self._recent.get(mid)
        if known is not None:
            self._recent.move_to_end(mid)
            self._count("retry")
            return Accepted(mid, known, duplicate=True)
        pending = self._inflight.get(mid)
        if pending is not None:
            first = await asyncio.shield(pending)
            self._count("retry")
            return Accepted(mid, first.customer_id, duplicate=True)
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._inflight[mid] = future
        try:
            result = await self._publish(parsed)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: only concurrent retries re-raise it
            raise
        finally:
            self._inflight.pop(mid, None)
        future.set_result(result)
        self._remember(mid, result.customer_id)
        self._count("accepted")
        return result

    def _count(self, outcome: str) -> None:
        # accepted: published to inbound; retry: a platform's resend answered without a
        # second record; invalid: answered 4xx and dead-lettered.
        self.metrics.messages.labels(stage=STAGE, outcome=outcome).inc()

    async def _resolve(self, parsed: ParsedMessage, now: datetime) -> Resolution:
        """The customer of ``parsed``; directory changes are persisted first.

        One resolution at a time (one directory), and one that changes the directory keeps the
        turn until the broker acknowledged its records. A message waits for its turn at most
        ``produce_timeout_s``, then fails as a send would (503): in a broker outage each new
        customer's message waited for all before it, past the platforms' webhook timeouts.
        """
        try:
            async with asyncio.timeout(self.settings.produce_timeout_s):
                await self._dir_lock.acquire()
        except TimeoutError as exc:
            raise BrokerUnavailable(
                "customer directory busy: the broker has not acknowledged its earlier changes"
            ) from exc
        try:
            resolution = self.directory.resolve(
                parsed.identities, now=now, name=parsed.name, customer_id=parsed.customer_id
            )
            if resolution.records or resolution.removed:
                await self._persist(resolution)
        finally:
            self._dir_lock.release()
        return resolution

    async def _publish(self, parsed: ParsedMessage) -> Accepted:
        now = self._clock()
        resolution = await self._resolve(parsed, now)
        inbound = build_inbound(parsed, resolution.profile, self.settings, now)
        await self.publisher.send(self.settings.topic("inbound"), inbound.customer_id, inbound)
        return Accepted(inbound.message_id, inbound.customer_id)

    async def accept_receipt(self, item: PlatformReceipt) -> DeliveryReceipt:
        """Publish a platform's status report as a DeliveryReceipt (deliveries topic)."""
        receipt = DeliveryReceipt(
            delivery_id=item.delivery_id or item.provider_message_id,
            channel=item.channel,
            status=item.status,
            attempts=0,
            error=item.error,
            source="platform",
            provider_message_id=item.provider_message_id,
            provider_status=item.provider_status,
            at=item.at or self._clock(),
        )
        await self.publisher.send(self.settings.topic("deliveries"), receipt.delivery_id, receipt)
        return receipt

    async def answer_command(self, command: BotCommand) -> Reply:
        """Answer a bot command with the greeting on the replies topic; nothing is routed.

        The customer is resolved (and remembered) as for a message, so the greeting and
        their later requests share one customer id; the reply id derives from the command
        message, so a platform retry is not greeted twice.
        """
        parsed = command.message
        now = self._clock()
        resolution = await self._resolve(parsed, now)
        language, text = greeting(parsed.language_hint)
        reply = Reply(
            reply_id=derive_id("rep", parsed.message_id, "command", command.command),
            message_id=parsed.message_id,
            customer_id=resolution.profile.customer_id,
            channel=parsed.channel,
            reply_to=dict(parsed.reply_to),
            language=language,
            kind=ReplyKind.auto_reply,
            text=text,
            created_at=now,
        )
        await self.publisher.send(self.settings.topic("replies"), reply.customer_id, reply)
        return reply

    def _remember(self, message_id: str, customer_id: str) -> None:
        self._recent[message_id] = customer_id
        self._recent.move_to_end(message_id)
        while len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)

    async def reject(
        self, stage: str, error: BaseException, raw: bytes, *, message_id: str | None = None
    ) -> None:
        """Dead-letter a bad input (raw bytes capped); a broker outage is only logged."""
        record = dead_letter(
            stage=stage,
            error=error,
            raw=raw[: self.settings.max_message_bytes],
            message_id=message_id,
        )
        log.info("rejected %s input: %s: %s", stage, type(error).__name__, error)
        self._count("invalid")
        try:
            await self.publisher.send(self.settings.topic("dlq"), message_id, record)
        except BrokerUnavailable as exc:
            log.warning("could not dead-letter rejected %s input: %s", stage, exc)
        else:
            self.metrics.dead_letters.labels(stage=stage).inc()

    # ------------------------------------------------------------ e-mail

    def classify_recipients(self, recipients: Iterable[str]) -> tuple[list[str], list[str]]:
        """(support addresses, reply-token addresses) among the recipients."""
        support = {a.lower() for a in self.settings.support_addresses}
        ours: list[str] = []
        tokens: list[str] = []
        for rcpt in recipients:
            addr = rcpt.strip().strip("<>").lower()
            if addr in support and addr not in ours:
                ours.append(addr)
            elif parse_reply_address(addr, self.settings) is not None and addr not in tokens:
                tokens.append(addr)
        return ours, tokens

    async def accept_email(
        self, raw: bytes, recipients: Iterable[str] | None = None, *, always_customer: bool = False
    ) -> MailResult:
        """One e-mail: customer message for support addresses, TaskUpdate for reply tokens.

        ``recipients`` are the SMTP envelope recipients; without them (file import) the
        To/Cc/Delivered-To headers decide and a mail to neither is still a customer message.
        """
        mail = parse_email(raw)
        ours, tokens = self.classify_recipients(recipients if recipients is not None else mail.to)
        if recipients is None and not ours and not tokens:
            always_customer = True
        updates = [self._task_update(mail, addr) for addr in tokens]
        for upd in updates:
            await self.publisher.send(self.settings.topic("task-updates"), upd.case_id, upd)
        accepted: Accepted | None = None
        if ours or always_customer:
            if not mail.text:
                raise InvalidInput("e-mail has no text body", field="<body>")
            accepted = await self.accept(to_parsed_message(mail, ours[0] if ours else None))
        return MailResult(accepted, tuple(updates))

    def _task_update(self, mail: ParsedEmail, address: str) -> TaskUpdate:
        parsed = parse_reply_address(address, self.settings)
        if parsed is None:  # classify_recipients checked it
            raise InvalidInput("not a reply address", field="To")
        case_id, sub_request_id = parsed
        source_id = mail.message_id or mail.raw_sha256
        return TaskUpdate(
            update_id=derive_id("upd", "email", source_id, sub_request_id),
            sub_request_id=sub_request_id,
            case_id=case_id,
            status=TaskStatus.resolved,
            # It goes to the customer: no quoted history (with our reply+TOKEN address in
            # its header), no signature, no token even where the party pasted it.
            resolution=scrub_tokens(
                clean_reply(mail.full_text, contact_block=True), self.settings.reply_domain
            ),
            author=mail.from_address,
            source="email",
            at=mail.date or self._clock(),
        )

    async def accept_email_checked(
        self, raw: bytes, recipients: Iterable[str] | None
    ) -> MailResult:
        """``accept_email`` with bad mail dead-lettered (the SMTP and import entry point)."""
        try:
            return await self.accept_email(raw, recipients)
        except InvalidInput as exc:
            await self.reject("ingest.email", exc, raw)
            raise
