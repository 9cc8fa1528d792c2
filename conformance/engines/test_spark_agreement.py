"""Spark runs the same compiled trees as DuckDB, so it must agree with the per-patient engine too,
and `vejviser sweep --engine spark` must publish the very files `--engine duckdb` publishes.

Why slow-only: a local Spark session costs tens of seconds to start and plans every guideline's
queries on the JVM, minutes in all even for a small population. The DuckDB suite covers the SQL
itself on every run; this one guards the Spark rendering of the very same trees.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

pytest.importorskip("pyspark")

from conformance.engines.test_agreement import AS_OF, assert_same, library, per_patient, population
from engine.population.run import MANIFEST
from engine.population.store import write_store
from engine.population.tables import facts_tables
from service.cli import app


def published(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run


def outcomes(run: Path) -> dict[tuple[str, str], tuple]:
    """outcomes.parquet keyed and shaped like per_patient's results (its register rows)."""
    rows = pq.read_table(run / str(AS_OF) / "outcomes.parquet").to_pylist()
    return {
        (r["patient"], r["guideline"]): (
            r["in_register"],
            tuple(sorted(r["recommendations"])),
            tuple((i["indicator"], i["membership"]) for i in r["indicators"]),
            tuple((t["name"], t["value"], t["source"], t["set_by"]) for t in r["targets"]),
        )
        for r in rows
    }


@pytest.mark.slow
def test_a_spark_sweep_agrees_and_publishes_the_same_files(tmp_path: Path) -> None:
    patients = population(60, seed=11)  # one in ten dead, some on the very day
    expected = per_patient(library(), patients, AS_OF)
    assert sum(v[0] for v in expected.values()) > len(patients) // 10
    write_store(facts_tables(patients), tmp_path / "store")
    runs = {}
    for engine in ("duckdb", "spark"):
        args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", str(AS_OF)]
        result = CliRunner().invoke(
            app, [*args, "--out", str(tmp_path / engine), "--engine", engine, "--quiet"]
        )
        assert result.exit_code == 0, result.output
        runs[engine] = published(tmp_path / engine)
    # outcomes.parquet holds the registers (no exceptions here); outside them nothing fires
    registered = {key: value for key, value in expected.items() if value[0]}
    assert all(value == (False, (), (), ()) for value in expected.values() if not value[0])
    assert_same(registered, outcomes(runs["spark"]))
    duckdb_files = sorted(p.relative_to(runs["duckdb"]) for p in runs["duckdb"].rglob("*"))
    spark_files = sorted(p.relative_to(runs["spark"]) for p in runs["spark"].rglob("*"))
    assert spark_files == duckdb_files
    differ = [
        name
        for name in duckdb_files
        if (runs["duckdb"] / name).is_file()
        and name.name != MANIFEST
        and (runs["duckdb"] / name).read_bytes() != (runs["spark"] / name).read_bytes()
    ]
    assert differ == []
    assert '"engine": "spark"' in (runs["spark"] / MANIFEST).read_text()
