from __future__ import annotations

import datetime as dt

from engine import primitives as p
from fhir_adapter.records import GoalRecord, MedicationRecord
from rules.tree import Period

D = dt.date


def test_window_start_clamps_month_ends() -> None:
    assert p.window_start(D(2026, 3, 31), Period(1, "months")) == D(2026, 2, 28)
    assert p.window_start(D(2024, 2, 29), Period(12, "months")) == D(2023, 2, 28)
    assert p.window_start(D(2026, 6, 1), Period(28, "days")) == D(2026, 5, 4)


def test_a_window_reaching_before_year_1_holds_every_date() -> None:
    assert p.window_start(D(2026, 6, 1), Period(2025, "years")) == D(1, 6, 1)
    for period in [
        Period(2026, "years"),
        Period(3000, "years"),
        Period(1_000_000, "days"),
        Period(10**20, "weeks"),
        Period(10**12, "months"),
    ]:
        assert p.window_start(D(2026, 6, 1), period) == D.min, period


def test_age_in_full_years() -> None:
    assert p.age(D(1950, 6, 2), D(2026, 6, 1)) == 75
    assert p.age(D(1950, 6, 1), D(2026, 6, 1)) == 76
    assert p.age(D(2000, 2, 29), D(2025, 2, 28)) == 24
    assert p.age(D(2000, 2, 29), D(2025, 3, 1)) == 25
    assert p.age(None, D(2026, 6, 1)) is None


def med(start: D, end: D | None, status: str = "active", rid: str = "m") -> MedicationRecord:
    return MedicationRecord(
        f"MedicationStatement/{rid}", (("atc", "N05BA01"),), None, start, end, status
    )


def test_episodes_merge_across_allowed_gaps() -> None:
    records = [
        med(D(2026, 1, 1), D(2026, 1, 10), "completed", "a"),
        med(D(2026, 1, 14), None, "active", "b"),
    ]
    assert p.episodes(records, D(2026, 2, 1), max_gap_days=3) == [
        (D(2026, 1, 1), D(2026, 2, 1), ("MedicationStatement/a", "MedicationStatement/b"))
    ]
    assert len(p.episodes(records, D(2026, 2, 1), max_gap_days=2)) == 2


def test_stopped_without_end_date_is_never_active() -> None:
    assert p.active_medications([med(D(2020, 1, 1), None, "stopped")], D(2026, 1, 1)) == []
    assert p.active_medications([med(D(2020, 1, 1), D(2026, 1, 1), "stopped")], D(2026, 1, 1)) != []


def test_alive_until_the_day_of_death() -> None:
    died = dt.date(2025, 3, 1)
    assert p.alive(False, None, died)
    assert p.alive(True, died, died - dt.timedelta(days=1))
    assert not p.alive(True, died, died)  # died that day: in no register that day
    assert not p.alive(True, died, died + dt.timedelta(days=1))
    assert not p.alive(True, None, dt.date(1900, 1, 1))  # date unknown: dead on every date


def test_one_goal_with_two_targets_for_the_measure_gives_the_lower_whatever_the_order() -> None:
    """Found by QA: the choice followed the records' order, which Spark does not keep."""
    measure = (("npu", "NPU27300"),)
    high = GoalRecord("Goal/g", measure, 64.0, "mmol/mol", D(2025, 1, 1))
    low = GoalRecord("Goal/g", measure, 53.0, "mmol/mol", D(2025, 1, 1))
    assert p.goal_in_force([high, low], D(2026, 3, 31)) == low
    assert p.goal_in_force([low, high], D(2026, 3, 31)) == low
