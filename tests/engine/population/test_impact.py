"""Impact before publishing: a changed threshold moves exactly the patients the per-patient engine
says it moves, and an unchanged copy moves nobody.

The expected movements are computed independently, patient by patient, with
:class:`engine.patient.PatientEngine` on both guideline sets; the diff under test runs the DuckDB
sweep over a store written from the same synthetic population. The library is cut to the diabetes
guidelines (and metformin-kidney, which the change leaves alone) to keep the sweeps fast.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from engine.patient import PatientEngine
from engine.population.duckdb_engine import sweep
from engine.population.impact import ImpactReport, impact, impact_json, impact_text
from engine.population.outcomes import PopulationOutcome
from engine.population.store import load_store, write_store
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet, load_guidelines
from service.cli import app
from tests.engine.population.synthetic import AS_OF, CLUSTERS, LIBRARY

CHANGED = "t2d-hba1c"
KEPT = (CHANGED, "diabetes-hba1c-indicators", "metformin-kidney")
THRESHOLD = ("        value: 48\n", "        value: 53\n")  # target under 5 years' duration


def copy_library(directory: Path, *, relax: bool) -> Path:
    """Part of the shipped library, optionally with the under-5-years HbA1c target 48 -> 53."""
    shutil.copytree(LIBRARY / "valuesets", directory / "valuesets")
    for name in KEPT:
        shutil.copy(LIBRARY / f"{name}.yaml", directory)
    if relax:
        path = directory / f"{CHANGED}.yaml"
        text = path.read_text(encoding="utf-8")
        assert text.count(THRESHOLD[0]) == 1
        path.write_text(text.replace(*THRESHOLD), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("impact")
    return {
        "old": copy_library(root / "old", relax=False),
        "relaxed": copy_library(root / "relaxed", relax=True),
        "copy": copy_library(root / "copy", relax=False),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, patients: list[PatientRecord]) -> Path:
    directory = tmp_path_factory.mktemp("store")
    write_store(facts_tables(patients), directory, CLUSTERS)
    return directory


def swept(store: Path, guidelines: GuidelineSet) -> list[PopulationOutcome]:
    with duckdb.connect() as con:
        load_store(con, store, guidelines)
        return list(sweep(con, guidelines, AS_OF))


def diff(
    store: Path, old: GuidelineSet, before: list[PopulationOutcome], new: GuidelineSet
) -> ImpactReport:
    return impact(
        before,
        swept(store, new),
        old.in_force(AS_OF),
        new.in_force(AS_OF),
        AS_OF,
        CLUSTERS,
        language="en",
    )


@pytest.fixture(scope="module")
def library(dirs: dict[str, Path]) -> GuidelineSet:
    return load_guidelines(dirs["old"])


@pytest.fixture(scope="module")
def before(store: Path, library: GuidelineSet) -> list[PopulationOutcome]:
    return swept(store, library)


@pytest.fixture(scope="module")
def relaxed(dirs: dict[str, Path]) -> GuidelineSet:
    return load_guidelines(dirs["relaxed"])


@pytest.fixture(scope="module")
def report(
    store: Path, library: GuidelineSet, before: list[PopulationOutcome], relaxed: GuidelineSet
) -> ImpactReport:
    return diff(store, library, before, relaxed)


def per_patient(
    patients: list[PatientRecord], guidelines: GuidelineSet
) -> tuple[set[tuple[str, str, str, str]], Counter[tuple[str, str, str]]]:
    """(practice, guideline, recommendation, patient) on the lists, and indicator counts for
    everyone: (guideline, indicator, numerator|denominator) -> patients."""
    engine = PatientEngine(guidelines)
    lists, counts = set(), Counter()
    for patient in patients:
        for o in engine.evaluate(patient, AS_OF):
            if patient.practice is not None:
                for rec in o.recommendations:
                    lists.add((patient.practice, o.guideline, rec.id, patient.id))
            for i in o.indicators if o.in_register else ():
                counts[(o.guideline, i.id, "numerator")] += i.numerator
                counts[(o.guideline, i.id, "denominator")] += i.denominator
    return lists, counts


def test_the_diff_reports_exactly_the_patients_the_threshold_moves(
    report: ImpactReport,
    patients: list[PatientRecord],
    library: GuidelineSet,
    relaxed: GuidelineSet,
) -> None:
    before, counts_before = per_patient(patients, library)
    after, counts_after = per_patient(patients, relaxed)
    expected = {(*key, "entered") for key in after - before}
    expected |= {(*key, "left") for key in before - after}
    assert expected, "the synthetic population must have someone the change moves"
    found = {(c.practice, c.guideline, c.recommendation, c.patient, c.change) for c in report.lists}
    assert found == expected
    assert {c.guideline for c in report.lists} == {CHANGED}

    changes = {g.guideline: g.change for g in report.guidelines}
    assert changes.pop(CHANGED) == "changed"  # same version, other content
    assert set(changes.values()) == {"unchanged"}
    assert all(r.before == r.after for r in report.registers), "registers do not move"

    overall = {(i.guideline, i.indicator): i for i in report.indicators if i.level == "all"}
    for (guideline, indicator), change in overall.items():
        assert change.previous is not None and change.current is not None
        assert change.previous.numerator == counts_before[(guideline, indicator, "numerator")]
        assert change.current.numerator == counts_after[(guideline, indicator, "numerator")]
        assert change.current.denominator == counts_after[(guideline, indicator, "denominator")]


def test_patients_are_named_in_practice_sections_only(report: ImpactReport) -> None:
    text = impact_text(report)
    moved = sorted({c.patient for c in report.lists})
    overall = text.split("== All patients\n", 1)[1].split("\n== ", 1)[0]
    assert "-" + str(len(moved)) + " patients on hba1c-above-target" in overall
    assert not any(patient in overall for patient in moved)
    for c in report.lists:
        section = text.split(f"== Practice {c.practice}\n", 1)[1].split("\n== ", 1)[0]
        assert c.patient in section
    document = impact_json(report)
    for unit in document["units"]:  # type: ignore[union-attr]
        for entry in unit["lists"]:
            assert ("patients_left" in entry) == (unit["level"] == "practice")


def test_an_unchanged_copy_reports_no_change(
    store: Path, library: GuidelineSet, before: list[PopulationOutcome], dirs: dict[str, Path]
) -> None:
    report = diff(store, library, before, load_guidelines(dirs["copy"]))
    assert report.unchanged
    assert report.lists == ()
    assert {g.change for g in report.guidelines} == {"unchanged"}
    assert "No patient enters or leaves a list" in impact_text(report)


def test_the_command_prints_the_movements_as_text_and_json(
    store: Path, dirs: dict[str, Path], report: ImpactReport
) -> None:
    runner = CliRunner()
    args = ["guidelines", "diff", str(dirs["old"]), str(dirs["relaxed"]), "--store", str(store)]
    args += ["--as-of", AS_OF.isoformat()]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    header, body = text.output.split("\n", 1)
    assert header.startswith(f"Impact of {dirs['relaxed']} against {dirs['old']} on {AS_OF}")
    assert body == impact_text(report).split("\n", 1)[1]
    first = report.lists[0]
    assert f"== Practice {first.practice}" in text.output
    (version,) = {g.version for g in load_guidelines(dirs["old"]).guidelines if g.id == CHANGED}
    assert f"{CHANGED} {version}: changed (same version, other content)" in text.output

    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["unchanged"] is False
    practice = next(
        u for u in document["units"] if (u["level"], u["id"]) == ("practice", first.practice)
    )
    (entry,) = [e for e in practice["lists"] if e["recommendation"] == first.recommendation]
    assert first.patient in entry[f"patients_{first.change}"]

    missing = runner.invoke(app, [*args[:-4], "--store", str(store.parent / "nope"), *args[-2:]])
    assert missing.exit_code == 2
