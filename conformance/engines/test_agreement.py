"""The per-patient engine is the reference; the SQL engine must conclude exactly the same.

Like OpenSAFELY ehrQL's spec tests: one seeded synthetic population, every guideline in the
library, compared per patient and guideline: register, recommendations, indicator memberships and
the shared individual targets (value, source, guideline that set it). One patient in ten has died,
some of them on or next to the reference date.
"""

from __future__ import annotations

import datetime as dt
import random
from functools import cache
from pathlib import Path

import duckdb
import pytest

from engine.patient import PatientEngine
from engine.population.duckdb_engine import load_tables, sweep
from engine.population.tables import facts_tables
from fhir_adapter.normalise import normalise_patient
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet, load_guidelines
from synth.patients import generate_patient

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"
AS_OF = dt.date(2026, 10, 1)


@cache
def library() -> GuidelineSet:
    return load_guidelines(LIBRARY)


def population(size: int, seed: int) -> list[PatientRecord]:
    patients = []
    for number in range(size):
        rng = random.Random(f"{seed}-{number}")
        resources = generate_patient(rng, f"p{number}", rng.randint(5, 150), AS_OF)
        _die(random.Random(f"{seed}-{number}-death"), resources)
        patients.append(normalise_patient(resources))
    return patients


def _die(rng: random.Random, resources: list[dict]) -> None:
    """One patient in ten dies: most within three years before AS_OF, some on the very day or
    after it, some on an unknown date. Its own random stream: the rest of the patient is as
    the seed always made it."""
    if rng.random() >= 0.1:
        return
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    if rng.random() < 0.2:
        patient["deceasedBoolean"] = True
        return
    day = AS_OF + dt.timedelta(days=rng.choice([rng.randint(-3 * 365, 30), -1, 0, 1]))
    patient["deceasedDateTime"] = f"{day.isoformat()}T{rng.randint(0, 23):02d}:15:00+01:00"


def per_patient(
    guidelines: GuidelineSet, patients: list[PatientRecord], as_of: dt.date
) -> dict[tuple[str, str], tuple]:
    engine = PatientEngine(guidelines)
    found = {}
    for patient in patients:
        for o in engine.evaluate(patient, as_of):
            found[(patient.id, o.guideline)] = (
                o.in_register,
                tuple(sorted(r.id for r in o.recommendations)),
                tuple((i.id, i.membership) for i in o.indicators),
                tuple((t.name, t.value, t.source, t.set_by) for t in o.targets),
            )
    return found


def on_duckdb(
    guidelines: GuidelineSet, patients: list[PatientRecord], as_of: dt.date
) -> dict[tuple[str, str], tuple]:
    with duckdb.connect() as con:
        load_tables(con, facts_tables(patients), guidelines)
        return swept(con, guidelines, as_of)


def swept(
    con: duckdb.DuckDBPyConnection, guidelines: GuidelineSet, as_of: dt.date
) -> dict[tuple[str, str], tuple]:
    """The SQL engine's outcomes over the tables loaded in ``con``, keyed like per_patient's."""
    return {
        (o.patient, o.guideline): (
            o.in_register,
            tuple(sorted(o.recommendations)),
            o.indicators,
            o.targets,
        )
        for o in sweep(con, guidelines, as_of)
    }


def assert_same(expected: dict[tuple[str, str], tuple], got: dict[tuple[str, str], tuple]) -> None:
    """Every patient x guideline outcome equal (register, recommendations, indicators, targets)."""
    assert set(got) == set(expected)
    differences = [
        (key, expected[key], got[key]) for key in sorted(expected) if expected[key] != got[key]
    ]
    assert not differences, f"{len(differences)} of {len(expected)} differ, e.g. {differences[:3]}"


def assert_agree(guidelines: GuidelineSet, patients: list[PatientRecord], as_of: dt.date) -> None:
    expected = per_patient(guidelines, patients, as_of)
    assert_same(expected, on_duckdb(guidelines, patients, as_of))
    registered = sum(v[0] for v in expected.values())
    assert registered > len(patients) // 10, "the population must exercise the guidelines"


@pytest.mark.parametrize("as_of", [AS_OF, dt.date(2025, 2, 28), dt.date(2024, 2, 29)])
def test_duckdb_agrees_with_the_per_patient_engine(as_of: dt.date) -> None:
    assert_agree(library(), population(300, seed=7), as_of)


@pytest.mark.slow
def test_duckdb_agrees_on_20000_patients() -> None:
    assert_agree(library(), population(20_000, seed=2026), AS_OF)
