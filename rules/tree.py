"""The compiled, engine-neutral form of a guideline: an immutable, typed tree of primitives.

Both engines start here: the per-patient evaluator (``engine.patient``) turns it into closures,
the population engine into set-based SQL. Nothing in the tree is arbitrary Python, so every node
must have a meaning both engines can give it, and the per-patient engine is the reference.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rules.effective import day_start
from rules.types import Type

# -- expressions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    value: bool | float | str | dt.date | None
    type: Type


@dataclass(frozen=True, slots=True)
class Ref:
    """A named fact, target, or built-in (``age``, ``sex``)."""

    name: str
    type: Type


@dataclass(frozen=True, slots=True)
class Field:
    """A field of a record: ``hba1c.value``, ``hba1c_target.reason``."""

    record: Expr
    name: str
    type: Type


@dataclass(frozen=True, slots=True)
class Compare:
    """``= != < <= > >=``; unknown (null) when an operand is missing or a bound cannot decide."""

    op: str
    left: Expr
    right: Expr
    type: Type


@dataclass(frozen=True, slots=True)
class Logic:
    """``and`` / ``or`` with three-valued (SQL) logic: unknown is neither true nor false."""

    op: str
    operands: tuple[Expr, ...]
    type: Type


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    type: Type


@dataclass(frozen=True, slots=True)
class Arithmetic:
    op: str
    left: Expr
    right: Expr
    type: Type


@dataclass(frozen=True, slots=True)
class Call:
    """A built-in function: exists, days_since, months_since, years_since."""

    function: str
    args: tuple[Expr, ...]
    type: Type


Expr = Literal | Ref | Field | Compare | Logic | Not | Arithmetic | Call

# -- fact primitives --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A look-back period; windows end on the reference date and include both edges."""

    amount: int
    unit: str  # days | weeks | months | years

    def __str__(self) -> str:
        return f"{self.amount} {self.unit}"


@dataclass(frozen=True, slots=True)
class ObservationFact:
    """``which`` is latest | earliest | count: of observations in ``valueset`` within ``window``."""

    which: str
    valueset: str
    window: Period


@dataclass(frozen=True, slots=True)
class ActiveMedication:
    valueset: str


@dataclass(frozen=True, slots=True)
class ContinuousUse:
    """The current episode of use (intervals merged across gaps up to max_gap_days) is longer."""

    valueset: str
    longer_than: Period
    max_gap_days: int


@dataclass(frozen=True, slots=True)
class MedicationStarted:
    """An episode of use began within the window."""

    valueset: str
    within: Period
    max_gap_days: int


@dataclass(frozen=True, slots=True)
class ConditionPresent:
    valueset: str
    include_resolved: bool


@dataclass(frozen=True, slots=True)
class PatientGoal:
    valueset: str


@dataclass(frozen=True, slots=True)
class ConditionOnset:
    """The earliest onset date of a diagnosis (refuted and entered-in-error never count)."""

    valueset: str


@dataclass(frozen=True, slots=True)
class Derived:
    expr: Expr


Primitive = (
    ObservationFact
    | ActiveMedication
    | ContinuousUse
    | MedicationStarted
    | ConditionPresent
    | PatientGoal
    | ConditionOnset
    | Derived
)


@dataclass(frozen=True, slots=True)
class FactDef:
    name: str
    primitive: Primitive
    type: Type


# -- guideline parts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    da: str
    en: str

    def in_language(self, language: str) -> str:
        return self.en if language == "en" else self.da


GOAL_REASON = Text(da="mål aftalt med patienten", en="target agreed with the patient")


@dataclass(frozen=True, slots=True)
class TargetCase:
    when: Expr | None  # None: the default
    value: float
    reason: Text


@dataclass(frozen=True, slots=True)
class TargetDef:
    """Individual target: the patient's Goal for the measure, else the first case that holds."""

    name: str
    measure: str
    unit: str | None
    precedence: int  # across guidelines: the highest sets the patient's target for the measure
    cases: tuple[TargetCase, ...]  # the last one is the default (when=None)
    type: Type


@dataclass(frozen=True, slots=True)
class Template:
    """Text with embedded expressions, in one language."""

    parts: tuple[str | Expr, ...]


@dataclass(frozen=True, slots=True)
class Templates:
    da: Template
    en: Template

    def in_language(self, language: str) -> Template:
        return self.en if language == "en" else self.da


@dataclass(frozen=True, slots=True)
class SuggestionDef:
    label: Text
    order: str | None  # value set id


@dataclass(frozen=True, slots=True)
class RecommendationDef:
    id: str
    when: Expr
    indicator: str
    summary: Templates
    detail: Templates | None
    suggestion: SuggestionDef | None
    evidence: tuple[str, ...]  # facts and targets whose resources back the card
    group: str | None  # cards of one group are shown once per patient


@dataclass(frozen=True, slots=True)
class IndicatorDef:
    id: str
    title: Text
    numerator: Expr
    denominator: Expr | None
    exceptions: Expr | None


@dataclass(frozen=True, slots=True)
class SourceRef:
    title: str
    url: str
    date: dt.date
    note: str | None


@dataclass(frozen=True, slots=True)
class CompiledGuideline:
    """One guideline version, ready for either engine."""

    id: str
    version: str
    status: str
    title: Text
    publisher: Text
    description: Text
    sources: tuple[SourceRef, ...]
    effective_from: dt.date  # as written: a date, or an aware datetime (a subclass of date)
    effective_until: dt.date | None
    register_description: Text
    register: Expr
    facts: tuple[FactDef, ...]  # in dependency order
    targets: tuple[TargetDef, ...]
    recommendations: tuple[RecommendationDef, ...]
    indicators: tuple[IndicatorDef, ...]
    file: str
    content_hash: str
    starts: dt.datetime  # effective_from as an aware UTC instant (a date: 00:00 in Denmark)
    ends: dt.datetime | None  # effective_until likewise; exclusive

    def in_force_at(self, moment: dt.datetime) -> bool:
        """Whether this version applies at an (aware) instant: active, within its period."""
        if self.status != "active" or moment < self.starts:
            return False
        return self.ends is None or moment < self.ends

    def in_force(self, on: dt.date) -> bool:
        """Whether this version applies on a date: at the start of that day in Denmark."""
        return self.in_force_at(day_start(on))
