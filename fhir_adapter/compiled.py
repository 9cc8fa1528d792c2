"""Which modules run compiled by mypyc (setup.py), and their source wherever a build is stale.

Why: an editable install compiles ``fhir_adapter/normalise.py`` and ``engine/population/chunks.py``
in place, and Python prefers a compiled file to its source: after an edit, the code of the last
install would run and a test would pass or fail on code that no longer exists. That install records
each source's SHA-256 (``compiled.json``); if any source differs, every compiled module is loaded
from its source (the modules of one build call each other directly, so one stale module makes all
of them stale), with a warning. Reinstalling compiles again.
``VEJVISER_PURE_PYTHON=1`` runs the source on purpose (to compare, or to rule the build out).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType

PURE_PYTHON = "VEJVISER_PURE_PYTHON"
RECORD = Path(__file__).with_name("compiled.json")
ROOT = Path(__file__).resolve().parent.parent
MODULES = ("fhir_adapter.normalise", "engine.population.chunks")  # setup.py's COMPILED


def _source(name: str) -> Path:
    """The source file, relative to the project root (as setup.py records it)."""
    return Path(*name.split(".")).with_suffix(".py")


def _is_compiled(origin: str | None) -> bool:
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _has_build(source: Path) -> bool:
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return any(source.with_name(source.stem + suffix).exists() for suffix in suffixes)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def stale_modules(record: Path = RECORD, root: Path = ROOT) -> list[str]:
    """The modules compiled in place whose source is not the one they were compiled from.

    No record: a wheel's build (sources and compiled files copied together, never edited), used.
    A record that cannot be read vouches for nothing: every build beside it is stale."""
    try:
        digests = json.loads(record.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        digests = {}
    stale = []
    for name in MODULES:
        source = _source(name)
        if _has_build(root / source) and digests.get(source.as_posix()) != _digest(root / source):
            stale.append(name)
    return stale


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules as source files, ahead of the compiled ones beside them."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, ROOT / _source(fullname))


@cache
def select_build() -> None:
    """Called by each package with a compiled module before that module can be imported."""
    if os.environ.get(PURE_PYTHON) == "1":
        sys.meta_path.insert(0, _SourceFinder(MODULES))
        return
    if not stale_modules():
        return
    warnings.warn(
        "the compiled normaliser does not match its source (edited since the last install): "
        "running the source, which reads bulk data 1.2-1.5x slower; reinstall "
        "(`bash scripts/setup.sh`) to compile it again",
        stacklevel=2,
    )
    sys.meta_path.insert(0, _SourceFinder(MODULES))


def built_modules(root: Path = ROOT) -> list[str]:
    """The modules with a compiled file beside their source, used or not."""
    return [name for name in MODULES if _has_build(root / _source(name))]


def compiled_modules() -> list[str]:
    """The modules that run compiled in this process (the benchmarks record it)."""
    found = []
    for name in MODULES:
        module = sys.modules.get(name)
        spec = module.__spec__ if module is not None else importlib.util.find_spec(name)
        if spec is not None and _is_compiled(spec.origin):
            found.append(name)
    return found
