"""`pipeline kb publish` updates the running workers' knowledge base without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.events import ClassifiedMessage, Outcome, Reply

if TYPE_CHECKING:
    from tests.plugins.stack import PostJson
    from tests.plugins.topics import Records
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration

# a request the classifier recognises (review) that no shipped article answers: an article
# answers only the intents it declares (issue 10), so the new one declares this one
QUESTION = "Can you tell me how to leave a review for the product I bought?"

ARTICLE = """---
id: product-reviews-{tag}
title:
  en: Reviews of products you bought
  ru: Отзывы о купленных товарах
intents: [{intent}]
link: https://help.example.com/reviews
auto_reply: true
questions:
  en:
    - {question}
    - where do I write a review of a product
    - how can I rate an item I ordered
  ru:
    - Как оставить отзыв о купленном товаре?
    - где написать отзыв на товар
---
## ru
Откройте заказ в личном кабинете и нажмите «Оставить отзыв» рядом с товаром.

## en
Open the order in your account and press "Write a review" next to the item.
"""


def _ask(post_json: PostJson, stack: Settings, customer: str) -> str:
    status, body = post_json(
        f"http://{stack.ingest_host}:{stack.ingest_port}/ingest",
        {
            "channel": "webchat",
            "message_id": uuid.uuid4().hex,
            "customer": {"id": customer},
            "text": QUESTION,
        },
    )
    assert status == 202, body
    assert isinstance(body, dict)
    return str(body["message_id"])


async def test_published_article_answers_without_restart(
    stack: Settings,
    tmp_path: Path,
    post_json: PostJson,
    records: Records,
    wait_until: WaitUntil,
) -> None:
    first = _ask(post_json, stack, f"review-{uuid.uuid4().hex[:8]}")
    before = await records.first(
        stack, stack.topic("classifications"), ClassifiedMessage, lambda c: c.message_id == first
    )
    intent = before.intents[0].label
    assert intent == "review", before.intents  # the premise: a recognised, unanswered intent
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    tag = uuid.uuid4().hex[:6]
    (kb_dir / "product-reviews.md").write_text(
        ARTICLE.format(tag=tag, intent=intent, question=QUESTION), encoding="utf-8"
    )
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap_servers or "",
        PIPELINE_TOPIC_PREFIX=stack.topic_prefix,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "kb", "publish", str(kb_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    async def auto_resolved() -> str | None:
        """Ask again; the message id if the answer now came from the KB."""
        mid = _ask(post_json, stack, f"review-{uuid.uuid4().hex[:8]}")
        outcome = await records.first(
            stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id == mid
        )
        return mid if outcome.outcome.value == "auto_resolved" else None

    # the worker follows the KB topic within about a second
    mid = await wait_until(
        auto_resolved, timeout_s=60, what="an answer from the published article", interval_s=1
    )
    reply = await records.first(stack, stack.topic("replies"), Reply, lambda r: r.message_id == mid)
    assert reply.article_id == f"product-reviews-{tag}"
    assert "Write a review" in reply.text
