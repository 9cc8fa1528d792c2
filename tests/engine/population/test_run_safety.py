"""A run is published whole or not at all, and a restart writes the same bytes.

A few guidelines and two reference dates keep the repeated sweeps here quick.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from engine.population import run as runner
from engine.population.duckdb_engine import load_tables
from engine.population.run import RunInProgressError, RunManifest, compare, run_sweep
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet
from tests.engine.population.synthetic import AS_OF, CLUSTERS

DATES = [dt.date(2026, 4, 1), AS_OF]
SUBSET = {"t2d-hba1c", "diabetes-hba1c-indicators", "metformin-kidney"}


@pytest.fixture(scope="module")
def guidelines(library: GuidelineSet) -> GuidelineSet:
    files = tuple(f for f in library.files if f.guideline.id in SUBSET)
    return GuidelineSet(files, library.valuesets, library.index)


@pytest.fixture(scope="module")
def con(
    guidelines: GuidelineSet, patients: list[PatientRecord]
) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as connection:
        load_tables(connection, facts_tables(patients), guidelines)
        yield connection


@pytest.fixture(scope="module")
def clean(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunManifest:
    return run_sweep(con, guidelines, DATES, tmp_path_factory.mktemp("clean"), CLUSTERS)


def published_bytes(directory: Path) -> dict[str, bytes]:
    """Every data file of a run (not the manifest, whose timings differ)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_a_run_over_two_dates_writes_both_and_compares_them(clean: RunManifest) -> None:
    assert clean.as_of == tuple(str(d) for d in DATES)
    for day in DATES:
        assert (clean.directory / str(day) / "outcomes.parquet").is_file()
        assert (clean.directory / str(day) / "indicators.csv").is_file()
    name = f"{DATES[0]}_{DATES[1]}"
    assert clean.comparisons == (name,)
    assert (clean.directory / "comparisons" / name / "comparison.csv").is_file()
    assert (clean.directory / "comparisons" / name / "comparison.md").is_file()
    # a run directory stands for its latest date
    same = compare(clean.directory, clean.directory / str(DATES[1]))
    assert same.lists == () and all(i.rate_change in (0, None) for i in same.indicators)
    moved = compare(clean.directory / str(DATES[0]), clean.directory)
    assert moved.lists, "six months move some patients on or off a list"


def test_a_crash_publishes_nothing_and_a_restart_writes_the_same_bytes(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    clean: RunManifest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = runner._sweep_date
    calls = []

    def dies_on_the_second_date(*args: object, **kwargs: object) -> set[str]:
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed half-way")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_sweep_date", dies_on_the_second_date)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(con, guidelines, DATES, tmp_path, CLUSTERS)
    assert not (tmp_path / clean.run_id).exists(), "nothing is published"
    stale = tmp_path / f".partial-{clean.run_id}"
    assert (stale / str(DATES[0]) / "outcomes.parquet").is_file(), "the first date was written"
    assert not (stale / "manifest.json").exists()

    other = tmp_path / ".partial-killed-with-other-inputs"
    (other / str(DATES[0])).mkdir(parents=True)
    monkeypatch.setattr(runner, "_sweep_date", real)
    again = run_sweep(con, guidelines, DATES, tmp_path, CLUSTERS)
    assert again.run_id == clean.run_id
    assert not stale.exists(), "the stale partial directory is removed"
    assert not other.exists(), "and so are those of other killed runs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [clean.run_id]
    assert (tmp_path / clean.run_id / "manifest.json").is_file()
    assert published_bytes(again.directory) == published_bytes(clean.directory)


def test_a_published_run_is_not_redone(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    clean: RunManifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_sweep(*args: object, **kwargs: object) -> None:
        raise AssertionError("a published run must not be swept again")

    monkeypatch.setattr(runner, "sweep_tables", no_sweep)
    assert run_sweep(con, guidelines, DATES, clean.directory.parent, CLUSTERS) == clean


def test_a_run_being_written_is_not_joined(
    con: duckdb.DuckDBPyConnection, guidelines: GuidelineSet, clean: RunManifest, tmp_path: Path
) -> None:
    fd = os.open(tmp_path / f".lock-{clean.run_id}", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(RunInProgressError):
            run_sweep(con, guidelines, DATES, tmp_path, CLUSTERS)
    finally:
        os.close(fd)
    assert not (tmp_path / clean.run_id).exists()


def test_other_inputs_make_another_run(clean: RunManifest, guidelines: GuidelineSet) -> None:
    base = (guidelines, DATES, "", CLUSTERS, 5, [], "da")
    assert runner.run_identity(*base) == clean.run_id
    assert runner.run_identity(guidelines, DATES, "snapshot-2", *base[3:]) != clean.run_id
    assert runner.run_identity(guidelines, DATES, "", {}, *base[4:]) != clean.run_id
    assert runner.run_identity(guidelines, DATES[:1], *base[2:]) != clean.run_id


def test_every_practice_gets_files_of_its_own_whatever_it_is_called(
    guidelines: GuidelineSet, patients: list[PatientRecord], tmp_path: Path
) -> None:
    """Practices come from the data: a name that is a path (``..``), too long for a file name,
    or the digested form of another practice's name must neither fail the run nor put one
    practice's patients in another's list or folder (found by QA)."""
    clashing = "x/y"
    names = [clashing, f"x_y-{runner._digest(clashing)}", "..", ".", "7" * 300, "-rf/"]
    moved = [
        p._replace(practice=names[n % len(names)]) if p.practice is not None else p
        for n, p in enumerate(patients)
    ]
    files = {runner._safe(name) for name in names}
    assert len(files) == len(names)
    assert all(f[0] not in ".-" and len(f) <= 80 for f in files)
    with duckdb.connect() as connection:
        load_tables(connection, facts_tables(moved), guidelines)
        manifest = run_sweep(connection, guidelines, [AS_OF], tmp_path, {})
    day = manifest.directory / str(AS_OF)
    assert sorted(p.name for p in (day / "measure_reports").iterdir()) == sorted(files)
    assert not list(day.glob("*.json")), "no MeasureReport outside measure_reports/<practice>/"
    listed = duckdb.sql(
        f"SELECT practice, list(DISTINCT patient) FROM '{day / 'outcomes.parquet'}' "
        "WHERE len(recommendations) > 0 GROUP BY practice"
    ).fetchall()
    for practice, members in listed:
        text = (day / "lists" / f"{runner._safe(practice)}.csv").read_text(encoding="utf-8-sig")
        rows = text.splitlines()[1:]
        assert {row.split(",")[0] for row in rows} == set(members), practice
