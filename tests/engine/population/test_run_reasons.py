"""A list's reason shows a whole observation (``{hba1c}``: value and day) exactly as the card
does, present or missing, in both languages."""

from __future__ import annotations

from pathlib import Path

import duckdb

from engine.patient import PatientEngine
from engine.population.duckdb_engine import load_tables, sweep
from engine.population.run import list_reasons
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import load_guidelines
from tests.engine.population.synthetic import AS_OF

WHOLE = {
    'da: "HbA1c {hba1c.value} ({hba1c.date}) er over målet': 'da: "HbA1c {hba1c} er over målet',
    'en: "HbA1c {hba1c.value} ({hba1c.date}) is above the': 'en: "HbA1c {hba1c} is above the',
    "summary: {da: Ingen HbA1c i 12 måneder, en: No HbA1c in 12 months}": (
        'summary: {da: "Ingen HbA1c i 12 måneder; eGFR {egfr}", '
        'en: "No HbA1c in 12 months; eGFR {egfr}"}'
    ),
}


def test_a_whole_observation_reads_the_same_on_the_list_and_the_card(
    guideline_dir: Path, patients: list[PatientRecord]
) -> None:
    rule = guideline_dir / "example.yaml"
    text = rule.read_text(encoding="utf-8")
    for old, new in WHOLE.items():
        assert old in text
        text = text.replace(old, new)
    rule.write_text(text, encoding="utf-8")
    guidelines = load_guidelines(guideline_dir)
    engine = PatientEngine(guidelines)
    cards = {
        (p.id, o.guideline, r.id): r.summary
        for p in patients
        for o in engine.evaluate(p, AS_OF)
        for r in o.recommendations
    }
    summaries = [s.da for s in cards.values()]
    assert any(s.startswith("HbA1c ") and " mmol/mol (20" in s for s in summaries)
    missing = [s for s in summaries if s.startswith("Ingen HbA1c")]
    assert "Ingen HbA1c i 12 måneder; eGFR ukendt" in missing, "a missing eGFR is in the test"
    assert any(s.endswith(")") for s in missing), "and a present one"
    with duckdb.connect() as con:
        load_tables(con, facts_tables(patients), guidelines)
        outcomes = list(sweep(con, guidelines, AS_OF))
        for language in ("da", "en"):
            reasons = list_reasons(con, guidelines, AS_OF, outcomes, language)
            got = {key: reason.text for key, reason in reasons.items()}
            assert got == {key: getattr(s, language) for key, s in cards.items()}
