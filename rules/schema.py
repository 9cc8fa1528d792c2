"""The rule-file format, as pydantic models: the single source of truth for authors and editors.

``vejviser guidelines schema`` exports these models as JSON Schema. Expressions stay strings here;
:mod:`rules.compiler` parses and type-checks them, with positions taken from the YAML source.
"""

from __future__ import annotations

import datetime as dt
import re
from difflib import get_close_matches
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from fhir_adapter.codes import SYSTEMS
from rules.effective import instant

DURATION_PATTERN = r"^\s*\d+\s+(day|days|week|weeks|month|months|year|years)\s*$"
Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, description="A look-back period: '12 months', '28 days'."),
]
IDENTIFIER_PATTERN = r"^[a-z][a-z0-9_]*$"
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, max_length=64)]
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=64)]
PATTERN_FORMS = {
    DURATION_PATTERN: "a number and days, weeks, months or years, in English: '14 days'",
    IDENTIFIER_PATTERN: "lower-case letters, digits and _, starting with a letter: 'hba1c_target'",
    SLUG_PATTERN: "lower-case letters, digits and -: 't2d-hba1c'",
}
"""What each pattern accepts, in words, for the checker's messages."""
Expression = Annotated[str, Field(min_length=1, description="An expression in the rule language.")]


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(Strict):
    """A text in Danish (first) and English."""

    da: str = Field(min_length=1)
    en: str = Field(min_length=1)


class Source(Strict):
    """A citation: where a threshold, window or target comes from."""

    title: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://", description="Where a reader can check the source.")
    date: dt.date = Field(description="Publication or revision date of the source.")
    note: str | None = Field(default=None, description="What the rule takes from this source.")


def _effective_value(value: Any) -> Any:
    """A date, or a date-time with an explicit UTC offset; a naive date-time is ambiguous."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
            )
        except ValueError:
            raise ValueError(
                f"'{text}' is neither a date (2026-09-01) nor a date-time with a UTC offset "
                "(2026-09-01T06:00:00+02:00)"
            ) from None
    if isinstance(value, dt.datetime) and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(
            f"the date-time {value.isoformat()} needs an explicit UTC offset, e.g. "
            f"{value.isoformat()}+02:00 (Danish summer time) or {value.isoformat()}Z (UTC)"
        )
    return value


EffectiveValue = Annotated[
    dt.datetime | dt.date,
    BeforeValidator(_effective_value),
    Field(
        description="A date (from the start of that day in Denmark) or a date-time with a UTC "
        "offset (2026-09-01T06:00:00+02:00)."
    ),
]


class Effective(Strict):
    """The period in which this version of the guideline is in force (until is exclusive)."""

    from_: EffectiveValue = Field(alias="from")
    until: EffectiveValue | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Effective:
        if self.until is not None and instant(self.until) <= instant(self.from_):
            raise ValueError("effective.until must be after effective.from")
        return self


class Register(Strict):
    """Who the guideline is about; only these patients get its recommendations and indicators."""

    description: Text
    when: Expression


class ObservationWindow(Strict):
    valueset: Slug
    within: Duration


class MedicationClass(Strict):
    valueset: Slug


class ContinuousUse(Strict):
    valueset: Slug
    longer_than: Duration
    max_gap_days: int = Field(
        default=0, ge=0, le=365, description="Gaps up to this long still count as one episode."
    )


class MedicationStarted(Strict):
    valueset: Slug
    within: Duration
    max_gap_days: int = Field(
        default=0,
        ge=0,
        le=365,
        description="A restart after a gap up to this long is no new start.",
    )


class ConditionPresent(Strict):
    valueset: Slug
    include_resolved: bool = Field(
        default=False, description="Also count conditions that were resolved before the date."
    )


class PatientGoal(Strict):
    valueset: Slug


class ConditionOnset(Strict):
    valueset: Slug


FACT_PRIMITIVES: dict[str, type[BaseModel] | None] = {
    "latest_observation": ObservationWindow,
    "earliest_observation": ObservationWindow,
    "count_observations": ObservationWindow,
    "active_medication": MedicationClass,
    "continuous_use": ContinuousUse,
    "medication_started": MedicationStarted,
    "condition_present": ConditionPresent,
    "patient_goal": PatientGoal,
    "condition_onset": ConditionOnset,
    "expression": None,
}


class Fact(Strict):
    """A named fact: exactly one primitive (``latest_observation``, ``condition_present``...)."""

    latest_observation: ObservationWindow | None = None
    earliest_observation: ObservationWindow | None = None
    count_observations: ObservationWindow | None = None
    active_medication: MedicationClass | None = None
    continuous_use: ContinuousUse | None = None
    medication_started: MedicationStarted | None = None
    condition_present: ConditionPresent | None = None
    patient_goal: PatientGoal | None = None
    condition_onset: ConditionOnset | None = Field(
        default=None, description="Date of the earliest recorded onset (e.g. years with diabetes)."
    )
    expression: Expression | None = Field(
        default=None, description="A fact defined from other facts, e.g. 'ihd or stroke'."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_primitive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a fact is a mapping with one primitive, e.g. 'condition_present:'")
        unknown = [key for key in data if key not in FACT_PRIMITIVES]
        if unknown:
            key = str(unknown[0])
            hint = get_close_matches(key, FACT_PRIMITIVES, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            known = ", ".join(FACT_PRIMITIVES)
            raise ValueError(f"unknown fact primitive '{key}'{suggestion} (known: {known})")
        if len(data) != 1:
            raise ValueError("a fact has exactly one primitive")
        return data

    @property
    def primitive(self) -> tuple[str, Any]:
        """The one primitive that is set, with its arguments."""
        for name in FACT_PRIMITIVES:
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("validated to have one primitive")


REASON_LENGTH = 50


class Reason(Strict):
    """Why a target applies; short, as it may appear in card summaries of other guidelines too."""

    da: str = Field(min_length=1, max_length=REASON_LENGTH)
    en: str = Field(min_length=1, max_length=REASON_LENGTH)


class TargetCase(Strict):
    """One row of an individual-target table: when it applies, the target and why."""

    when: Expression
    value: float
    reason: Reason


class TargetDefault(Strict):
    value: float
    reason: Reason


class Target(Strict):
    """A patient's own target for a measure: their FHIR Goal, else the first matching case."""

    measure: Slug = Field(description="Value set of the measure; its unit is the target's unit.")
    precedence: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="When several guidelines set a target for this measure for one patient, the "
        "highest precedence wins everywhere (a multimorbid patient gets one target per measure).",
    )
    cases: list[TargetCase] = Field(default_factory=list)
    default: TargetDefault


