"""Sub-commands: demo, worker, schemas, asyncapi, send, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.broker import broker_for
from pipeline.config import Settings, get_settings


def register(sub: Any) -> None:
    """Add the runtime commands."""
    p = sub.add_parser(
        "demo",
        help="run everything end to end on the embedded broker with real sample messages",
        description="Start the broker (embedded Tansu unless KAFKA_BOOTSTRAP_SERVERS is set), "
        "the worker and the ingest adapters; feed the shipped sample messages through their "
        "channels; print each outcome and a summary; keep serving until Ctrl-C.",
    )
    p.add_argument("--no-serve", action="store_true", help="exit after the summary")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for outcomes")
    p.set_defaults(handler=_demo)

    p = sub.add_parser(
        "worker",
        help="run the stream worker (classify, route, notify) with /metrics and /healthz",
        description="Run the Faust worker. Uses KAFKA_BOOTSTRAP_SERVERS, or starts an "
        "embedded broker for itself when it is unset.",
    )
    p.add_argument("--web-port", type=int, help="override PIPELINE_WEB_PORT")
    p.set_defaults(handler=_worker)

    p = sub.add_parser(
        "schemas",
        help="write the JSON Schemas of every event and the AsyncAPI document into schemas/",
        description="Generate JSON Schema files from the event contract (pipeline.events), "
        "and schemas/asyncapi.yaml, which embeds them (as `pipeline asyncapi` does).",
    )
    p.add_argument("--out", type=Path, help="directory (default: the repository's schemas/)")
    p.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    p.set_defaults(handler=_schemas)

    p = sub.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of the event API (schemas/asyncapi.yaml)",
        description="Generate the AsyncAPI document from the event models and the topics: "
        "channels (topics, keys), messages (the JSON Schemas), who sends and who receives.",
    )
    p.add_argument("--out", type=Path, help="file (default: schemas/asyncapi.yaml)")
    p.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    p.set_defaults(handler=_asyncapi)

    p = sub.add_parser(
        "send",
        help="post one message to the ingest adapter",
        description="POST one message in the generic JSON format to a running ingest adapter.",
    )
    p.add_argument("text", help="message text")
    p.add_argument("--channel", default="webchat", choices=["webchat", "webform", "social", "api"])
    p.add_argument("--customer", default="cli-user", help="customer id")
    p.add_argument("--email", help="customer e-mail")
    p.add_argument("--message-id", help="channel message id (default: random)")
    p.add_argument("--url", help="ingest base URL (default: from settings)")
    p.add_argument("--json", action="store_true", help='{"status": HTTP status, "answer": ...}')
    p.set_defaults(handler=_send)

    p = sub.add_parser(
        "audit",
        help="prove that every inbound message has exactly one outcome",
        description="Read the inbound and outcomes topics and report distinct messages, "
        "messages without an outcome (invariant 1), repeated outcome records of one id "
        "(replays; consumers deduplicate by message id) and conflicting ones. Exit 1 if an "
        "outcome is missing or conflicting.",
    )
    p.add_argument("--since", type=datetime.fromisoformat, help="ISO time, inclusive")
    p.add_argument("--until", type=datetime.fromisoformat, help="ISO time, inclusive")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(handler=_audit)


def _demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(get_settings(), serve=not args.no_serve, timeout_s=args.timeout)


def _worker(args: argparse.Namespace) -> int:
    from pipeline.runtime import run_worker

    settings = get_settings()
    if args.web_port is not None:
        settings = settings.model_copy(update={"web_port": args.web_port})
    with broker_for(settings) as s:
        return run_worker(s)


def _schemas(args: argparse.Namespace) -> int:
    from pipeline import asyncapi, schema_gen

    directory = args.out or schema_gen.SCHEMA_DIR
    # The AsyncAPI document embeds the same schemas: it is written and checked with them.
    document = directory / asyncapi.ASYNCAPI_PATH.name
    if args.check:
        stale = schema_gen.drift(directory)
        if asyncapi.is_stale(document):
            stale.append(document.name)
        for name in stale:
            sys.stderr.write(f"stale: {directory / name} (run: pipeline schemas)\n")
        return 1 if stale else 0
    for path in [*schema_gen.write(directory), asyncapi.write(document)]:
        sys.stdout.write(f"{path}\n")
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from pipeline import asyncapi

    path = args.out or asyncapi.ASYNCAPI_PATH
    if args.check:
        if asyncapi.is_stale(path):
            sys.stderr.write(f"stale: {path} (run: pipeline asyncapi)\n")
            return 1
        return 0
    sys.stdout.write(f"{asyncapi.write(path)}\n")
    return 0


def _send(args: argparse.Namespace) -> int:
    settings: Settings = get_settings()
    base = args.url or f"http://{settings.ingest_host}:{settings.ingest_port}"
    customer: dict[str, str] = {"id": args.customer}
    if args.email:
        customer["email"] = args.email
    payload = {
        "channel": args.channel,
        "message_id": args.message_id or uuid.uuid4().hex,
        "customer": customer,
        "text": args.text,
    }
    req = urllib.request.Request(
        f"{base}/ingest",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            _sent(resp.status, resp.read().decode(), as_json=args.json)
            return 0
    except urllib.error.HTTPError as exc:
        _sent(exc.code, exc.read().decode(), as_json=args.json)
        return 1
    except urllib.error.URLError as exc:
        sys.stderr.write(f"ingest not reachable at {base}: {exc.reason}\n")
        return 1


def _sent(status: int, body: str, *, as_json: bool) -> None:
    if not as_json:
        sys.stdout.write(f"{status} {body}\n")
        return
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = body
    sys.stdout.write(json.dumps({"status": status, "answer": answer}, ensure_ascii=False) + "\n")


def _audit(args: argparse.Namespace) -> int:
    from pipeline.runtime import audit

    settings = get_settings()
    if not settings.kafka_bootstrap_servers:
        sys.stderr.write("audit needs KAFKA_BOOTSTRAP_SERVERS (the broker to read)\n")
        return 2
    report = asyncio.run(audit(settings, since=args.since, until=args.until))
    if args.json:
        sys.stdout.write(json.dumps(report.__dict__ | {"ok": report.ok}) + "\n")
    else:
        sys.stdout.write(
            f"messages {report.inbound}, with outcome {report.outcomes}, "
            f"by outcome {report.by_outcome}, missing {len(report.missing)}, "
            f"outcome records {report.outcome_records}, "
            f"messages with repeated records (same id, same decision; harmless) "
            f"{len(report.duplicated)}, conflicting {len(report.conflicting)}, "
            f"undecodable inbound {report.undecodable_inbound}\n"
        )
        for mid in report.missing[:50]:
            sys.stdout.write(f"missing: {mid}\n")
        for mid in report.conflicting[:50]:
            sys.stdout.write(f"conflicting: {mid}\n")
    return 0 if report.ok else 1
