"""Effective periods: dates (start of the day in Denmark) or date-times with a UTC offset."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rules.effective import DENMARK, day_start, instant
from rules.errors import RuleFileError
from rules.guideline_set import load_guidelines

ORIGINAL = "effective: {from: 2020-01-01}"


def with_effective(guideline_dir: Path, effective: str, file: str = "example.yaml") -> Path:
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    assert ORIGINAL in text
    (guideline_dir / file).write_text(text.replace(ORIGINAL, effective), encoding="utf-8")
    return guideline_dir / file


def test_a_date_starts_at_midnight_in_denmark() -> None:
    assert day_start(dt.date(2026, 7, 1)) == dt.datetime(2026, 6, 30, 22, tzinfo=dt.UTC)  # summer
    assert day_start(dt.date(2026, 1, 1)) == dt.datetime(2025, 12, 31, 23, tzinfo=dt.UTC)  # winter
    aware = dt.datetime(2026, 9, 1, 6, tzinfo=DENMARK)
    assert instant(aware) == dt.datetime(2026, 9, 1, 4, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="no UTC offset"):
        instant(dt.datetime(2026, 9, 1, 6))


def test_the_first_and_last_days_python_knows_have_a_start() -> None:
    """0001-01-01 begins in Denmark before the first UTC instant Python can hold: a sweep or an
    evaluation asked for that date stopped with an OverflowError; it is the earliest instant."""
    assert day_start(dt.date(1, 1, 1)) == dt.datetime.min.replace(tzinfo=dt.UTC)
    assert day_start(dt.date(1, 1, 2)) > day_start(dt.date(1, 1, 1))
    assert day_start(dt.date(9999, 12, 31)) == dt.datetime(9999, 12, 30, 23, tzinfo=dt.UTC)


def test_a_date_time_with_an_offset_is_a_moment(guideline_dir: Path) -> None:
    with_effective(guideline_dir, "effective: {from: 2026-09-01T06:00:00+02:00}")
    (g,) = load_guidelines(guideline_dir).guidelines
    assert g.starts == dt.datetime(2026, 9, 1, 4, tzinfo=dt.UTC)
    assert g.effective_from.isoformat() == "2026-09-01T06:00:00+02:00"
    assert not g.in_force_at(dt.datetime(2026, 9, 1, 3, 59, 59, tzinfo=dt.UTC))
    assert g.in_force_at(dt.datetime(2026, 9, 1, 4, tzinfo=dt.UTC))
    # Date questions are asked at the start of the day in Denmark: 1 September is too early.
    assert not g.in_force(dt.date(2026, 9, 1))
    assert g.in_force(dt.date(2026, 9, 2))


def test_a_quoted_date_time_with_z_is_accepted(guideline_dir: Path) -> None:
    with_effective(guideline_dir, 'effective: {from: "2020-01-01", until: "2026-09-01T04:00:00Z"}')
    (g,) = load_guidelines(guideline_dir).guidelines
    assert g.ends == dt.datetime(2026, 9, 1, 4, tzinfo=dt.UTC)


def test_dates_keep_their_meaning(guideline_dir: Path) -> None:
    with_effective(guideline_dir, "effective: {from: 2020-01-01, until: 2026-09-01}")
    (g,) = load_guidelines(guideline_dir).guidelines
    assert g.in_force(dt.date(2020, 1, 1)) and g.in_force(dt.date(2026, 8, 31))
    assert not g.in_force(dt.date(2019, 12, 31)) and not g.in_force(dt.date(2026, 9, 1))
    assert g.ends == dt.datetime(2026, 8, 31, 22, tzinfo=dt.UTC)


def test_a_date_time_without_an_offset_is_an_error_with_its_line(guideline_dir: Path) -> None:
    path = with_effective(guideline_dir, "effective: {from: 2026-09-01T06:00:00}")
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "effective" in text)
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    (error,) = [str(e) for e in caught.value.errors]
    assert f"example.yaml:{line}:" in error
    assert "needs an explicit UTC offset" in error


def test_until_must_follow_from_as_moments(guideline_dir: Path) -> None:
    # 22:00 UTC on 31 August is midnight in Denmark on 1 September: until equals from.
    with_effective(guideline_dir, "effective: {from: 2026-09-01, until: 2026-08-31T22:00:00+00:00}")
    with pytest.raises(RuleFileError, match=r"effective\.until must be after effective\.from"):
        load_guidelines(guideline_dir)


def test_versions_may_meet_at_a_moment_but_not_overlap(guideline_dir: Path) -> None:
    with_effective(guideline_dir, "effective: {from: 2020-01-01, until: 2026-09-01T06:00:00+02:00}")
    newer = (guideline_dir / "example.yaml").read_text().replace("version: 1.0.0", "version: 1.1.0")
    later = guideline_dir / "example-1.1.yaml"
    later.write_text(newer.replace("effective: {from: 2020-01-01, until: ", "effective: {from: "))
    guidelines = load_guidelines(guideline_dir)
    switch = dt.datetime(2026, 9, 1, 4, tzinfo=dt.UTC)
    assert switch in guidelines.switches
    before = guidelines.in_force_at(switch - dt.timedelta(microseconds=1))
    after = guidelines.in_force_at(switch)
    assert [g.version for g in before] == ["1.0.0"]
    assert [g.version for g in after] == ["1.1.0"]
    # A sweep date sees exactly one version: the one in force when the day began in Denmark.
    assert [g.version for g in guidelines.in_force(dt.date(2026, 9, 1))] == ["1.0.0"]
    assert [g.version for g in guidelines.in_force(dt.date(2026, 9, 2))] == ["1.1.0"]

    later.write_text(
        newer.replace(
            "effective: {from: 2020-01-01, until: 2026-09-01T06:00:00+02:00}",
            "effective: {from: 2026-09-01T05:00:00+02:00}",
        )
    )
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    assert "both in force from 2026-09-01T05:00:00+02:00" in str(caught.value)
