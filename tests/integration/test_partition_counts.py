"""A worker refuses to start when its tables would not be co-partitioned with its topics.

Tables get ``PIPELINE_PARTITIONS`` partitions; a customer's state lives in the changelog
partition numbered like the partition of the customer's records. Topics created with another
count (a bench, a create-topics script) made a worker restore other customers' state after a
rebalance and send replies again (issue 11). Children get the count from ``child_env``.
"""

from __future__ import annotations

import pytest

from pipeline import bus
from pipeline.config import Settings
from pipeline.errors import BrokerError
from pipeline.runtime import check_partitions, child_env, departments

pytestmark = pytest.mark.integration


async def test_other_partition_counts_are_refused_and_children_get_the_count(
    kafka: Settings,
) -> None:
    s = kafka.model_copy(update={"partitions": 3})
    await bus.ensure_topics(s, departments=departments(s))
    await check_partitions(s)  # as created
    with pytest.raises(BrokerError, match=r"PIPELINE_PARTITIONS=2 but .*inbound has 3"):
        await check_partitions(s.model_copy(update={"partitions": 2}))
    assert child_env(s)["PIPELINE_PARTITIONS"] == "3"
