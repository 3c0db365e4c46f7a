"""Client-side failures are logged as one short line, never as an ERROR traceback.

Raw TCP against the real ingest server: a client that closes mid-body and a malformed
chunked body of 200 kB (aiohttp logged both as ERROR tracebacks, the second with the whole
body on one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from pipeline.config import Settings
from pipeline.ingest.server import IngestServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def server(kafka: Settings) -> AsyncIterator[IngestServer]:
    srv = IngestServer(kafka.model_copy(update={"ingest_port": 0, "smtp_port": 0}))
    await srv.start()
    yield srv
    await srv.stop()


async def _send_raw(port: int, data: bytes, *, read: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await reader.read() if read else b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _records_after(caplog: pytest.LogCaptureFixture, want: int) -> list[logging.LogRecord]:
    """The server's log records about the failed requests, once ``want`` of them arrived."""
    for _ in range(200):
        got = [
            r
            for r in caplog.records
            if r.name in ("aiohttp.server", "pipeline.ingest.server")
            and "127.0.0.1" in r.getMessage()
        ]
        if len(got) >= want:
            return got
        await asyncio.sleep(0.02)
    return got


async def test_client_closing_mid_request_is_one_line_with_the_request_id(
    server: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head = (
        b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: req-42\r\nContent-Length: 30000\r\n\r\n"
    )
    await _send_raw(
        server.http_port, head + b'{"channel": "webchat", "text": "' + b"x" * 5000, read=False
    )
    (record,) = await _records_after(caplog, 1)
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    assert "req-42" in message and "ConnectionResetError" in message
    assert "\n" not in message and len(message) < 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_malformed_chunked_body_is_logged_cut(
    server: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head = (
        b"POST /webhooks/telegram HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answer = await _send_raw(server.http_port, head + b"Z" * 200_000 + b"\r\n", read=True)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
    (record,) = await _records_after(caplog, 1)
    message = record.getMessage()
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "BadHttpMessage" in message and len(message) < 600 and "\n" not in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_answers_carry_a_request_id(server: IngestServer) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.http_port}/ingest"
        async with http.post(url, json={}, headers={"X-Request-Id": "abc 123"}) as resp:
            assert resp.status == 400
            assert resp.headers["X-Request-Id"] == "abc123"
        async with http.post(url, json={}) as resp:
            assert len(resp.headers["X-Request-Id"]) == 16
