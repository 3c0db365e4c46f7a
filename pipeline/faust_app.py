"""``RouterApp``: the faust.App of the workers, with Faust's fetch wait made a setting.

Faust hard-codes the consumer's ``fetch_max_wait_ms`` at 1500 ms, which on the embedded broker
adds over a second per hop (docs/ARCHITECTURE.md, Broker). Kept apart from ``pipeline.app``
(which imports every stage) so a bare baseline app (bench/pipeline_throughput.py) imports
only this.
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = super()._create_worker_consumer(transport)
        wait_ms = int(getattr(self.app, "fetch_max_wait_ms", 100))
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class RouterApp(faust.App):
    """faust.App whose Kafka consumer honours ``fetch_max_wait_ms``."""

    fetch_max_wait_ms: int = 100

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
