"""Session fixtures for the sweep-output tests: the guideline library and the population."""

from __future__ import annotations

import pytest

from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet, load_guidelines
from tests.engine.population.synthetic import LIBRARY, population


@pytest.fixture(scope="session")
def library() -> GuidelineSet:
    return load_guidelines(LIBRARY)


@pytest.fixture(scope="session")
def patients() -> list[PatientRecord]:
    return population()
