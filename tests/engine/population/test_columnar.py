"""The runner's set-based outputs (DuckDB, engine/population/columnar.py) are the reference's.

:func:`run_sweep` keeps a sweep's rows in DuckDB; :func:`write_outputs` builds the same files from
Python outcomes with the pure functions of outputs.py and measure_report.py. Both run here over
the same sweep, with clusters, a practice-less patient and CDS-feedback exceptions, and every file
must be the same: CSVs and MeasureReports byte for byte, outcomes.parquet row for row.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from engine.population import columnar
from engine.population import outputs as out
from engine.population.duckdb_engine import configure, load_tables, sweep
from engine.population.run import RunManifest, list_reasons, run_sweep, write_outputs
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet
from service.feedback import PatientException
from tests.engine.population.synthetic import AS_OF, CLUSTERS

SUPPRESS = 5
# a practice whose only patient is in no register: it still gets its list and indicator rows
UNREGISTERED = PatientRecord("zz-healthy", dt.date(2000, 5, 5), "female", "999999")


@pytest.fixture(scope="module")
def con(
    library: GuidelineSet, patients: list[PatientRecord]
) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as connection:
        configure(connection, memory_limit="1GB", threads=2)
        load_tables(connection, facts_tables([*patients, UNREGISTERED]), library)
        yield connection


@pytest.fixture(scope="module")
def exceptions(con: duckdb.DuckDBPyConnection, library: GuidelineSet) -> list[PatientException]:
    """Feedback for listed patients of two guidelines, one recorded after the date (not in force),
    and one for a patient who is not in the guideline's register."""
    outcomes = list(sweep(con, library, AS_OF))
    listed = sorted({(o.patient, o.guideline) for o in outcomes if o.recommendations})
    assert len(listed) >= 3
    p3, g3 = min((o.patient, o.guideline) for o in outcomes if not o.in_register)
    recorded = dt.datetime(2026, 9, 1, 10, 0, tzinfo=dt.UTC)
    late = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
    (p0, g0), (p1, g1), (p2, g2) = listed[:3]
    return [
        PatientException(p0, g0, None, "declined", recorded, "u1"),
        PatientException(p0, g0, None, "not-suitable", recorded, "u1"),
        PatientException(p1, g1, None, "declined", late, "u2"),
        PatientException(p2, g2, None, "not-suitable", recorded, "u3"),
        PatientException(p3, g3, None, "declined", recorded, "u4"),
    ]


@pytest.fixture(scope="module")
def columnar_run(
    con: duckdb.DuckDBPyConnection,
    library: GuidelineSet,
    exceptions: list[PatientException],
    tmp_path_factory: pytest.TempPathFactory,
) -> RunManifest:
    out_dir = tmp_path_factory.mktemp("columnar")
    return run_sweep(con, library, [AS_OF], out_dir, CLUSTERS, SUPPRESS, exceptions)


@pytest.fixture(scope="module")
def reference(
    con: duckdb.DuckDBPyConnection,
    library: GuidelineSet,
    exceptions: list[PatientException],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    directory = tmp_path_factory.mktemp("reference") / str(AS_OF)
    raw = list(sweep(con, library, AS_OF))
    reasons = list_reasons(con, library, AS_OF, raw, "da")
    write_outputs(directory, library, AS_OF, raw, reasons, CLUSTERS, SUPPRESS, exceptions, "da")
    return directory


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.suffix != ".parquet"
    }


def test_every_file_is_the_reference_byte_for_byte(
    columnar_run: RunManifest, reference: Path
) -> None:
    mine = files(columnar_run.directory / str(AS_OF))
    theirs = files(reference)
    assert sorted(mine) == sorted(theirs)
    assert any(name.startswith("lists/") for name in mine)
    assert any(name.startswith("measure_reports/") for name in mine)
    assert "lists/999999.csv" in mine, "a practice with nobody in any register has a list"
    assert ",999999," in mine["indicators.csv"].decode(), "and its indicator rows of zeros"
    for name, content in theirs.items():
        assert mine[name] == content, name


def test_outcomes_are_the_reference_row_for_row(columnar_run: RunManifest, reference: Path) -> None:
    mine = pq.read_table(columnar_run.directory / str(AS_OF) / "outcomes.parquet")
    theirs = pq.read_table(reference / "outcomes.parquet")
    assert mine.column_names == list(out.OUTCOME_SCHEMA.names)
    assert mine.to_pylist() == theirs.to_pylist()
    excepted = [r for r in mine.to_pylist() if r["exceptions"]]
    assert sorted((r["in_register"], tuple(r["exceptions"])) for r in excepted) == [
        (False, ("declined",)),
        (True, ("declined", "not-suitable")),
        (True, ("not-suitable",)),
    ]


