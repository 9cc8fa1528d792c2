"""A loaded, immutable set of guidelines and value sets: what the engines evaluate."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from rules.compiler import GuidelineFile, compile_guideline, compile_valueset, read_document
from rules.errors import RuleError, RuleFileError
from rules.tree import CompiledGuideline
from rules.valuesets import CompiledValueSet, ValueSetIndex

VALUESET_DIR = "valuesets"


@dataclass(frozen=True, slots=True, eq=False)
class GuidelineSet:
    """Guideline versions and the value sets they use; safe to share between requests.

    Compared and hashed by identity: a loaded set is one immutable snapshot, so caches keyed on
    it (prefetch templates) stay valid for exactly as long as it is in service.
    """

    files: tuple[GuidelineFile, ...]
    valuesets: dict[str, CompiledValueSet]
    index: ValueSetIndex = field(compare=False)

    @property
    def guidelines(self) -> tuple[CompiledGuideline, ...]:
        return tuple(f.guideline for f in self.files)

    def in_force(self, on: dt.date) -> tuple[CompiledGuideline, ...]:
        """The guideline versions that apply on a date (at its start in Denmark)."""
        return tuple(g for g in self.guidelines if g.in_force(on))

    def in_force_at(self, moment: dt.datetime) -> tuple[CompiledGuideline, ...]:
        """The guideline versions that apply at an (aware) instant."""
        return tuple(g for g in self.guidelines if g.in_force_at(moment))

    @property
    def switches(self) -> tuple[dt.datetime, ...]:
        """Every instant at which the versions in force change, sorted (for caches)."""
        moments = {g.starts for g in self.guidelines if g.status == "active"}
        moments |= {g.ends for g in self.guidelines if g.status == "active" and g.ends}
        return tuple(sorted(moments))


def load_guidelines(directory: Path) -> GuidelineSet:
    """Load a guideline directory; raise :class:`RuleFileError` with every error if any file fails.

    Layout: value sets in ``<dir>/valuesets/*.yaml``, guidelines in every other ``*.yaml`` below
    ``<dir>``. A set with a broken file is never half-loaded.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RuleFileError([RuleError(str(directory), None, "not a directory")])
    errors: list[RuleError] = []
    valuesets: dict[str, CompiledValueSet] = {}
    broken: set[str] = set()  # ids of value set files with errors: their uses say nothing more
    for path in sorted((directory / VALUESET_DIR).glob("*.yaml")):
        valueset, problems = compile_valueset(path, _display(path, directory))
        errors += problems
        if valueset is None:
            broken |= {_written_id(path)} - {None}
            continue
        if valueset.id in valuesets:  # which one is meant is not known: neither is used
            other = valuesets[valueset.id].file
            errors.append(
                RuleError(
                    valueset.file, None, f"value set '{valueset.id}' is also defined in {other}"
                )
            )
            broken.add(valueset.id)
            continue
        valuesets[valueset.id] = valueset
    for name in broken:
        valuesets.pop(name, None)
    errors += [
        RuleError(
            _display(path, directory), None, "rule files end in .yaml: rename it, or it is not read"
        )
        for path in _files(directory, "*.yml")
    ]
    files: list[GuidelineFile] = []
    for path in _files(directory, "*.yaml"):
        if VALUESET_DIR in path.relative_to(directory).parts[:1]:
            continue
        loaded, problems = compile_guideline(
            path, _display(path, directory), valuesets, frozenset(broken)
        )
        errors += problems
        if loaded is not None:
            files.append(loaded)
    errors += _repeated_versions(files)
    errors += _successive_versions(files)
    errors += _ambiguous_targets(files)
    if errors:
        raise RuleFileError(errors)
    return GuidelineSet(tuple(files), valuesets, ValueSetIndex(tuple(valuesets.values())))


def _files(directory: Path, pattern: str) -> list[Path]:
    """Files below ``directory`` matching ``pattern``, outside hidden directories: a guideline
    repository's ``.github/workflows/*.yml`` is no rule file."""
    return sorted(
        path
        for path in directory.rglob(pattern)
        if not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


def _written_id(path: Path) -> str | None:
    """The ``id`` a value set file that did not compile gives itself, if it gives one."""
    document, _ = read_document(path, str(path))
    data = document.data if document is not None else None
    written = data.get("id") if isinstance(data, dict) else None
    return written if isinstance(written, str) else None


def _display(path: Path, directory: Path) -> str:
    """File names as an author sees them: relative to where the command was run when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def version_number(version: str) -> tuple[int, int, int]:
    """A version as numbers, so that 1.10.0 follows 1.9.0 and 1.0 is 1.0.0."""
    major, minor, *patch = (int(part) for part in version.split("."))
    return major, minor, patch[0] if patch else 0


def _repeated_versions(files: list[GuidelineFile]) -> list[RuleError]:
    """One number names one version: a card or a sweep result records id and version, so two
    files with the same pair (a copy whose version was not raised) cannot be told apart."""
    errors = []
    seen: dict[tuple[str, tuple[int, int, int]], CompiledGuideline] = {}
    for file in files:
        g = file.guideline
        first = seen.setdefault((g.id, version_number(g.version)), g)
        if first is not g:
            same = "" if first.version == g.version else f" (written {first.version})"
            errors.append(
                RuleError(
                    g.file,
                    file.document.position(("version",)),
                    f"{g.id} version {g.version} is also in {first.file}{same}: give a new "
                    f"version a higher number, a different guideline an id of its own",
                )
            )
    return errors


def _active_in_order(files: list[GuidelineFile]) -> list[tuple[GuidelineFile, GuidelineFile]]:
    """Consecutive active versions of each guideline, by the moment they start."""
    active = sorted(
        (f for f in files if f.guideline.status == "active"),
        key=lambda f: (f.guideline.id, f.guideline.starts, version_number(f.guideline.version)),
    )
    return [(a, b) for a, b in pairwise(active) if a.guideline.id == b.guideline.id]


def _successive_versions(files: list[GuidelineFile]) -> list[RuleError]:
    """Of two active versions of one guideline, the later must start when the earlier has ended
    and have the higher number (a reader takes 0.9.0 for the older rule); one error per pair."""
    errors = []
    for earlier_file, later_file in _active_in_order(files):
        earlier, later = earlier_file.guideline, later_file.guideline
        if version_number(earlier.version) == version_number(later.version):
            continue  # one mistake, reported once by _repeated_versions
        starts = later.effective_from.isoformat()
        if earlier.ends is None or earlier.ends > later.starts:
            where = ("effective",)
            message = (
                f"versions {earlier.version} ({earlier.file}) and {later.version} of {later.id} "
                f"are both in force from {starts}; give {earlier.version} an effective.until of "
                f"{starts} or earlier"
            )
        elif version_number(later.version) < version_number(earlier.version):
            where = ("version",)
            message = (
                f"version {later.version} of {later.id} starts {starts}, after version "
                f"{earlier.version} ({earlier.file}, from {earlier.effective_from.isoformat()}); "
                f"a later version needs a higher number than {earlier.version}"
            )
        else:
            continue
        message += _another_guideline(earlier, later)
        errors.append(RuleError(later.file, later_file.document.position(where), message))
    return errors


def _another_guideline(earlier: CompiledGuideline, later: CompiledGuideline) -> str:
    """Versions with nothing of a title in common are more likely a new guideline that took an
    id already in use: ending the other one would switch off a guideline in service."""
    if earlier.title.da == later.title.da or earlier.title.en == later.title.en:
        return ""
    return (
        f"; or, if {later.file} is another guideline than '{earlier.title.en}', "
        f"give it an id of its own ('{later.id}' is taken)"
    )


def _ambiguous_targets(files: list[GuidelineFile]) -> list[RuleError]:
    """Two guidelines targeting one measure need different precedences, or one patient could
    get two targets for it with no rule to choose."""
    errors = []
    seen: dict[tuple[str, int], tuple[str, str]] = {}
    for file in files:
        g = file.guideline
        if g.status != "active":
            continue
        own: set[str] = set()
        for target in g.targets:
            where = file.document.position(("targets", target.name))
            if target.measure in own:
                errors.append(
                    RuleError(g.file, where, f"two targets for the measure '{target.measure}'")
                )
            own.add(target.measure)
            key = (target.measure, target.precedence)
            other = seen.get(key)
            if other is not None and other[0] != g.id:
                errors.append(
                    RuleError(
                        g.file,
                        where,
                        f"target '{target.name}' has the same precedence ({target.precedence}) for "
                        f"'{target.measure}' as {other[0]} ({other[1]}); give one a higher precedence",
                    )
                )
            seen.setdefault(key, (g.id, g.file))
    return errors
