"""Fault run: two workers, one SIGKILLed under load, a replacement joins; what reached customers.

    python bench/fault_run.py [--runs 3] [--messages 600] [--customers 120] [--rate 30]
                              [--kill-at 0.4] [--partitions 4] [--incident 12]

Per run (fresh topics and consumer group on one broker — the embedded Tansu unless
KAFKA_BOOTSTRAP_SERVERS is set — and the local outbox as the platforms and the mail relay):
ingest and two workers start; real Bitext utterances are posted as Telegram updates at
--rate msg/s from --customers customers (each customer's messages numbered 1, 2, ...),
with --incident store complaints from as many other customers, 3 messages apart, mixed in
at the start; worker 1 is SIGKILLed after --kill-at of the load; after the load, once the
dead member's session is over, a replacement joins (a second rebalance). When every message
has an outcome and the outcomes topic and the outbox have been quiet for --settle-s, it prints:

- missing outcomes, messages with repeated outcome records (same id, same decision: a
  replay, harmless), conflicting outcomes (pipeline audit's figures);
- Telegram deliveries to this run's chats matched to the reply parts on the replies topic
  (``count_sends``). A platform call carries no reply id, only the chat, the message answered
  (reply_to_message_id) and the text, so each reply part (reply id + part index) is known by
  those three: reply parts sent twice are deliveries beyond one per distinct reply part that
  renders to them (notify's effectively-once, the figure that must be 0); the same text twice
  to one message counts deliveries beyond the first per (chat, message, text), whatever the
  reply ids (also two decisions rendering the same reply); reply parts never delivered (a
  loss in notify, which the outcome audit does not see); deliveries matching no reply part;
  and messages with two or more reply ids on the replies topic (a decision taken twice, e.g.
  on lost state, or several requests answered apart);
- incidents (distinct incident ids on the classifications topic), and broadcast e-mails per
  director at the outbox in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.errors import DecodeError
from pipeline.events import ClassifiedMessage, Reply, derive_id
from pipeline.notify.channels import reply_parts
from pipeline.outbox import Outbox, OutboxItem
from pipeline.runtime import audit_records, child_env, children, departments, own_stack, wait_http
from tests.plugins.inbound import telegram_update

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "bitext_customer_support" / "bitext_20k_utterances.csv"
#: pipeline.recovery's line after each table restore.
SHORT = re.compile(r"the reported end was short on (\d+) of (\d+) partitions, by (\d+) records")
#: The opening of a broadcast e-mail (pipeline/notify/compose.py), in each language.
BROADCAST = ("Мы получаем похожие обращения", "We are receiving similar customer requests")
COMPLAINT = "В магазине на Тверской, 7 продают просроченный творог, уже третий раз."


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def texts(n: int, seed: int) -> list[str]:
    with DATA.open(encoding="utf-8") as f:
        rows = [r["utterance"] for r in csv.DictReader(f)]
    return random.Random(seed).sample(rows, n)


#: A Telegram delivery as the platform call shows it: chat, message answered, text.
SendKey = tuple[str, str, str]


@dataclass(frozen=True)
class Sends:
    """Telegram deliveries matched to the reply parts (reply id, part index) they render."""

    delivered: int
    #: Deliveries beyond one per distinct reply part rendering their chat, message and text.
    parts_sent_twice: int
    #: Deliveries beyond the first per (chat, message, text), whatever the reply ids.
    same_text_twice: int
    #: Reply parts with no delivery of their chat, message and text left for them.
    parts_undelivered: int
    #: Deliveries that render no reply part on the replies topic.
    unmatched: int


def count_sends(deliveries: list[SendKey], parts: list[tuple[SendKey, str, int]]) -> Sends:
    """``deliveries``: one key per Telegram delivery; ``parts``: (key, reply id, part index)
    for every reply record's parts (a replayed record repeats its reply id and is one part).
    Two different reply parts with the same key are two expected deliveries, not one sent
    twice; which of them a delivery was cannot be told, only how many there were."""
    sent = Counter(deliveries)
    expected: dict[SendKey, set[tuple[str, int]]] = {}
    for key, reply_id, index in parts:
        expected.setdefault(key, set()).add((reply_id, index))
    return Sends(
        delivered=len(deliveries),
        parts_sent_twice=sum(
            max(0, n - len(expected[key])) for key, n in sent.items() if key in expected
        ),
        same_text_twice=sum(n - 1 for n in sent.values() if n > 1),
        parts_undelivered=sum(max(0, len(ids) - sent[key]) for key, ids in expected.items()),
        unmatched=sum(n for key, n in sent.items() if key not in expected),
    )


@dataclass
class Figures:
    messages: int
    missing: int
    repeated: int
    conflicting: int
    sends: Sends
    #: Customer messages with two or more reply ids on the replies topic (a decision taken
    #: twice, or a message with several requests answered in several replies).
    answered_apart: int
    incidents: int
    #: Per incident: its reports and the first report's text (is a second incident a split
    #: of the store wave, or another wave in the Bitext load?).
    incident_reports: dict[str, tuple[int, str]]
    broadcasts_per_director: dict[str, int]


async def post_load(
    s: Settings, plan: list[tuple[int, int, str]], rate: float, on_progress: object
) -> list[str]:
    """Post every (chat, message number, text) at ``rate``; returns the accepted message ids."""
    url = f"http://{s.ingest_host}:{s.ingest_port}/webhooks/telegram"
    accepted: list[str] = []
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for n, (chat, num, text) in enumerate(plan):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            assert callable(on_progress)
            on_progress(n)
            update = telegram_update(chat, num, text, int(time.time()), "Fault", chat * 1000 + num)
            for _ in range(20):  # 503 + Retry-After while a worker dies does not concern ingest
                async with session.post(url, json=update) as resp:
                    if resp.status == 200:
                        accepted.append(derive_id("msg", "telegram", f"{chat}:{num}"))
                        break
                await asyncio.sleep(1.0)
    return accepted


async def settle(s: Settings, outbox: Outbox, ids: set[str], settle_s: float) -> None:
    """Until every message has an outcome and outcomes and outbox stayed still ``settle_s``."""
    last = (-1, -1)
    still_since = time.monotonic()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        records = await bus.read_all(s, [s.topic("outcomes")], idle_s=1.0)
        now = (len(records), len(outbox.snapshot()))
        seen = {r.key.decode("utf-8", "replace") for r in records if r.key}  # message ids
        if now != last:
            last, still_since = now, time.monotonic()
        elif ids <= seen and time.monotonic() - still_since >= settle_s:
            return
        await asyncio.sleep(2.0)
    out("  (gave up waiting for the topics to settle after 900 s)")


def figures(
    s: Settings,
    outbox: list[OutboxItem],
    chats: set[str],
    inbound: list[bus.Record],
    outcomes: list[bus.Record],
    classified: list[bus.Record],
    reply_records: list[bus.Record],
) -> Figures:
    report = audit_records(inbound, outcomes)
    delivered = [
        (i.to, str(i.raw.get("reply_to_message_id")), i.text)
        for i in outbox
        if i.channel == "telegram" and i.to in chats
    ]
    reply_ids: dict[str, set[str]] = {}
    parts: list[tuple[SendKey, str, int]] = []
    for r in reply_records:
        try:
            rep = decode(Reply, r.value)
        except DecodeError:
            continue
        reply_ids.setdefault(rep.message_id, set()).add(rep.reply_id)
        chat, answered = rep.reply_to.get("chat_id", ""), str(rep.reply_to.get("message_id"))
        if chat in chats:
            for index, text in enumerate(reply_parts(rep, "telegram")):
                parts.append(((chat, answered, text), rep.reply_id, index))
    incidents: set[str] = set()
    reports: dict[str, tuple[int, str]] = {}
    for r in classified:
        try:
            c = decode(ClassifiedMessage, r.value)
        except DecodeError:
            continue
        if c.similarity.incident_id:  # opened here or joined: every id is an incident
            incidents.add(c.similarity.incident_id)
            n, first = reports.get(c.similarity.incident_id, (0, c.inbound.text[:60]))
            reports[c.similarity.incident_id] = (n + 1, first)
    broadcast = Counter(
        i.to for i in outbox if i.channel == "email" and any(m in i.text for m in BROADCAST)
    )
    return Figures(
        messages=report.inbound,
        missing=len(report.missing),
        repeated=len(report.duplicated),
        conflicting=len(report.conflicting),
        sends=count_sends(delivered, parts),
        answered_apart=sum(1 for ids in reply_ids.values() if len(ids) > 1),
        incidents=len(incidents),
        incident_reports=reports,
        broadcasts_per_director=dict(broadcast),
    )


async def one_run(base: Settings, outbox: Outbox, args: argparse.Namespace, run: int) -> Figures:
    s = own_stack(base, "fault", partitions=args.partitions, lag_interval_s=2.0)
    await bus.ensure_topics(s, departments=departments(s))
    first_item = len(outbox.snapshot())
    rng = random.Random(run)
    chat0 = 6_000_000 + rng.randrange(100_000) * 1000
    load = texts(args.messages, seed=run)
    counts: Counter[int] = Counter()
    plan: list[tuple[int, int, str]] = []
    for text in load:
        chat = chat0 + rng.randrange(args.customers)
        counts[chat] += 1
        plan.append((chat, counts[chat], text))
    for k in range(args.incident):  # other customers, 3 messages apart, from the start
        plan.insert(3 * k, (chat0 + args.customers + k, 1, COMPLAINT))
    chats = {str(c) for c, _, _ in plan}
    log_path = Path(args.log_dir) / f"{s.app_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with children(log_path) as group:
        env = child_env(s, **outbox.env())
        second = free_port()
        group.start("ingest", ["ingest"], env)
        first_worker = group.start("worker", ["worker"], env)
        group.start("worker-2", ["worker", "--web-port", str(second)], env)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 120, group)
        wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 600, group)
        wait_http(f"http://{s.web_host}:{second}/healthz", 600, group)
        kill_at = int(len(plan) * args.kill_at)

        def progress(n: int) -> None:
            if n == kill_at and first_worker.poll() is None:
                first_worker.send_signal(signal.SIGKILL)
                first_worker.wait()
                group.procs = [(nm, p) for nm, p in group.procs if p is not first_worker]
                out(f"  run {run}: worker 1 SIGKILLed after {n} of {len(plan)} messages")

        accepted = await post_load(s, plan, args.rate, progress)
        await asyncio.sleep(s.session_timeout_s + 2)
        group.start("worker", ["worker"], env)
        wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 600, group)
        out(f"  run {run}: replacement joined; waiting for the topics and the outbox to settle")
        await settle(s, outbox, set(accepted), args.settle_s)
        inbound = await bus.read_all(s, [s.topic("inbound")], idle_s=2.0, max_s=120)
        outcomes = await bus.read_all(s, [s.topic("outcomes")], idle_s=2.0, max_s=120)
        classified = await bus.read_all(s, [s.topic("classifications")], idle_s=2.0, max_s=120)
        reply_records = await bus.read_all(s, [s.topic("replies")], idle_s=2.0, max_s=120)
    short = [m.groups() for m in SHORT.finditer(log_path.read_text(errors="replace"))]
    out(
        f"  run {run}: {len(short)} table restores; the broker's reported end was short on "
        f"{sum(int(p) for p, _, _ in short)} of {sum(int(t) for _, t, _ in short)} changelog "
        f"partitions, by {sum(int(r) for _, _, r in short)} records (read anyway: the fence)"
    )
    this_run = outbox.snapshot()[first_item:]  # the outbox serves every run
    return figures(s, this_run, chats, inbound, outcomes, classified, reply_records)


async def main_async(args: argparse.Namespace) -> int:
    outbox = Outbox().start()
    try:
        with broker_for(Settings()) as base:
            for run in range(1, args.runs + 1):
                f = await one_run(base, outbox, args, run)
                out(
                    f"run {run}: messages {f.messages}, missing outcomes {f.missing}, "
                    f"messages with repeated outcome records {f.repeated}, conflicting "
                    f"{f.conflicting}, telegram deliveries {f.sends.delivered}, reply parts "
                    f"(reply id + part index) sent twice {f.sends.parts_sent_twice}, same text "
                    f"twice to one message (any reply ids) {f.sends.same_text_twice}, reply "
                    f"parts never delivered {f.sends.parts_undelivered}, deliveries matching "
                    f"no reply part {f.sends.unmatched}, messages with 2+ reply ids "
                    f"{f.answered_apart}, incidents {f.incidents}, broadcast e-mails per director "
                    f"{sorted(f.broadcasts_per_director.values()) or '-'}"
                )
                for inc, (n, text) in sorted(f.incident_reports.items()):
                    out(f"  incident {inc}: {n} report records, first: {text!r}")
    finally:
        outbox.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=600)
    p.add_argument("--customers", type=int, default=120)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--kill-at", type=float, default=0.4)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--incident", type=int, default=12, help="store complaints mixed in")
    p.add_argument("--settle-s", type=float, default=10.0)
    p.add_argument("--log-dir", default="/tmp/fault-run", help="children's logs")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
