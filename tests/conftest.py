"""Shared fixtures: the small test guideline set and a real FHIR server (sekmet-fhir)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.patient import PatientEngine
from rules.guideline_set import GuidelineSet, load_guidelines
from tests.support.sekmet import SekmetServer, running

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


# --- A real FHIR server (sekmet-fhir in .venv-fhir, see tests/support/sekmet.py) ---------------


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    """One sekmet FHIR server for the session: fails (never skips) when sekmet is not installed.

    Tests share its data: give loaded resources ids unique to the test. A test that calls
    ``stop()`` must ``start()`` it again (same port and data) before it ends.
    """
    with running(SekmetServer(tmp_path_factory.mktemp("sekmet"))) as server:
        yield server
