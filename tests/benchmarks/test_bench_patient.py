"""The per-patient benchmark's measurement runs end to end (no timing assertions: the CI
machine is shared and noisy; the numbers live in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_patient import (
    AS_OF,
    BEGIN,
    END,
    FALLBACK_GUIDELINES,
    STAGES,
    load_guideline_set,
    measure_once,
    patient_bytes,
    render,
    run_size,
    write_section,
)
from engine.patient import PatientEngine


def test_measure_once_times_every_stage_and_evaluates() -> None:
    guidelines = load_guideline_set(FALLBACK_GUIDELINES)
    engine = PatientEngine(guidelines.gset)
    times, outcomes = measure_once(patient_bytes(50), engine)
    assert set(times) == set(STAGES)
    assert all(value >= 0 for value in times.values())
    assert times["total"] == times["parse"] + times["normalise + evaluate"]
    assert len(outcomes) == len(guidelines.gset.in_force(AS_OF))


def test_section_is_rewritten_between_markers(tmp_path: Path) -> None:
    guidelines = load_guideline_set(FALLBACK_GUIDELINES)
    result = run_size(20, PatientEngine(guidelines.gset), seconds=0, min_repetitions=2)
    assert result.repetitions == 2
    section = render([result], guidelines, "python -m benchmarks.bench_patient", 0)
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        f"# Benchmarks\n\n## Other\nkeep me\n\n{BEGIN}\nold\n{END}\n\n## After\nme too\n"
    )
    write_section(docs, section)
    write_section(docs, section)
    text = docs.read_text()
    assert text.count(BEGIN) == 1 and "old" not in text
    assert "keep me" in text and "me too" in text
    assert "Per-patient engine" in text


def test_falls_back_when_guidelines_do_not_load(tmp_path: Path) -> None:
    guidelines = load_guideline_set(tmp_path / "missing")
    assert guidelines.path == FALLBACK_GUIDELINES
    assert guidelines.note and "instead" in guidelines.note
