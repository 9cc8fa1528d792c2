"""A sweep at a reference date uses the guideline version in force on that date (at the start of
the day in Denmark), and its outcomes name that version; both engines agree on it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from engine.patient import PatientEngine
from engine.population.duckdb_engine import load_tables, sweep
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import load_guidelines

OLD_UNTIL = "effective: {from: 2020-01-01, until: 2026-09-01T06:00:00+02:00}"


def test_each_date_is_swept_with_its_own_version(
    guideline_dir: Path, patients: list[PatientRecord]
) -> None:
    rule = guideline_dir / "example.yaml"
    text = rule.read_text(encoding="utf-8")
    rule.write_text(text.replace("effective: {from: 2020-01-01}", OLD_UNTIL), encoding="utf-8")
    (guideline_dir / "example-1.1.yaml").write_text(
        text.replace("version: 1.0.0", "version: 1.1.0").replace(
            "effective: {from: 2020-01-01}", "effective: {from: 2026-09-01T06:00:00+02:00}"
        ),
        encoding="utf-8",
    )
    guidelines = load_guidelines(guideline_dir)
    hashes = {g.version: g.content_hash for g in guidelines.guidelines}
    assert hashes["1.0.0"] != hashes["1.1.0"]
    engine = PatientEngine(guidelines)
    expected = {
        dt.date(2026, 9, 1): "1.0.0",  # the new version starts at 06:00 that day: too late
        dt.date(2026, 9, 2): "1.1.0",
    }
    with duckdb.connect() as con:
        load_tables(con, facts_tables(patients), guidelines)
        for day, version in expected.items():
            assert [g.version for g in guidelines.in_force(day)] == [version]
            outcomes = list(sweep(con, guidelines, day))
            assert len(outcomes) == len(patients)
            assert {o.version for o in outcomes} == {version}
            assert {o.version for p in patients[:20] for o in engine.evaluate(p, day)} == {version}