class Suggestion(Strict):
    """Something the EHR can act on: e.g. order the test that is missing."""

    label: Text
    order: Slug | None = Field(
        default=None, description="Value set whose preferred code a ServiceRequest orders."
    )


class Recommendation(Strict):
    """A card: when it fires, how urgent, what it says (templates with {expressions})."""

    id: Slug
    when: Expression
    indicator: Literal["info", "warning", "critical"]
    summary: Text = Field(description="Template; must render to fewer than 140 characters.")
    detail: Text | None = None
    suggestion: Suggestion | None = None
    group: Slug | None = Field(
        default=None,
        description="Cards of one group for one patient are shown once, naming every guideline.",
    )


class Indicator(Strict):
    """A quality indicator over the register: denominator minus exceptions, and numerator."""

    id: Slug
    title: Text
    numerator: Expression
    denominator: Expression | None = Field(
        default=None, description="Restricts the register; absent means the whole register."
    )
    exceptions: Expression | None = Field(
        default=None, description="Patients taken out of the denominator (never the register)."
    )


def _known_code(value: str) -> str:
    """'system:code' with a known system key: a misspelt key would silently match nothing."""
    key, separator, code = value.partition(":")
    if not separator or not code or key not in SYSTEMS:
        hint = [key.lower()] if key.lower() in SYSTEMS else get_close_matches(key, SYSTEMS, n=1)
        suggestion = f"; did you mean '{hint[0]}:{code}'?" if hint else ""
        raise ValueError(f"'{value}' is not 'system:code' with a known system{suggestion}")
    return value


Code = Annotated[
    str, AfterValidator(_known_code), Field(description="'system:code', e.g. 'icpc2:T90'.")
]


