"""The meaning of each fact primitive, as pure functions over one patient's normalised records.

This is the reference semantics: the population engine's SQL must give the same answer for every
patient. Windows include both edges: an observation dated exactly ``as_of - 12 months`` counts.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from functools import lru_cache
from operator import attrgetter

from dateutil.relativedelta import relativedelta

from fhir_adapter.records import ConditionRecord, GoalRecord, MedicationRecord, ObservationRecord
from rules.tree import Period

PRESENT_STATUSES = frozenset({"active", "recurrence", "relapse"})
TAKEN_STATUSES = frozenset({"active", "completed", "stopped"})


_DATE = attrgetter("date")


@lru_cache(maxsize=4096)
def window_start(as_of: dt.date, period: Period) -> dt.date:
    """The first day inside a look-back window (month ends clamp: 31 March - 1 month = 28/29 Feb).

    A window reaching back before year 1 (``within: 3000 years``: "ever") starts on 0001-01-01,
    the first date FHIR can write, so it holds every date, as it says; no date is earlier.
    """
    try:
        return as_of - relativedelta(**{period.unit: period.amount})
    except (ValueError, OverflowError):  # before year 1, or beyond what a date can count
        return dt.date.min


def in_window(
    records: Sequence[ObservationRecord], start: dt.date, as_of: dt.date
) -> Sequence[ObservationRecord]:
    """Records dated from start to as_of, both included; ``records`` are sorted by date."""
    return records[bisect_left(records, start, key=_DATE) : bisect_right(records, as_of, key=_DATE)]


def latest(records: Sequence[ObservationRecord]) -> ObservationRecord | None:
    """The most recent record; on the same day, the greatest resource id (a stable rule)."""
    return max(records, key=lambda r: (r.date, r.resource), default=None)


def earliest(records: Sequence[ObservationRecord]) -> ObservationRecord | None:
    return min(records, key=lambda r: (r.date, r.resource), default=None)


def active_medications(records: Sequence[MedicationRecord], on: dt.date) -> list[MedicationRecord]:
    """Medication taken on a date: active with a period covering it, or ended after it.

    A stopped or completed medication without an end date cannot be placed in time, so it never
    counts as active.
    """
    found = []
    for r in records:
        if r.start is not None and r.start > on:
            continue
        if r.end is not None:
            if r.end >= on and r.status in TAKEN_STATUSES:
                found.append(r)
        elif r.status == "active":
            found.append(r)
    return found


def episodes(
    records: Sequence[MedicationRecord], as_of: dt.date, max_gap_days: int
) -> list[tuple[dt.date, dt.date, tuple[str, ...]]]:
    """Episodes of use up to ``as_of``: periods merged when the gap is at most ``max_gap_days``.

    A record without an end lasts until ``as_of`` if it is active, else only its start day. Each
    episode is (start, end, resources).
    """
    spans = []
    for r in records:
        if r.start is None or r.start > as_of or r.status not in TAKEN_STATUSES:
            continue
        end = r.end if r.end is not None else (as_of if r.status == "active" else r.start)
        spans.append((r.start, min(end, as_of), r.resource))
    spans.sort()
    merged: list[tuple[dt.date, dt.date, tuple[str, ...]]] = []
    for start, end, resource in spans:
        if merged and (start - merged[-1][1]).days <= max_gap_days + 1:
            first, last, resources = merged[-1]
            merged[-1] = (first, max(last, end), (*resources, resource))
        else:
            merged.append((start, end, (resource,)))
    return merged


def conditions_present(
    records: Sequence[ConditionRecord], on: dt.date, include_resolved: bool
) -> list[ConditionRecord]:
    """Diagnoses in force on a date (or ever, with ``include_resolved``), onset not after it.

    Without an onset, the date the diagnosis was recorded stands in: it was known by then.
    """
    found = []
    for r in records:
        began = r.onset or r.recorded
        if began is not None and began > on:
            continue
        if include_resolved:
            found.append(r)
        elif r.abatement is not None:
            if r.abatement > on:
                found.append(r)
        elif r.clinical_status in PRESENT_STATUSES:
            found.append(r)
    return found


def first_onset(records: Sequence[ConditionRecord], on: dt.date) -> ConditionRecord | None:
    """The diagnosis with the earliest onset up to a date.

    Only a recorded onset dates a disease: the date a diagnosis was entered (a new practice
    system, a re-coding) would make a long-standing disease look new.
    """
    dated = [r for r in records if r.onset is not None and r.onset <= on]
    return min(dated, key=lambda r: (r.onset, r.resource), default=None)


def goal_in_force(records: Sequence[GoalRecord], on: dt.date) -> GoalRecord | None:
    """The most recently started Goal for the measure that has started by the date.

    Ties: the greatest resource id, then, for one Goal with several targets for the measure,
    the lowest (strictest) upper bound. The key is total so the result never depends on the
    order of the records, which the SQL engines do not keep (Spark's max_by picked 64 where
    this picked 53).
    """
    started = [r for r in records if r.start is None or r.start <= on]
    return max(started, key=lambda r: (r.start or dt.date.min, r.resource, -r.value), default=None)


def age(birth_date: dt.date | None, on: dt.date) -> float | None:
    """Full years; someone born on 29 February turns a year older on 1 March in other years."""
    if birth_date is None:
        return None
    years = on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))
    return float(years)


def alive(deceased: bool, deceased_on: dt.date | None, on: dt.date) -> bool:
    """Alive at the end of ``on``. A patient who died that day, or on an unknown date, is not:
    the dead belong to no register, whatever the as-of date, when the date is not known."""
    return not deceased or (deceased_on is not None and deceased_on > on)


def months_between(start: dt.date, end: dt.date) -> float:
    """Full months from start to end: a month is complete when the day of month is reached again
    (31 January to 28 February is 0 months). Written out so SQL can say exactly the same."""
    months = (end.year - start.year) * 12 + end.month - start.month
    return float(months - (end.day < start.day))


def years_between(start: dt.date, end: dt.date) -> float:
    """Full years, from full months (so both engines floor the same way)."""
    return float(months_between(start, end) // 12)
