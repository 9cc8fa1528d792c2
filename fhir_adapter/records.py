"""Normalised facts: what the engines see of a patient's FHIR data.

Every FHIR input (a CDS Hooks prefetch, a Bundle on disk, bulk NDJSON) becomes these records by
one code path (:mod:`fhir_adapter.normalise`). Status filtering, unit conversion and code-system
aliases happen before a record exists, so the engines never repeat them. Records are plain
immutable tuples: cheap to build per request and easy to write as Parquet rows. The containers
of many records (:class:`ResourceList`, :class:`Normalised`) are here too, not in the normaliser:
they subclass ``list`` and ``dict``, which mypyc cannot compile (docs/decisions/0010).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any, NamedTuple

Coding = tuple[str, str]
"""(system key, canonical code): see :func:`fhir_adapter.codes.canonical_coding`."""


class ObservationRecord(NamedTuple):
    """One measured value (a blood-pressure panel yields one record per component)."""

    resource: str  # "Observation/<id>"
    codings: tuple[Coding, ...]
    date: date  # effectiveDateTime / effectivePeriod.start, as recorded (no time-zone shift)
    value: float | None  # in ``unit``; None for a non-numeric result
    comparator: str | None  # "<", "<=", ">", ">=": the value is a bound, not a measurement
    unit: str | None  # canonical unit (fhir_adapter.units), None if the analyte has none
    status: str  # final | amended | corrected (others never become a record)


class MedicationRecord(NamedTuple):
    """A medication the patient takes or took, from MedicationStatement or MedicationRequest."""

    resource: str  # "MedicationStatement/<id>" or "MedicationRequest/<id>"
    codings: tuple[Coding, ...]
    display: str | None
    start: date | None
    end: date | None  # None: no end recorded
    status: str  # active | completed | intended | on-hold | stopped | draft (order-select)


class ConditionRecord(NamedTuple):
    """A diagnosis that is neither refuted nor entered in error."""

    resource: str
    codings: tuple[Coding, ...]
    onset: date | None  # onset[x] (dateTime or period start): when the disease began
    abatement: date | None
    clinical_status: str  # active | recurrence | relapse | inactive | remission | resolved
    recorded: date | None = None  # recordedDate: when it was entered, not when it began


class GoalRecord(NamedTuple):
    """An individual target agreed with the patient (an active or accepted FHIR Goal)."""

    resource: str
    measure: tuple[Coding, ...]
    value: float  # upper bound of the target (detailQuantity, or detailRange.high), canonical unit
    unit: str | None
    start: date | None  # Goal.startDate, else statusDate


class Issue(NamedTuple):
    """Why a resource (or part of it) was skipped: reported, never silently dropped."""

    resource: str  # "Observation/<id>", or "<Type> #<index>" for a resource without id
    reason: str


class PatientRecord(NamedTuple):
    """Everything the engines know about one patient."""

    id: str
    birth_date: date | None
    sex: str | None  # administrative gender: male | female | other | unknown
    practice: str | None  # ydernummer of Patient.generalPractitioner, else its reference
    observations: tuple[ObservationRecord, ...] = ()
    medications: tuple[MedicationRecord, ...] = ()
    conditions: tuple[ConditionRecord, ...] = ()
    goals: tuple[GoalRecord, ...] = ()
    issues: tuple[Issue, ...] = ()
    deceased: bool = False  # Patient.deceased[x]: dead, with or without a known date
    deceased_on: date | None = None  # the date of death, when deceasedDateTime gives one


class ResourceList(list[Any]):
    """Resources as read, plus the Bundle ``fullUrl`` -> ``"Type/id"`` map.

    References such as ``urn:uuid:...`` (Synthea, transaction Bundles) only resolve through the
    entries' fullUrls, which are not part of the resources; :func:`normalise` picks the map up
    from a ResourceList by itself.
    """

    def __init__(self, resources: Iterable[Any] = (), full_urls: dict[str, str] | None = None):
        super().__init__(resources)
        self.full_urls: dict[str, str] = {} if full_urls is None else full_urls


class Normalised(dict[str, PatientRecord]):
    """Patient records keyed by patient id, plus ``issues`` that belong to no patient in the
    input (no Patient resource, no subject, not a JSON object...), so none goes unseen."""

    def __init__(self, patients: dict[str, PatientRecord], issues: tuple[Issue, ...]):
        super().__init__(patients)
        self.issues = issues
