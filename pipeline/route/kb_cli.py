"""``pipeline kb search|publish``: the KB-only view of the auto-reply decision, and publishing.

pipeline kb search [--json] [--kb-dir DIR] [--language ru|en] [--intent X] "text"
pipeline kb search --json --data FILE [--text-col text]      # CSV or JSONL, one line per row
pipeline kb publish [DIR] [--prune]                          # → compacted KB topic
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.bus import ensure_topics, publish, read_all
from pipeline.config import get_settings
from pipeline.errors import ConfigError, InvalidInput
from pipeline.events import KbArticle, utcnow
from pipeline.route.kb import KbIndex, KbMatch, load_kb

log = logging.getLogger(__name__)

__all__ = ["match_json", "read_rows", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``kb search`` and ``kb publish``."""
    kb = sub.add_parser("kb", help="knowledge base: search, publish")
    kb_sub = kb.add_subparsers(dest="kb_command", metavar="KB_COMMAND")
    kb.set_defaults(handler=lambda _args: _help(kb))

    s = kb_sub.add_parser("search", help="best article and whether the auto-reply fires")
    s.add_argument("text", nargs="?", help="message text (or use --data)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--kb-dir", type=Path, default=None, help="articles (default: settings.kb_dir)")
    s.add_argument("--data", type=Path, default=None, help="CSV or JSONL file of messages")
    s.add_argument("--text-col", default="text", help="text column / key in --data")
    s.add_argument("--language", choices=("ru", "en"), default=None, help="default: guessed")
    s.add_argument(
        "--intent",
        action="append",
        default=None,
        help="classifier intent(s) of the message (repeat for several)",
    )
    s.set_defaults(handler=_search)

    p = kb_sub.add_parser("publish", help="publish articles to the compacted KB topic")
    p.add_argument("dir", nargs="?", type=Path, default=None, help="default: settings.kb_dir")
    p.add_argument(
        "--prune",
        action="store_true",
        help="publish deleted=True for articles on the topic that are no longer in DIR",
    )
    p.set_defaults(handler=_publish)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def match_json(text: str, match: KbMatch) -> dict[str, Any]:
    """The JSON line of one searched text."""
    return {"text": text, **match.model_dump(mode="json")}


_REST = "\x00rest"


def read_rows(path: Path, text_col: str) -> Iterator[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL file; InvalidInput naming the line when bad."""
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file", field="data")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(f"{path}:{n}: not JSON: {exc}", field="data") from exc
                if not isinstance(row, dict) or not isinstance(row.get(text_col), str):
                    raise InvalidInput(f"{path}:{n}: no string {text_col!r}", field=text_col)
                yield row
        return
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, restkey=_REST)
        if reader.fieldnames is None or text_col not in reader.fieldnames:
            raise InvalidInput(
                f"{path}: no column {text_col!r} (columns: {reader.fieldnames})", field=text_col
            )
        last = reader.fieldnames[-1] == text_col
        for row in reader:
            rest = row.pop(_REST, None)
            if rest and last:
                # An unquoted comma in the last (text) column: the text is the rest of the line.
                row[text_col] = ",".join([row[text_col], *rest])
            yield row


def _row_intents(row: dict[str, Any]) -> list[str] | None:
    value = row.get("intents", row.get("intent"))
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str) and value.strip():
        return [v.strip() for v in value.split("|") if v.strip()]
    return None


def _search(args: argparse.Namespace) -> int:
    kb_dir = args.kb_dir or get_settings().kb_dir
    index = KbIndex.from_dir(kb_dir)
    out = sys.stdout.write
    if args.data is not None:
        rows = list(read_rows(args.data, args.text_col))
        texts = [str(r[args.text_col] or "") for r in rows]
        langs = [r.get("language") or args.language for r in rows]
        intents = [_row_intents(r) or args.intent for r in rows]
        matches = index.search_many(texts, langs, intents)
        for text, m in zip(texts, matches, strict=True):
            if args.json:
                out(orjson.dumps(match_json(text, m)).decode("utf-8") + "\n")
            else:
                out(_human(text, m))
        return 0
    if not args.text:
        raise InvalidInput("give a text or --data FILE", field="text")
    m = index.search(args.text, args.language, args.intent)
    out(
        orjson.dumps(match_json(args.text, m)).decode("utf-8") + "\n"
        if args.json
        else _human(args.text, m)
    )
    return 0


def _human(text: str, m: KbMatch) -> str:
    verdict = "AUTO-REPLY" if m.auto_reply else "route to people"
    lines = [
        f"{text}",
        f"  → {m.article_id} {m.intents} confidence {m.confidence:.3f} "
        f"(threshold {m.threshold:.3f}): {verdict} — {m.reason}",
    ]
    if m.auto_reply and m.answer:
        lines.append(f"  [{m.language}] {m.title}: {m.link}")
    return "\n".join(lines) + "\n"


def _publish(args: argparse.Namespace) -> int:
    settings = get_settings()
    kb_dir = args.dir or settings.kb_dir
    articles = load_kb(kb_dir)  # validates every file before anything is sent
    if not articles:
        raise ConfigError(f"{kb_dir}: no articles (*.md)")
    sent = asyncio.run(_publish_async(articles, args.prune))
    sys.stdout.write(f"published {sent} records to {settings.topic('kb')}\n")
    return 0


async def _publish_async(articles: list[KbArticle], prune: bool) -> int:
    settings = get_settings()
    topic = settings.topic("kb")
    await ensure_topics(settings, [topic])
    tombstones: list[KbArticle] = []
    if prune:
        live: dict[str, bool] = {}
        for rec in await read_all(settings, [topic]):
            if rec.key is None or rec.value is None:
                continue
            try:
                old = KbArticle.model_validate_json(rec.value)
            except ValueError:
                log.warning(
                    "%s[%d]@%d: not a KbArticle, ignored", rec.topic, rec.partition, rec.offset
                )
                continue
            live[old.article_id] = not old.deleted
        keep = {a.article_id for a in articles}
        tombstones = [
            KbArticle(
                article_id=aid, title={}, questions={}, answer={}, deleted=True, updated_at=utcnow()
            )
            for aid, alive in sorted(live.items())
            if alive and aid not in keep
        ]
    return await publish(settings, topic, [(a.article_id, a) for a in [*articles, *tombstones]])
