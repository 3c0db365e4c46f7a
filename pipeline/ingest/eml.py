"""Import e-mail from files: one ``.eml``, a directory of them, or an mbox file."""

from __future__ import annotations

import logging
import mailbox
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pipeline.errors import BrokerUnavailable, ConfigError, InvalidInput
from pipeline.ingest.service import IngestService

__all__ = ["import_path", "iter_messages"]

log = logging.getLogger(__name__)


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(5) == b"From "


def iter_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) of every message under ``path``, in a stable order."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".eml", ".mbox")
        )
        for p in files:
            yield from iter_messages(p)
        return
    if not path.is_file():
        raise ConfigError(f"no such file or directory: {path}")
    if _is_mbox(path):
        box = mailbox.mbox(path, create=False)
        try:
            for n, key in enumerate(box.iterkeys()):
                yield f"{path}#{n + 1}", box.get_bytes(key)
        finally:
            box.close()
        return
    yield str(path), path.read_bytes()


async def import_path(service: IngestService, path: Path, out: TextIO) -> tuple[int, int]:
    """Import every message; write one line per message; return (accepted, rejected)."""
    ok = bad = 0
    for label, raw in iter_messages(path):
        try:
            result = await service.accept_email_checked(raw, None)
        except InvalidInput as exc:
            bad += 1
            out.write(f"-\t-\trejected: {exc}\t{label}\n")
            continue
        except BrokerUnavailable:
            out.write(f"-\t-\tnot stored (broker unavailable)\t{label}\n")
            raise
        ok += 1
        for line in result.describe().split("\n"):
            out.write(f"{line}\t{label}\n")
    return ok, bad
