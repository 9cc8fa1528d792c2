"""Shared fixtures: the small test guideline set in tests/fixtures/guidelines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.patient import PatientEngine
from rules.guideline_set import GuidelineSet, load_guidelines

FIXTURE_GUIDELINES = Path(__file__).parent / "fixtures" / "guidelines"


@pytest.fixture(scope="session")
def guideline_set() -> GuidelineSet:
    return load_guidelines(FIXTURE_GUIDELINES)


@pytest.fixture(scope="session")
def engine(guideline_set: GuidelineSet) -> PatientEngine:
    return PatientEngine(guideline_set)


@pytest.fixture
def guideline_dir(tmp_path: Path) -> Path:
    """A writable copy of the test guideline set, for tests that break it on purpose."""
    target = tmp_path / "guidelines"
    shutil.copytree(FIXTURE_GUIDELINES, target)
    return target
