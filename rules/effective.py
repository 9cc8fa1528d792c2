"""Effective moments: when a guideline version switches on and off.

``effective.from`` and ``effective.until`` are a date or a date-time with an explicit UTC offset.
A date means the start of that day in Danish time (Europe/Copenhagen), so ``from: 2026-09-01``
switches on at midnight in Denmark whatever the server's own time zone. Every value becomes one
aware instant (UTC) here, and all comparisons use instants.

Date-only questions ("which version applies on 2026-06-01?", as a sweep asks) are answered at the
start of that day in Denmark: exactly one version of a guideline applies to any date.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

DENMARK = ZoneInfo("Europe/Copenhagen")


@lru_cache(maxsize=4096)
def day_start(day: dt.date) -> dt.datetime:
    """Midnight at the start of ``day`` in Denmark, as an aware UTC instant."""
    try:
        return dt.datetime.combine(day, dt.time(), tzinfo=DENMARK).astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01 begins in Denmark before the first instant Python has
        return dt.datetime.min.replace(tzinfo=dt.UTC)


def instant(value: dt.date | dt.datetime) -> dt.datetime:
    """An effective value as an aware UTC instant (a date: the start of that day in Denmark)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{value.isoformat()} has no UTC offset")
        return value.astimezone(dt.UTC)
    return day_start(value)


def danish_date(moment: dt.datetime) -> dt.date:
    """The calendar date in Denmark at an (aware) instant."""
    return moment.astimezone(DENMARK).date()


def danish_today() -> dt.date:
    """Today's date in Denmark: the service's "today", whatever the server's own time zone."""
    return danish_date(dt.datetime.now(dt.UTC))


def show(value: dt.date | dt.datetime) -> str:
    """An effective value as the author wrote it (ISO 8601)."""
    return value.isoformat()
