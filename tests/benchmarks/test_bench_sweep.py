"""The sweep benchmark's machinery: tiled stores and the report (no timing assertions: the
machine is shared and noisy; the numbers live in docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from benchmarks.bench_sweep import BEGIN, END, GOAL_SIZE, Run, render, tiled_store
from benchmarks.machine import write_section
from engine.population.store import clusters_of, snapshot_of, write_store
from engine.population.tables import facts_tables
from tests.engine.population.synthetic import population


def test_a_tiled_store_is_copies_with_their_own_ids_and_practices(tmp_path: Path) -> None:
    patients = population(12)
    base = tmp_path / "base"
    clusters = {"100001": "klynge-nord", "100002": "klynge-nord", "100003": "klynge-syd"}
    write_store(facts_tables(patients), base, clusters)
    rows = json.loads((base / "manifest.json").read_text())["rows"]
    tiled = tiled_store(base, 3 * rows["patients"], tmp_path)
    assert snapshot_of(tiled) != snapshot_of(base)
    with duckdb.connect() as con:

        def one(sql: str, table: str) -> tuple[object, ...]:
            return con.execute(sql.format(f"'{tiled / table}.parquet'")).fetchall()[0]

        assert one("SELECT count(*), count(DISTINCT patient) FROM {}", "patients") == (36, 36)
        practices = con.execute(f"SELECT DISTINCT practice FROM '{tiled}/patients.parquet'")
        assert {"100001", "100001-c1", "100001-c2"} <= {p for (p,) in practices.fetchall()}
        observations = one("SELECT count(*), count(DISTINCT resource) FROM {}", "observations")
        assert observations[0] == 3 * rows["observations"]
        assert one("SELECT count(*) FROM {}", "codes") == (rows["codes"],)
    assert clusters_of(tiled)["100003-c2"] == "klynge-syd-c2"


def test_the_report_says_whether_the_goal_was_met(tmp_path: Path) -> None:
    timings = {"sweep": 100.0, "outcomes": 50.0, "indicators": 5.0, "lists": 60.0,
               "measure_reports": 40.0}  # fmt: skip
    runs = [
        Run(100_000, "duckdb", "full", 12.0, 1.1, 0.5, 0.7, {"load": 1.0, "timings": timings}),
        Run(GOAL_SIZE, "duckdb", "full", 400.0, 5.0, 1.0, 2.0, {"load": 9.0, "timings": timings}),
        Run(100_000, "spark", "sql", 90.0, 3.0, 1.0, 1.0, error="exit code 1"),
    ]
    section = render(runs, "python -m benchmarks.bench_sweep", "2 cores", "commit abc", ["n"])
    assert section.startswith(BEGIN) and section.rstrip().endswith(END)
    assert "**not met** (wall 400 s, peak 5.00 GB: time 1.3 times the budget" in section
    assert "**did not finish** (exit code 1)" in section
    docs = tmp_path / "benchmarks.md"
    write_section(docs, section, BEGIN, END)
    write_section(docs, section.replace("2 cores", "two cores"), BEGIN, END)
    assert docs.read_text().count(BEGIN) == 1 and "two cores" in docs.read_text()


def test_the_report_dates_the_runs_not_the_report() -> None:
    first = Run(100_000, "duckdb", "full", 12.0, 1.1, 0.5, 0.7, measured="2026-01-02 10:00")
    last = Run(100_000, "duckdb", "full", 12.5, 1.1, 0.5, 0.7, measured="2026-01-02 10:05")
    first.code = last.code = "commit abc"
    section = render([last, first], "python -m benchmarks.bench_sweep", "2 cores", "later", [])
    assert "- Date: 2026-01-02 10:00 to 2026-01-02 10:05 UTC" in section
    assert "- Code: commit abc" in section
