"""A guideline's base table is its register: the per-patient engine's, patient for patient."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from conformance.engines.test_agreement import assert_same, on_duckdb, per_patient
from engine.patient import PatientEngine
from engine.population.duckdb_engine import configure, load_tables, sweep_tables
from engine.population.sql import GuidelineSql, table_name
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules import tree as t
from rules.expressions import references
from rules.guideline_set import GuidelineSet, load_guidelines
from tests.engine.population.synthetic import AS_OF


def test_each_base_table_holds_exactly_the_register(
    library: GuidelineSet, patients: list[PatientRecord]
) -> None:
    engine = PatientEngine(library)
    expected: dict[str, set[str]] = {}
    for p in patients:
        for o in engine.evaluate(p, AS_OF):
            if o.in_register:
                expected.setdefault(o.guideline, set()).add(p.id)
    with duckdb.connect() as con:
        configure(con, memory_limit="1GB", threads=2)
        load_tables(con, facts_tables(patients), library)
        rendered = sweep_tables(con, library, AS_OF)
        for index, sql in rendered.compiled:
            rows = con.execute(
                f"SELECT patient, in_register FROM {table_name(index, 'base')}"
            ).fetchall()
            assert all(registered for _, registered in rows)
            assert len(rows) == len({patient for patient, _ in rows}), "one row a patient"
            assert {patient for patient, _ in rows} == expected.get(sql.g.id, set()), sql.g.id
    assert len(expected) >= 5, "the population must fill several registers"


def test_the_register_is_decided_on_its_own_facts_and_what_they_are_built_from(
    library: GuidelineSet,
) -> None:
    for g in library.in_force(AS_OF):
        reads = GuidelineSql(0, g, AS_OF)._register_reads()
        facts = {f.name: f for f in g.facts}
        assert references(g.register) & set(facts) <= reads
        for name in reads:
            primitive = facts[name].primitive
            if isinstance(primitive, t.Derived):
                assert references(primitive.expr) & set(facts) <= reads, (g.id, name)


def test_a_register_on_derived_facts_agrees_with_the_per_patient_engine(
    guideline_dir: Path, patients: list[PatientRecord]
) -> None:
    """The shipped registers read stored facts only; here one reads a derived fact that reads
    another (frail: age >= 85), so the first join must bring in what both are built from."""
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("when: t2d and age >= 18", "when: adult_diabetic")
    text = text.replace(
        '  frail: {expression: "age >= 85"}\n',
        '  frail: {expression: "age >= 85"}\n'
        '  adult_diabetic: {expression: "t2d and not frail and age >= 18"}\n',
    )
    path.write_text(text, encoding="utf-8")
    guidelines = load_guidelines(guideline_dir)
    (g,) = guidelines.in_force(AS_OF)
    assert GuidelineSql(0, g, AS_OF)._register_reads() == {"adult_diabetic", "frail", "t2d"}
    expected = per_patient(guidelines, patients, AS_OF)
    assert sum(v[0] for v in expected.values()) > 0, "somebody must be in the register"
    assert_same(expected, on_duckdb(guidelines, patients, AS_OF))


def test_one_goal_with_two_targets_for_the_measure_gives_one_target_in_both_engines(
    library: GuidelineSet,
) -> None:
    """Found by QA: a Goal with two HbA1c targets (64 and 53) tied on (start, resource), and the
    engines chose by row order: Spark's max_by took 64 where the others took 53. The lower wins
    in every engine, whatever the order of the rows."""
    from fhir_adapter.records import ConditionRecord, GoalRecord, ObservationRecord

    hba1c = (("npu", "NPU27300"),)
    as_of = dt.date(2026, 3, 31)
    patients = []
    for pid, values in (("high-first", (64.0, 53.0)), ("low-first", (53.0, 64.0))):
        goals = tuple(
            GoalRecord(f"Goal/{pid}", hba1c, v, "mmol/mol", dt.date(2025, 1, 1)) for v in values
        )
        patients.append(
            PatientRecord(
                pid,
                dt.date(1950, 1, 1),
                "female",
                None,
                observations=(
                    ObservationRecord(
                        f"Observation/{pid}",
                        hba1c,
                        dt.date(2026, 3, 1),
                        60.0,
                        None,
                        "mmol/mol",
                        "final",
                    ),
                ),
                conditions=(
                    ConditionRecord(
                        f"Condition/{pid}",
                        (("icpc2", "T90"),),
                        dt.date(2010, 1, 1),
                        None,
                        "active",
                    ),
                ),
                goals=goals,
            )
        )
    expected = per_patient(library, patients, as_of)
    for pid in ("high-first", "low-first"):
        targets = expected[(pid, "t2d-hba1c")][3]
        assert targets == (("hba1c_target", 53.0, "goal", "t2d-hba1c"),), targets
    assert_same(expected, on_duckdb(library, patients, as_of))
