"""Defaults a contact-center lead relies on: the customer directory, VIP/legal SLA, hours."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.config import Settings
from pipeline.ingest.identity import load_customers

NOW = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)


def test_the_shipped_customer_directory_loads_by_default() -> None:
    path = Settings().customers_path
    assert path is not None and path.is_file()
    tiers = {r.profile.customer_id: r.profile.tier for r in load_customers(path, NOW)}
    assert tiers["cust_emily_clark"] == "vip"
    assert Settings(customers_path="").customers_path is None  # empty turns it off
