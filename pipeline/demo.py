"""``pipeline demo``: broker + worker + ingest, real sample messages fed through every channel.

Each sample is sent the way its platform would send it: Telegram ``Update`` JSON to the
Telegram webhook, a Twilio form post to the SMS webhook, a MIME e-mail over SMTP, the generic
JSON format for web chat and web forms. Then every message's outcome is read back from the
outcomes topic (and rejects from the dead-letter topic) and a summary is printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from email.mime.text import MIMEText
from email.utils import make_msgid
from importlib import resources
from typing import Any

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.errors import DecodeError
from pipeline.events import DeadLetter, Outcome, derive_id
from pipeline.runtime import child_env, children, departments, wait_http

log = logging.getLogger(__name__)


def load_samples() -> list[dict[str, Any]]:
    """The shipped sample messages."""
    text = (resources.files("pipeline") / "resources" / "samples" / "messages.jsonl").read_text(
        encoding="utf-8"
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Sent:
    """What happened when one sample was offered to the ingest adapter."""

    sample: dict[str, Any]
    channel_message_id: str
    message_id: str
    status: int
    detail: str


def _post(url: str, data: bytes, content_type: str) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def send_sample(settings: Settings, sample: dict[str, Any], n: int) -> Sent:
    """Offer one sample to the ingest adapter in its channel's own format."""
    base = f"http://{settings.ingest_host}:{settings.ingest_port}"
    channel = sample["channel"]
    cust = sample["customer"]
    if channel == "telegram":
        uid = 100000 + n
        cmid = f"{uid}:{n}"
        update = {
            "update_id": 900000 + n,
            "message": {
                "message_id": n,
                "date": int(time.time()),
                "chat": {"id": uid, "type": "private", "first_name": cust},
                "from": {"id": uid, "is_bot": False, "first_name": cust},
                "text": sample["text"],
            },
        }
        status, body = _post(
            f"{base}/webhooks/telegram", json.dumps(update).encode(), "application/json"
        )
        msg_id = derive_id("msg", "telegram", cmid)
    elif channel == "sms":
        sid = f"SM{derive_id('x', cust, str(n))[2:34]}"
        form = {
            "From": f"+1555{n:07d}",
            "To": "+15550000000",
            "Body": sample["text"],
            "MessageSid": sid,
        }
        status, body = _post(
            f"{base}/webhooks/twilio",
            urllib.parse.urlencode(form).encode(),
            "application/x-www-form-urlencoded",
        )
        cmid, msg_id = sid, derive_id("msg", "sms", sid)
    elif channel == "email":
        mail = MIMEText(sample["text"], "plain", "utf-8")
        mail["From"] = f"{cust}@example.net"
        mail["To"] = settings.support_addresses[0]
        mail["Subject"] = "Обращение" if sample.get("language") == "ru" else "Support request"
        mail["Message-ID"] = cmid = make_msgid(idstring=f"demo{n}", domain="example.net")
        try:
            with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
                smtp.send_message(mail)
            status, body = 250, "accepted"
        except smtplib.SMTPException as exc:
            status, body = 500, repr(exc)
        msg_id = derive_id("msg", "email", cmid.strip("<>"))
    else:
        cmid = f"demo-{n}"
        payload = {
            "channel": channel,
            "message_id": cmid,
            "customer": {"id": cust, "email": f"{cust}@example.net"},
            "text": sample["text"],
        }
        status, body = _post(f"{base}/ingest", json.dumps(payload).encode(), "application/json")
        msg_id = derive_id("msg", channel, cmid)
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and parsed.get("message_id"):
            msg_id = str(parsed["message_id"])
    except ValueError:
        pass
    return Sent(sample, cmid, msg_id, status, body[:200])


async def collect(
    settings: Settings, wanted: set[str], timeout_s: float
) -> tuple[dict[str, Outcome], list[DeadLetter]]:
    """Read outcomes until every wanted message id has one (or the timeout)."""
    outcomes: dict[str, Outcome] = {}
    dead: list[DeadLetter] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with bus.reader(settings, settings.topic("outcomes"), settings.topic("dlq")) as c:
        while loop.time() < deadline and not wanted <= outcomes.keys():
            batch = await c.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                for m in msgs:
                    try:
                        if tp.topic == settings.topic("outcomes"):
                            o = decode(Outcome, m.value)
                            outcomes.setdefault(o.message_id, o)
                        else:
                            dead.append(decode(DeadLetter, m.value))
                    except DecodeError:
                        continue
    return outcomes, dead


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def out(line: str = "") -> None:
    """Demo output for the person watching."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_demo(settings: Settings, *, serve: bool = True, timeout_s: float = 120.0) -> int:
    """Run the whole product end to end; returns 0 when every sample is accounted for."""
    settings = settings.model_copy(
        update={
            "web_port": _port(settings.web_port),
            "ingest_port": _port(settings.ingest_port),
            "smtp_port": _port(settings.smtp_port),
        }
    )
    with broker_for(settings) as s, children() as group:
        out(f"broker: {s.kafka_bootstrap_servers}")
        asyncio.run(bus.ensure_topics(s, departments=departments(s)))
        env = child_env(s)
        group.start("worker", ["worker"], env)
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 60, group)
        wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 90, group)
        out(f"worker: http://{s.web_host}:{s.web_port}  (/metrics, /healthz)")
        out(f"ingest: http://{s.ingest_host}:{s.ingest_port}  smtp: {s.smtp_host}:{s.smtp_port}")
        samples = load_samples()
        sent = [send_sample(s, sample, n) for n, sample in enumerate(samples, 1)]
        accepted = {x.message_id for x in sent if x.status < 300}
        outcomes, dead = asyncio.run(collect(s, accepted, timeout_s))
        counts: Counter[str] = Counter()
        out()
        for x in sent:
            text = x.sample["text"][:60].replace("\n", " ")
            if x.status >= 300:
                counts["dead_lettered"] += 1
                out(f"  [{x.sample['channel']:8}] REJECTED {x.status}  {text!r}  {x.detail[:80]}")
                continue
            o = outcomes.get(x.message_id)
            if o is None:
                counts["missing"] += 1
                out(f"  [{x.sample['channel']:8}] MISSING        {text!r}")
                continue
            counts[o.outcome.value] += 1
            where = ",".join(o.departments) or o.reason
            out(f"  [{x.sample['channel']:8}] {o.outcome.value:13} {where:28.28} {text!r}")
        out()
        out(
            f"summary: {len(samples)} samples, "
            + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            + f"; dead letters on the DLQ topic: {len(dead)}"
        )
        ok = counts["missing"] == 0
        out("every sample accounted for" if ok else "SOME SAMPLES HAVE NO OUTCOME")
        out(f"metrics: curl http://{s.web_host}:{s.web_port}/metrics")
        if serve:
            out("serving; press Ctrl-C to stop")
            try:
                while True:
                    group.check_alive()
                    time.sleep(1)
            except KeyboardInterrupt:
                out("stopping")
        return 0 if ok else 1
