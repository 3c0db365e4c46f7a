"""SLA deadlines: working time inside a department's business hours.

A deadline adds working time only inside the department's business hours (in its timezone,
skipping closed days); a policy with ``business_hours: false`` or a department without hours
counts wall-clock time. Used when a sub-request is created (``pipeline.domain.cases``) and by
the SLA check (``pipeline.route.sla``).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pipeline.domain.workflow import BusinessHours, Level, SlaPolicy

__all__ = ["add_business_time", "deadlines"]

_MAX_DAYS = 800  # safety bound of the day walk (at least one open day is validated)
_ONE_DAY = timedelta(days=1)
_MIDNIGHT = time()


def add_business_time(start: datetime, minutes: float, hours: BusinessHours | None) -> datetime:
    """``start`` plus ``minutes`` of working time (wall-clock when ``hours`` is None)."""
    if hours is None or minutes <= 0:
        return start + timedelta(minutes=minutes)
    zone = ZoneInfo(hours.timezone)
    t = start.astimezone(zone)
    remaining = timedelta(minutes=minutes)
    day = t.date()  # t's local date, kept beside it (the walk asked t for it three times a day)
    for _ in range(_MAX_DAYS):
        span = hours.span(day.weekday())
        if span is not None:
            opens = datetime.combine(day, span[0], tzinfo=zone)
            closes = datetime.combine(day, span[1], tzinfo=zone)
            if t < opens:
                t = opens
            if t < closes:
                available = closes - t
                if remaining <= available:
                    return (t + remaining).astimezone(start.tzinfo)
                remaining -= available
        day += _ONE_DAY
        t = datetime.combine(day, _MIDNIGHT, tzinfo=zone)
    raise ValueError("business hours leave no working time")  # unreachable when validated


def deadlines(
    policy: SlaPolicy | None, level: Level, hours: BusinessHours | None, start: datetime
) -> tuple[datetime | None, datetime | None]:
    """(first-response deadline, resolution deadline) for a priority level."""
    if policy is None:
        return None, None
    h = hours if policy.business_hours else None
    first = policy.first_response.get(level)
    res = policy.resolution.get(level)
    return (
        add_business_time(start, first, h) if first is not None else None,
        add_business_time(start, res, h) if res is not None else None,
    )
