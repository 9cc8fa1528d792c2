"""Value sets: named sets of codes spanning code systems, aliases and code hierarchies."""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_adapter.codes import HIERARCHICAL, canonical_coding
from fhir_adapter.records import Coding
from rules.tree import SourceRef, Text


@dataclass(frozen=True, slots=True)
class CompiledValueSet:
    """Codes in canonical form; in hierarchical systems a code covers every code it prefixes."""

    id: str
    title: Text
    unit: str | None
    exact: frozenset[Coding]
    prefixes: tuple[Coding, ...]
    preferred: Coding  # the first code listed: what a suggestion orders
    sources: tuple[SourceRef, ...]
    file: str

    def contains(self, coding: Coding) -> bool:
        if coding in self.exact:
            return True
        system, code = coding
        return any(system == s and code.startswith(p) for s, p in self.prefixes)


def compile_codes(
    includes: list[tuple[str, list[str]]],
) -> tuple[frozenset[Coding], tuple[Coding, ...]]:
    """Split a value set's codes into exact codes and hierarchy prefixes."""
    exact: set[Coding] = set()
    prefixes: list[Coding] = []
    for system, codes in includes:
        for code in codes:
            coding = canonical_coding(system, code)
            if coding[0] in HIERARCHICAL:
                prefixes.append(coding)
            else:
                exact.add(coding)
    return frozenset(exact), tuple(prefixes)


@dataclass(slots=True)
class ValueSetIndex:
    """Which of a guideline set's value sets a coding belongs to, memoised per coding.

    Codes repeat endlessly across patients, so a dictionary lookup replaces the prefix scan after
    the first time a code is seen. Only codes are cached, never patient data.
    """

    valuesets: tuple[CompiledValueSet, ...]
    _memo: dict[Coding, tuple[str, ...]] = field(default_factory=dict)
    _memo_any: dict[tuple[Coding, ...], tuple[str, ...]] = field(default_factory=dict)

    def of(self, coding: Coding) -> tuple[str, ...]:
        found = self._memo.get(coding)
        if found is None:
            found = tuple(vs.id for vs in self.valuesets if vs.contains(coding))
            self._memo[coding] = found
        return found

    def of_any(self, codings: tuple[Coding, ...]) -> tuple[str, ...]:
        """Value sets any of a resource's codings belongs to (each listed once)."""
        found = self._memo_any.get(codings)
        if found is None:
            seen = dict.fromkeys(vs for coding in codings for vs in self.of(coding))
            found = self._memo_any[codings] = tuple(seen)
        return found