def test_outcomes_hold_the_registers_and_the_exceptions_recorded_outside_them(
    con: duckdb.DuckDBPyConnection,
    library: GuidelineSet,
    exceptions: list[PatientException],
    columnar_run: RunManifest,
    patients: list[PatientRecord],
) -> None:
    rows = pq.read_table(columnar_run.directory / str(AS_OF) / "outcomes.parquet").to_pylist()
    outcomes = list(sweep(con, library, AS_OF))
    recorded = {(e.patient_id, e.guideline_id) for e in exceptions if e.recorded_at.date() <= AS_OF}
    registered = {(o.patient, o.guideline) for o in outcomes if o.in_register}
    assert registered and len(registered) < len(outcomes)
    assert {(r["patient"], r["guideline"]) for r in rows} == registered | recorded
    assert len(rows) == len(registered | recorded)
    assert columnar_run.patients == len(patients) + 1
    assert "zz-healthy" not in {r["patient"] for r in rows}


def test_the_manifest_counts_and_times_each_step(columnar_run: RunManifest) -> None:
    steps = {name.split("/", 1)[1] for name in columnar_run.timings}
    assert steps == {
        "sweep",
        "outcomes",
        "indicators",
        "lists",
        "measure_reports",  # in a worker process, beside the lists
        "measure_reports_wait",
    }
    assert columnar_run.rows[f"{AS_OF}/outcomes.parquet"] > 0
    assert columnar_run.rows[f"{AS_OF}/lists"] > 0


def test_a_failing_measure_reports_worker_fails_the_caller_with_its_error(tmp_path: Path) -> None:
    worker = columnar.MeasureReportsWorker(
        tmp_path / "no-such-outcomes.parquet", tmp_path / "date", {"1": "1"}, [], AS_OF, "da"
    )
    with pytest.raises(RuntimeError, match=r"no-such-outcomes\.parquet"):
        worker.wait()


def test_a_stopped_measure_reports_worker_writes_nothing_more(tmp_path: Path) -> None:
    worker = columnar.MeasureReportsWorker(
        tmp_path / "no-such-outcomes.parquet", tmp_path / "date", {}, [], AS_OF, "da"
    )
    worker.stop()
    with pytest.raises(RuntimeError, match=r"died|failed"):
        worker.wait()


def test_no_csv_cell_starts_like_a_formula_in_either_path(
    library: GuidelineSet, patients: list[PatientRecord], tmp_path: Path
) -> None:
    """Found by QA: ids from the data went into the lists and indicator files as they were, and
    Excel runs ``=cmd|' /C calc'!A0`` or ``@SUM(1,1)`` in a cell as a formula. Each such text
    cell starts with ``'``; the per-patient path writes the same bytes."""
    practice = next(p.practice for p in patients if p.practice)
    renamed = {practice: "=1+1"}
    hostile = ["=HYPERLINK(x)", "+1+1", "-2-3", "@SUM(1,1)", "\tx"]
    moved = [
        p._replace(
            id=hostile[n] if n < len(hostile) else p.id,
            practice=renamed.get(p.practice, p.practice),  # type: ignore[arg-type]
        )
        for n, p in enumerate(patients)
    ]
    clusters = {renamed.get(k, k): "@cluster" for k in CLUSTERS}
    with duckdb.connect() as connection:
        load_tables(connection, facts_tables(moved), library)
        manifest = run_sweep(connection, library, [AS_OF], tmp_path / "run", clusters)
        raw = list(sweep(connection, library, AS_OF))
        reasons = list_reasons(connection, library, AS_OF, raw, "da")
    reference = tmp_path / "reference"
    write_outputs(reference, library, AS_OF, raw, reasons, clusters, 5, [], "da")
    mine = files(manifest.directory / str(AS_OF))
    assert mine == files(reference)
    written = [n for n in mine if n.endswith(".csv")]
    cells = [
        c
        for n in written
        for row in csv.reader(io.StringIO(mine[n].decode("utf-8-sig")))
        for c in row
    ]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t"))]
    assert "'=1+1" in cells and "'@cluster" in cells
    listed = {c for c in cells if c.startswith("'")}
    assert listed & {f"'{h}" for h in hostile}, "some hostile patient is on a list"
    indicators = manifest.directory / str(AS_OF) / "indicators.csv"
    with indicators.open(encoding="utf-8-sig", newline="") as f:
        ids = {out.indicator_row_from_csv(r).id for r in csv.DictReader(f)}
    assert {"=1+1", "@cluster"} <= ids, "read back as the data have them"
