"""Every feature of the rule language gives the same answer in both engines.

The library's guidelines use some of the language; a newly published guideline may use any of
it, and must then sweep as it evaluates per patient. ``language/language.yaml`` holds one
recommendation per feature (see its header): the outcomes must agree patient by patient, and a
practice's list must say what the card says, in both languages. Two guidelines that passed
``vejviser guidelines check`` and then stopped every sweep were found this way (a condition on a
target's reason, an expression fact that was a whole observation), and list texts that showed
'180' where the card showed '>180' (arithmetic on a lab's bound).
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from conformance.engines.test_agreement import (
    AS_OF,
    assert_same,
    on_duckdb,
    per_patient,
    population,
)
from engine.patient import PatientEngine
from engine.population.duckdb_engine import load_tables, sweep
from engine.population.run import MANIFEST, list_reasons
from engine.population.store import write_store
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet, load_guidelines
from service.cli import app

HERE = Path(__file__).parent
VALUESETS = HERE.parents[1] / "tests" / "fixtures" / "guidelines" / "valuesets"


@pytest.fixture(scope="module")
def language_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("language")
    shutil.copy(HERE / "language" / "language.yaml", directory)
    shutil.copytree(VALUESETS, directory / "valuesets")
    return directory


@pytest.fixture(scope="module")
def language(language_dir: Path) -> GuidelineSet:
    return load_guidelines(language_dir)


@cache
def patients() -> list[PatientRecord]:
    return population(300, seed=7)


def test_every_condition_agrees_and_fires_as_meant(language: GuidelineSet) -> None:
    expected = per_patient(language, patients(), AS_OF)
    assert on_duckdb(language, patients(), AS_OF) == expected
    (guideline,) = language.guidelines
    fired = {
        rec.id: sum(rec.id in outcome[1] for outcome in expected.values())
        for rec in guideline.recommendations
    }
    registered = sum(outcome[0] for outcome in expected.values())
    assert registered > len(patients()) // 3
    assert [r for r, n in fired.items() if r.startswith("c-") and n == 0] == []
    assert {r: n for r, n in fired.items() if r.startswith("never-")} == {
        r: 0 for r in fired if r.startswith("never-")
    }
    assert {r: n for r, n in fired.items() if r.startswith("show-")} == {
        r: registered for r in fired if r.startswith("show-")
    }


def summaries(
    guidelines: GuidelineSet, language_code: str, prefix: str
) -> tuple[dict[tuple[str, str, str], str], dict[tuple[str, str, str], str]]:
    """(card summaries, list reasons) of the recommendations whose id starts with ``prefix``,
    keyed by (patient, guideline, recommendation)."""
    engine = PatientEngine(guidelines)
    cards = {
        (patient.id, outcome.guideline, rec.id): getattr(rec.summary, language_code)
        for patient in patients()
        for outcome in engine.evaluate(patient, AS_OF)
        for rec in outcome.recommendations
        if rec.id.startswith(prefix)
    }
    with duckdb.connect() as con:
        load_tables(con, facts_tables(patients()), guidelines)
        outcomes = list(sweep(con, guidelines, AS_OF))
        reasons = list_reasons(con, guidelines, AS_OF, outcomes, language_code)
    listed = {key: reason.text for key, reason in reasons.items() if key[2].startswith(prefix)}
    return cards, listed


@pytest.mark.parametrize("language_code", ["da", "en"])
def test_every_insert_reads_the_same_on_the_list_and_the_card(
    language: GuidelineSet, language_code: str
) -> None:
    cards, listed = summaries(language, language_code, "show-")
    differences = [
        (key, cards[key], listed.get(key)) for key in cards if cards[key] != listed.get(key)
    ]
    assert differences == []
    assert set(listed) == set(cards)
    texts = set(cards.values())
    assert any(text.startswith(">") for text in texts), "a lab's bound is in the population"


@pytest.mark.slow
def test_spark_agrees_on_every_condition(
    language: GuidelineSet, language_dir: Path, tmp_path: Path
) -> None:
    """Spark runs the same trees in its own SQL dialect (division, CASE, dates): the outcomes
    of every condition as per patient, and the very files DuckDB publishes."""
    pytest.importorskip("pyspark")
    from conformance.engines.test_spark_agreement import outcomes, published

    expected = per_patient(language, patients(), AS_OF)
    write_store(facts_tables(patients()), tmp_path / "store")
    runs = {}
    for engine in ("duckdb", "spark"):
        args = ["sweep", "--store", str(tmp_path / "store"), "--as-of", str(AS_OF)]
        args += ["--guidelines", str(language_dir), "--out", str(tmp_path / engine)]
        result = CliRunner().invoke(app, [*args, "--engine", engine, "--quiet"])
        assert result.exit_code == 0, result.output
        runs[engine] = published(tmp_path / engine)
    assert_same({k: v for k, v in expected.items() if v[0]}, outcomes(runs["spark"]))
    files = sorted(p.relative_to(runs["duckdb"]) for p in runs["duckdb"].rglob("*") if p.is_file())
    differ = [
        name
        for name in files
        if name.name != MANIFEST
        and (runs["duckdb"] / name).read_bytes() != (runs["spark"] / name).read_bytes()
    ]
    assert differ == []
