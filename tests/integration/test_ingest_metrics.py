"""The ingest adapter's /metrics, scraped by Prometheus (deploy/prometheus/prometheus.yml):
accepted messages, platform retries and invalid input, counted on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.bus import ensure_topics
from pipeline.config import Settings
from pipeline.ingest.server import IngestServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def server(kafka: Settings) -> AsyncIterator[IngestServer]:
    await ensure_topics(kafka)
    srv = IngestServer(kafka.model_copy(update={"ingest_port": 0, "smtp_port": 0}))
    await srv.start()
    yield srv
    await srv.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_ingest_counts_accepted_retried_and_invalid_messages(server: IngestServer) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    message = {
        "channel": "webchat",
        "message_id": uuid.uuid4().hex,
        "customer": {"id": "metrics-test"},
        "text": "Где мой заказ?",
    }
    async with aiohttp.ClientSession() as http:
        for payload in (message, message, {**message, "message_id": "x2", "text": ""}):
            async with http.post(f"{base}/ingest", json=payload) as resp:
                await resp.read()
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            samples = _samples(await resp.text())

    def messages(outcome: str) -> float:
        key = ("pipeline_messages_total", (("outcome", outcome), ("stage", "ingest")))
        return samples.get(key, 0.0)

    assert (messages("accepted"), messages("retry"), messages("invalid")) == (1.0, 1.0, 1.0)
    dead = {k: v for k, v in samples.items() if k[0] == "pipeline_dead_letters_total"}
    assert list(dead.values()) == [1.0]
    ((_, labels),) = dead
    assert dict(labels)["stage"].startswith("ingest")


async def test_send_json_prints_the_adapters_answer(
    server: IngestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    base = f"http://127.0.0.1:{server.http_port}"
    argv = ["send", "--json", "--url", base, "--customer", "json-cli", "Где мой заказ 4821?"]
    assert await asyncio.to_thread(main, argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == 202 and doc["answer"]["message_id"].startswith("msg_")
    assert await asyncio.to_thread(main, ["send", "--json", "--url", base, " "]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == 400 and doc["answer"]["field"] == "text"
