"""The unseen-data bench's summary over several family-split seeds (bench/classify_unseen.py
``seed_summary``): a floor must hold on every seed, so the lowest value is printed beside the
mean."""

from __future__ import annotations

from bench.classify_unseen import seed_summary


def test_the_summary_gives_the_lowest_seed_beside_the_mean() -> None:
    reports: list[dict[str, object]] = [
        {"accuracy": 0.805, "coverage": 0.631, "precision": 0.9490},
        {"accuracy": 0.789, "coverage": 0.605, "precision": 0.9570},
    ]
    assert seed_summary(reports) == (
        "top-1 lowest 0.7890 mean 0.7970, coverage lowest 0.6050 mean 0.6180, "
        "precision lowest 0.9490 mean 0.9530"
    )
