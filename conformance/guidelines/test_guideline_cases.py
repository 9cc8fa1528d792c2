"""The shipped guideline library passes its own test cases (the same check authors run)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from engine.cases import run_case
from engine.patient import CompiledRules, PatientEngine
from rules.guideline_set import GuidelineSet, load_guidelines

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"


@cache
def library() -> tuple[GuidelineSet, PatientEngine, dict[str, CompiledRules]]:
    guidelines = load_guidelines(LIBRARY)
    compiled = {f.guideline.file: CompiledRules(f.guideline) for f in guidelines.files}
    return guidelines, PatientEngine(guidelines), compiled


def cases() -> list[tuple[str, int]]:
    guidelines, _, _ = library()
    return [
        (file.guideline.file, index)
        for file in guidelines.files
        for index in range(len(file.cases))
    ]


def test_the_library_loads_and_has_cases() -> None:
    guidelines, _, _ = library()
    assert len(guidelines.files) >= 15
    for file in guidelines.files:
        assert len(file.cases) >= 8, f"{file.guideline.id} has fewer than 8 test cases"


@pytest.mark.parametrize(("file", "index"), cases())
def test_guideline_case(file: str, index: int) -> None:
    guidelines, engine, compiled = library()
    loaded = next(f for f in guidelines.files if f.guideline.file == file)
    result = run_case(guidelines, engine, compiled[file], loaded, index, loaded.cases[index])
    assert result.passed, "\n".join(str(f) for f in result.failures)
