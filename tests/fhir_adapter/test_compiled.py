"""The compiled normaliser runs only while it matches its source (fhir_adapter/compiled.py)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import sys
import warnings
from pathlib import Path

import pytest

from fhir_adapter import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
NORMALISE = "fhir_adapter/normalise.py"


def _project(tmp_path: Path, *, built: bool = True, recorded: str | None = "same") -> Path:
    """A project root with a normaliser source, maybe a compiled file beside it, maybe a record."""
    source = tmp_path / NORMALISE
    source.parent.mkdir(parents=True)
    source.write_text("VALUE = 1\n")
    if built:
        source.with_name("normalise" + SUFFIX).write_bytes(b"")
    if recorded is not None:
        digest = hashlib.sha256(source.read_bytes()).hexdigest() if recorded == "same" else "0"
        (tmp_path / "compiled.json").write_text(json.dumps({NORMALISE: digest}))
    return tmp_path


def _stale(root: Path) -> list[str]:
    return compiled.stale_modules(root / "compiled.json", root)


def test_a_build_of_the_current_source_is_used(tmp_path: Path) -> None:
    assert _stale(_project(tmp_path)) == []


def test_an_edited_source_makes_its_build_stale(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / NORMALISE).write_text("VALUE = 2\n")
    assert _stale(root) == ["fhir_adapter.normalise"]


def test_a_build_without_a_record_is_a_wheels_and_used(tmp_path: Path) -> None:
    assert _stale(_project(tmp_path, recorded=None)) == []


def test_a_record_of_other_sources_or_an_unreadable_one_makes_the_build_stale(
    tmp_path: Path,
) -> None:
    assert _stale(_project(tmp_path / "a", recorded="different")) == ["fhir_adapter.normalise"]
    root = _project(tmp_path / "b")
    (root / "compiled.json").write_text("{not json")
    assert _stale(root) == ["fhir_adapter.normalise"]


def test_a_pure_python_install_has_nothing_stale(tmp_path: Path) -> None:
    assert _stale(_project(tmp_path, built=False, recorded=None)) == []


def test_a_stale_build_gives_way_to_every_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """One stale module makes the whole build stale: its modules call each other directly."""
    monkeypatch.setattr(compiled, "stale_modules", lambda: ["engine.population.chunks"])
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    compiled.select_build.cache_clear()
    try:
        with pytest.warns(UserWarning, match="reinstall"):
            compiled.select_build()
    finally:
        compiled.select_build.cache_clear()
    finder = sys.meta_path[0]
    for name in compiled.MODULES:
        spec = finder.find_spec(name, None)
        assert spec is not None and spec.origin is not None and spec.origin.endswith(".py")
        assert Path(spec.origin).read_text().startswith('"""')
    assert finder.find_spec("fhir_adapter.units", None) is None


def test_this_install_runs_the_build_it_made() -> None:
    """Either a pure-Python install, or every module compiled from the source as it is now: a
    build that failed half-way, or one that is there but not used, fails here (and in CI)."""
    assert compiled.stale_modules() == [], "edited since the last install: run scripts/setup.sh"
    built = compiled.built_modules()
    assert built in ([], list(compiled.MODULES))
    assert compiled.compiled_modules() == built


def test_pure_python_on_purpose_runs_the_sources_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(compiled.PURE_PYTHON, "1")
    monkeypatch.setattr(compiled, "stale_modules", lambda: pytest.fail("not asked"))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    compiled.select_build.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compiled.select_build()
    finally:
        compiled.select_build.cache_clear()
    spec = sys.meta_path[0].find_spec("fhir_adapter.normalise", None)
    assert spec is not None and spec.origin == str(compiled.ROOT / "fhir_adapter/normalise.py")
