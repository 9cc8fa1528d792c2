"""What the per-patient engine concludes, per guideline: the product's unit of explanation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rules.tree import Text


@dataclass(frozen=True, slots=True)
class FactResult:
    """A fact's value and the resources it came from ("Observation/abc")."""

    name: str
    value: Any
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TargetResult:
    """The patient's individual target for a measure, and why it is that."""

    name: str
    measure: str
    value: float
    unit: str | None
    reason: Text
    source: str  # goal | case | default
    evidence: tuple[str, ...]
    set_by: str  # id of the guideline whose rule chose it (another one, for a multimorbid patient)


@dataclass(frozen=True, slots=True)
class RecommendationResult:
    """A recommendation that fired, with its texts rendered in both languages."""

    id: str
    indicator: str
    summary: Text
    detail: Text | None
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IndicatorResult:
    id: str
    denominator: bool  # in the denominator after exceptions
    numerator: bool
    excepted: bool

    @property
    def membership(self) -> str:
        """numerator | denominator | excepted | outside: how the patient counts."""
        if self.numerator:
            return "numerator"
        if self.denominator:
            return "denominator"
        return "excepted" if self.excepted else "outside"


@dataclass(frozen=True, slots=True)
class GuidelineOutcome:
    """One guideline's conclusion for one patient on one reference date."""

    guideline: str
    version: str
    content_hash: str
    in_register: bool
    facts: tuple[FactResult, ...]
    targets: tuple[TargetResult, ...]
    recommendations: tuple[RecommendationResult, ...]
    indicators: tuple[IndicatorResult, ...]

    def fact(self, name: str) -> FactResult | None:
        return next((f for f in self.facts if f.name == name), None)

    def target(self, name: str) -> TargetResult | None:
        return next((t for t in self.targets if t.name == name), None)