class CaseObservation(Strict):
    code: Code | list[Code]
    value: float | str | None = Field(
        default=None, description="A number, or a bound such as '>90'."
    )
    unit: str | None = None
    date: dt.date
    status: str = "final"
    components: list[CaseObservation] | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _number_or_bound(cls, value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(r"\s*(<=|>=|<|>)\s*\d+(\.\d+)?\s*", value):
            raise ValueError(f"'{value}' is neither a number nor a bound such as '>90'")
        return value


class CaseMedication(Strict):
    code: Code | list[Code]
    start: dt.date
    end: dt.date | None = None
    status: str = "active"
    resource: Literal["MedicationStatement", "MedicationRequest"] = "MedicationStatement"

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> CaseMedication:
        if self.end is not None and self.end < self.start:
            raise ValueError("a medication's end must not be before its start")
        if (
            self.end is not None
            and self.resource == "MedicationRequest"
            and self.status == "stopped"
        ):
            raise ValueError(
                "a stopped MedicationRequest has no end (FHIR R4 records no stop date, so it counts"
                " its start day only); give the end to a MedicationStatement instead"
            )
        return self


class CaseCondition(Strict):
    code: Code | list[Code]
    onset: dt.date | None = None
    abatement: dt.date | None = None
    clinical_status: str = "active"
    verification_status: str = "confirmed"


class CaseGoal(Strict):
    measure: Code | list[Code]
    value: float
    unit: str
    start: dt.date | None = None
    status: str = "active"


class CasePatient(Strict):
    """A small patient, written compactly; it becomes FHIR R4 and goes through normalisation."""

    birth_date: dt.date
    sex: Literal["male", "female", "other", "unknown"]
    deceased: dt.date | bool = Field(
        default=False, description="The date of death, or true when only the death is known."
    )
    conditions: list[CaseCondition] = Field(default_factory=list)
    observations: list[CaseObservation] = Field(default_factory=list)
    medications: list[CaseMedication] = Field(default_factory=list)
    goals: list[CaseGoal] = Field(default_factory=list)
    resources: list[dict[str, Any]] = Field(
        default_factory=list, description="Raw FHIR R4 resources, for anything the shorthand lacks."
    )


IndicatorMembership = Literal["numerator", "denominator", "excepted", "outside"]


class Expectation(Strict):
    """What the engine must conclude; only the keys given are checked."""

    in_register: bool = Field(
        alias="register", description="Whether the patient is in the register."
    )
    recommendations: list[Slug] | None = Field(
        default=None, description="Exactly these fire (order does not matter)."
    )
    targets: dict[Identifier, float] | None = None
    target_reasons: dict[Identifier, str] | None = Field(
        default=None, description="A word or phrase the English reason must contain."
    )
    targets_set_by: dict[Identifier, Slug] | None = Field(
        default=None, description="Which guideline's rule chose the target (with_library cases)."
    )
    indicators: dict[Slug, IndicatorMembership] | None = None
    facts: dict[Identifier, Any] | None = Field(
        default=None, description="Expected fact values: number, bool, date, or null for missing."
    )


class GuidelineCase(Strict):
    name: str = Field(min_length=1)
    with_library: bool = Field(
        default=False,
        description="Evaluate with every guideline in the directory, so targets shared across "
        "guidelines (multimorbid patients) apply; otherwise this guideline alone.",
    )
    as_of: dt.date
    patient: CasePatient
    expect: Expectation


class Guideline(Strict):
    """One version of one guideline, with its test cases."""

    id: Slug
    version: Annotated[str, Field(pattern=r"^\d+\.\d+(\.\d+)?$")]
    status: Literal["draft", "active", "retired"] = "active"
    title: Text
    publisher: Annotated[str, Field(min_length=1)] | Text = Field(
        description="Who answers for the rule file and whose clinical content it encodes: one "
        "text for both languages (a name), or da and en when it holds words a card shows."
    )
    description: Text
    sources: list[Source] = Field(min_length=1, description="At least one citation.")
    effective: Effective
    register_: Register = Field(alias="register")
    facts: dict[Identifier, Fact] = Field(default_factory=dict)
    targets: dict[Identifier, Target] = Field(default_factory=dict)
    recommendations: list[Recommendation] = Field(default_factory=list)
    indicators: list[Indicator] = Field(default_factory=list)
    tests: list[GuidelineCase] = Field(default_factory=list)

    @field_validator("facts", "targets")
    @classmethod
    def _no_builtin_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if name in RESERVED_NAMES:
                raise ValueError(f"'{name}' is built in; choose another name")
        return value


RESERVED_NAMES = frozenset({"age", "sex", "true", "false", "and", "or", "not", "null"})


class ValueSetInclude(Strict):
    """Codes of one system; in ICD-10, SKS, ICPC-2 and ATC a code covers every code it prefixes."""

    system: str = Field(
        description="Short key (npu, loinc, snomed, icpc2, icd10, sks, atc, rxnorm) or URI."
    )
    codes: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)

    @field_validator("system")
    @classmethod
    def _known_system(cls, value: str) -> str:
        """A misspelt key ('icpc', 'ATC') or a near miss of a known URI (a trailing slash)
        would otherwise match nothing, silently."""
        if value in SYSTEMS:
            return value
        if ":" in value:
            meant = _known_uri(value)
            if meant is None or meant == value:
                return value
            raise ValueError(f"'{value}' is not the URI of {meant[0]}; did you mean '{meant[1]}'?")
        hint = (
            [value.lower()] if value.lower() in SYSTEMS else get_close_matches(value, SYSTEMS, n=1)
        )
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        known = ", ".join(SYSTEMS)
        raise ValueError(f"unknown code system '{value}'{suggestion} (known: {known}, or a URI)")


def _known_uri(value: str) -> tuple[str, str] | None:
    """(key, URI) of the known system a URI means, allowing for a trailing slash, https and
    case; None for a URI of no known system."""
    plain = value.strip().rstrip("/").lower().replace("https://", "http://", 1)
    for key, uris in SYSTEMS.items():
        for uri in uris:
            if plain == uri.lower():
                return key, uri
    return None


class ValueSet(Strict):
    """A named set of codes across code systems, shared by guidelines."""

    id: Slug
    title: Text
    unit: str | None = Field(
        default=None, description="Canonical unit of a measured value set (e.g. mmol/mol)."
    )
    sources: list[Source] = Field(min_length=1)
    include: list[ValueSetInclude] = Field(min_length=1)


def parse_duration(text: str) -> tuple[int, str]:
    """'12 months' -> (12, 'months'); the schema has already checked the form."""
    match = re.match(r"^\s*(\d+)\s+(day|week|month|year)s?\s*$", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)), match.group(2) + "s"
