"""``Metrics``' series remember their labelled children: same series, same exposition."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.metrics import Counter, Histogram, Metrics


def _count(registry: CollectorRegistry, counter: type[prometheus_client.Counter]) -> bytes:
    c = counter("calls_total", "Calls.", ["stage", "outcome"], registry=registry)
    c.labels(stage="route", outcome="routed").inc()
    c.labels(outcome="routed", stage="route").inc()  # the other order: the same series
    c.labels("route", "routed").inc(2)
    c.labels(stage="classify", outcome=1).inc()  # values are str()-ed, as prometheus does
    c.labels(stage="classify", outcome="1").inc()
    c.labels(stage=["unhashable"], outcome="x").inc()
    # without the series' creation times (``_created``), which differ between two registries
    return b"\n".join(x for x in generate_latest(registry).split(b"\n") if b"_created" not in x)


def test_remembered_children_count_exactly_as_prometheus_clients_own() -> None:
    ours = _count(CollectorRegistry(), Counter)
    theirs = _count(CollectorRegistry(), prometheus_client.Counter)
    assert ours == theirs
    assert b'calls_total{outcome="routed",stage="route"} 4.0' in ours
    assert b'calls_total{outcome="1",stage="classify"} 2.0' in ours


def test_a_remembered_child_is_the_registered_one() -> None:
    m = Metrics()
    child = m.messages.labels(stage="route", outcome="routed")
    assert m.messages.labels(stage="route", outcome="routed") is child
    assert m.messages._metrics[("route", "routed")] is child
    h = Histogram("h", "H.", ["stage"], registry=CollectorRegistry())
    h.labels(stage="s").observe(0.5)
    assert h.labels(stage="s") is h.labels("s") is h._metrics[("s",)]
    m.stage_seconds.labels(stage="route").observe(0.001)
    assert b'pipeline_stage_seconds_count{stage="route"} 1.0' in m.render()
