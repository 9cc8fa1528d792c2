"""FHIR R4 JSON -> :class:`~fhir_adapter.records.PatientRecord`: the one normalisation path.

A CDS Hooks prefetch, a Bundle on disk and bulk NDJSON all pass through :func:`resource_records`,
so status filtering, unit conversion and code aliases happen once.

Shape: :func:`resource_records` turns one resource into the records it yields, the patient they
belong to and its Issues; below it, one small function per resource type (each raises ``_Skip``
with a reason in plain words when the resource cannot become a record). :func:`normalise` reads a
whole input with it: it sorts resources by type, attributes their records to patients and
assembles sorted PatientRecords. That runs on every CDS Hooks call, so the code reads plain dicts
with ``dict.get`` and type checks instead of a validation library, and the usual Observation shape
has a fast path (see :func:`_common_observation`).

Bulk ingest (resources streamed by type, not grouped by patient) calls :func:`resource_records`
per resource and applies what :func:`normalise` applies across resources itself:

- ``medications`` and ``organizations`` are looked up, so read Medication and Organization
  resources first (Organizations through :func:`resource_records` too).
- Duplicates: :func:`normalise` keeps the first resource with a given ``resource`` name and
  reports the others.
- The MedicationRequest fallback is per patient and medication: MedicationRequest records come
  back marked ``medication_source="request"`` and count unless a MedicationStatement record of
  the same patient shares one of their codings and had not ended before the request was written
  (:func:`_covers`); statements come back marked ``"statement"``.
  Issues of a request that is not used are not reported.

Rules (DOMAIN.md §2), each a documented way for a resource to yield no record without an Issue:

- Observation: only status final, amended, corrected; entered-in-error, cancelled, preliminary,
  registered and unknown are dropped. An Observation with components yields one record per
  component that has a valueQuantity (components with another value type are not records).
- Condition: verificationStatus refuted, entered-in-error, unconfirmed, provisional and
  differential is dropped (a register counts diagnoses, not suspicions).
- MedicationStatement: status entered-in-error, not-taken, unknown is dropped.
- MedicationRequest: status cancelled, entered-in-error, draft, unknown is dropped, and a
  request is not used when a MedicationStatement record of the patient (one kept by its status)
  shares a coding with it: the statement is the better source for that medication (the
  medication card, FMK), and a prescription of it adds nothing or contradicts it, unless it was
  written after the statement ended (a restart). A statement of another medication (an
  over-the-counter drug) does not hide a prescription. A request is in use from authoredOn for
  as long as its supply lasts (expectedSupplyDuration x (1 + numberOfRepeatsAllowed)), not
  until its validityPeriod ends (docs/decisions/0009), unless it was stopped; see :func:`_use_end`.
- Goal: only lifecycleStatus active or accepted; a Goal (or target) without a measure is a
  descriptive goal and yields no record.
- Bundle entries without a resource, and resources of other types, carry nothing we use.

Everything else that cannot become a record becomes an :class:`~fhir_adapter.records.Issue`.

Values: valueQuantity (comparator kept: eGFR ">90" is 90 with ``>``), valueInteger, and
valueString of the form "<comparator><number> [unit]" are numbers; any other value (coded,
boolean, range, absent) gives a record with value None, so the observation still counts.
A number of a known analyte without a convertible unit is an Issue (:mod:`fhir_adapter.units`).

References: "Type/id", an absolute URL ending in Type/id (a /_history suffix is ignored), or a
Bundle fullUrl such as "urn:uuid:..." (see :class:`ResourceList`). Identifier-only and
conditional references are not resolved. Resources without an id are named "Type #index"
(their position in the input).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

import orjson
from dateutil.relativedelta import relativedelta

from fhir_adapter.codes import SYSTEMS, canonical_coding
from fhir_adapter.records import (
    Coding,
    ConditionRecord,
    GoalRecord,
    Issue,
    MedicationRecord,
    Normalised,
    ObservationRecord,
    PatientRecord,
    ResourceList,
)
from fhir_adapter.units import UnitError, conversion, to_canonical

# The module's constants are Final: compiled (docs/decisions/0010), a Final constant is read from
# a C static, any other module-level name with a dictionary look-up at every use.
YDERNUMMER: Final = "urn:oid:1.2.208.176.1.4"
"""Identifier system of a practice's ydernummer (DOMAIN.md §2)."""

_UCUM: Final = SYSTEMS["ucum"][0]
_COMPARATORS: Final = frozenset({"<", "<=", ">=", ">"})
# a tuple: `in` compares, so any JSON value is safe
_COMPARATOR_OR_NONE: Final = (None, *_COMPARATORS)
_EXACT_INT: Final = 2**53  # integers up to this size are exact as floats (and never overflow)
_OBSERVATION_KEEP: Final = frozenset({"final", "amended", "corrected"})
_KEPT: Final = tuple(_OBSERVATION_KEEP)  # tuple: `in` compares, so any JSON value is safe
_OBSERVATION_DROP: Final = frozenset(
    {"entered-in-error", "cancelled", "preliminary", "registered", "unknown"}
)
_STATEMENT_KEEP: Final = frozenset({"active", "completed", "intended", "stopped", "on-hold"})
_STATEMENT_DROP: Final = frozenset({"entered-in-error", "not-taken", "unknown"})
_REQUEST_KEEP: Final = frozenset({"active", "on-hold", "completed", "stopped"})
_REQUEST_DROP: Final = frozenset({"cancelled", "entered-in-error", "draft", "unknown"})
# MedicationRequest.dispenseRequest.expectedSupplyDuration: FHIR's duration-units (UCUM), in days
# or calendar months, and the unit words a system may send instead (English and Danish).
_SUPPLY_DAYS: Final = {
    "ms": 1 / 86_400_000, "s": 1 / 86_400, "min": 1 / 1_440, "h": 1 / 24, "d": 1.0, "wk": 7.0
}  # fmt: skip
_SUPPLY_MONTHS: Final = {"mo": 1, "a": 12}
_SUPPLY_UNITS: Final = {
    "second": "s", "seconds": "s", "minute": "min", "minutes": "min", "hour": "h", "hours": "h",
    "day": "d", "days": "d", "dag": "d", "dage": "d", "døgn": "d",
    "week": "wk", "weeks": "wk", "uge": "wk", "uger": "wk",
    "month": "mo", "months": "mo", "måned": "mo", "måneder": "mo",
    "year": "a", "years": "a", "år": "a",
}  # fmt: skip
_UCUM_MONTH_DAYS: Final = 365.25 / 12  # UCUM: mo = a_j / 12, a_j = 365.25 d
_VERIFICATION_DROP: Final = frozenset({"refuted", "entered-in-error", "unconfirmed", "provisional", "differential"})  # fmt: skip
_CLINICAL_STATUSES: Final = frozenset(
    {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
)
_GOAL_KEEP: Final = frozenset({"active", "accepted"})
_GOAL_DROP: Final = frozenset(
    {"proposed", "planned", "on-hold", "completed", "cancelled", "entered-in-error", "rejected"}
)
_GENDERS: Final = frozenset({"male", "female", "other", "unknown"})
_CLINICAL_TYPES: Final = frozenset(
    {"Observation", "Condition", "MedicationStatement", "MedicationRequest", "Goal"}
)
# Observation elements (FHIR R4) other than value[x]: an Observation with only these keys has no
# value of its own beside its components (see _common_observation).
_OBSERVATION_ELEMENTS: Final = frozenset(
    {
        "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
        "extension", "modifierExtension", "identifier", "basedOn", "partOf", "status",
        "category", "code", "subject", "focus", "encounter", "effectiveDateTime",
        "effectivePeriod", "effectiveTiming", "effectiveInstant", "issued", "performer",
        "dataAbsentReason", "interpretation", "note", "bodySite", "method", "specimen",
        "device", "referenceRange", "hasMember", "derivedFrom", "component",
    }
)  # fmt: skip
_BOM: Final = "\ufeff"
_BOM_BYTES: Final = _BOM.encode()
# Builds a record of a resource read on the hot path: a NamedTuple's own __new__ is Python even
# in the compiled module (some 4,000 instructions a call, against a few hundred).
_new: Final = tuple.__new__


class FhirInputError(ValueError):
    """The input as a whole cannot be read (not JSON, or not exactly one patient)."""


class OrganizationRecord(NamedTuple):
    """What a practice (or a cluster of practices) contributes: its ydernummer, and the
    Organization it is part of, which is how practices are grouped (DOMAIN.md §2)."""

    resource: str  # "Organization/<id>"
    ydernummer: str | None
    part_of: str | None  # partOf as "Organization/<id>" when it resolves, else as written


class ResourceRecords(NamedTuple):
    """Everything one resource yields (:func:`resource_records`).

    ``patient`` is the id of the Patient the records belong to (a Patient's own id), None for
    a resource that belongs to no patient or whose patient cannot be found (then ``issues``
    says why). ``issues`` are this resource's only, so records and Issues can be written
    wherever the resource is read.
    """

    resource: str  # "Type/<id>", or "Type #<index>" / "resource #<index>" without an id
    patient: str | None
    observations: tuple[ObservationRecord, ...] = ()
    medications: tuple[MedicationRecord, ...] = ()
    # "statement" for every MedicationStatement of a patient, even one without a record;
    # "request" for a MedicationRequest, whose records count unless a statement record of the
    # patient shares a coding with them.
    medication_source: Literal["statement", "request"] | None = None
    conditions: tuple[ConditionRecord, ...] = ()
    goals: tuple[GoalRecord, ...] = ()
    patient_record: PatientRecord | None = None  # a Patient's demographics (no records)
    organization: OrganizationRecord | None = None
    issues: tuple[Issue, ...] = ()


DUPLICATE: Final = (
    "appears more than once in the input; the first is used"  # the Issue of the others
)
_NO_ORGANIZATIONS: Mapping[str, OrganizationRecord] = MappingProxyType({})


class _Skip(Exception):  # noqa: N818 - control flow, not an error type
    """The resource (or target, component) cannot become a record; ``args[0]`` says why."""


class _Memo(dict[Any, Any]):
    """``compute(key)`` remembered for the hot path: ``memo[key]`` is one dictionary lookup
    (calling an ``lru_cache`` function costs several times that), and a full memo is emptied.
    Keys are codes, units and references, which repeat across resources and patients."""

    def __init__(self, compute: Callable[[Any], Any], size: int) -> None:
        super().__init__()
        self.compute = compute
        self.size = size

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        value = self[key] = self.compute(key)
        return value


# --- reading ----------------------------------------------------------------------------------


def read_resources(data: bytes | str) -> ResourceList:
    """Read a Bundle (any type, nested Bundles included), a JSON list of resources, a single
    resource, or NDJSON. Malformed resources are passed on for :func:`normalise` to report;
    only input that is not JSON at all raises :class:`FhirInputError`."""
    data = data.removeprefix(_BOM) if isinstance(data, str) else data.removeprefix(_BOM_BYTES)
    try:
        items = [orjson.loads(data)]
    except orjson.JSONDecodeError as exc:
        items = _read_ndjson(data, exc)
    else:
        if type(items[0]) is list:
            items = items[0]
        elif type(items[0]) is not dict:
            kind = type(items[0]).__name__
            raise FhirInputError(
                f"expected a FHIR resource, Bundle, list of resources or NDJSON, got JSON {kind}"
            )
    out = ResourceList()
    for item in items:
        _collect(item, out)
    return out


def _read_ndjson(data: bytes | str, whole: orjson.JSONDecodeError) -> list[Any]:
    lines: list[Any] = data.splitlines() if isinstance(data, bytes) else data.split("\n")
    items: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            if not items:  # the first line is not JSON either: this is not NDJSON at all
                raise FhirInputError(f"not valid JSON: {whole}") from whole
            raise FhirInputError(f"NDJSON line {number} is not valid JSON: {exc}") from exc
    return items


def _collect(item: Any, out: ResourceList) -> None:
    if type(item) is not dict or item.get("resourceType") != "Bundle":
        out.append(item)
        return
    entries = item.get("entry")
    if entries is None:
        return
    if type(entries) is not list:
        raise FhirInputError("Bundle.entry is not a list")
    for entry in entries:
        if type(entry) is not dict:
            out.append(entry)  # reported by normalise as "not a JSON object"
            continue
        resource = entry.get("resource")
        if resource is None:
            continue
        full_url = entry.get("fullUrl")
        if type(full_url) is str and type(resource) is dict:
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if type(rtype) is str and type(rid) is str:
                out.full_urls[full_url] = f"{rtype}/{rid}"
        _collect(resource, out)


# --- small readers ----------------------------------------------------------------------------


_CPR_LIKE: Final = re.compile(r"(?<!\d)\d{6}-?\d{4}(?!\d)")
"""Ten digits, with or without the dash after the sixth: what a CPR number looks like."""


def _show(text: str) -> str:
    """Quote a short piece of input for a message (statuses, units, references).

    A conditional reference (``Patient?identifier=...|<CPR>``) is never quoted: its search
    parameters can carry a CPR number. Nor is anything else with ten digits that could be one
    (``0101011234``, ``urn:oid:1.2.208.176.1.2|010101-1234``: a subject written as the CPR
    number itself). Dates and Patient values are never quoted either.
    """
    if "?" in text:
        return "(a conditional reference)"
    if _CPR_LIKE.search(text):
        return "(a value that may hold a CPR number)"
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _date(value: Any, where: str) -> date:
    """Date part as written (no time-zone shift); YYYY and YYYY-MM mean the first day.
    The value is never echoed: a misplaced CPR number must not end up in a message."""
    if type(value) is str:
        try:
            if len(value) >= 10 and value[4] == "-" and value[7] == "-":
                return date.fromisoformat(value[:10])
            if len(value) == 7 and value[4] == "-" and value[:4].isdigit() and value[5:].isdigit():
                return date(int(value[:4]), int(value[5:]), 1)
            if len(value) == 4 and value.isdigit():
                return date(int(value), 1, 1)
        except ValueError:
            pass
    raise _Skip(f"{where} is not a valid date")


def _optional_date(container: dict[str, Any], key: str) -> date | None:
    value = container.get(key)
    return None if value is None else _date(value, key)


def _period(value: Any, where: str) -> tuple[date | None, date | None]:
    if type(value) is not dict:
        raise _Skip(f"{where} is not an object")
    start, end = value.get("start"), value.get("end")
    return (
        None if start is None else _date(start, f"{where}.start"),
        None if end is None else _date(end, f"{where}.end"),
    )


def _object(container: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = container.get(key)
    if value is None or type(value) is dict:
        return value
    raise _Skip(f"{key} is not an object")


def _optional_str(container: dict[str, Any], key: str, where: str) -> str | None:
    value = container.get(key)
    if value is None or type(value) is str:
        return value
    raise _Skip(f"{where}.{key} is not a string")


def _status(
    resource: dict[str, Any], key: str, keep: frozenset[str], drop: frozenset[str]
) -> str | None:
    """The status if the resource counts, None if a documented rule drops it."""
    status = resource.get(key)
    if type(status) is str:
        if status in keep:
            return status
        if status in drop:
            return None
        raise _Skip(f"{key} {_show(status)} is not a valid {key}")
    raise _Skip(f"has no {key}" if status is None else f"{key} is not a string")


def _canonical_codings(systems_and_codes: tuple[str, ...]) -> tuple[Coding, ...]:
    """Canonical codings of well-formed entries given as (system, code, system, code...): the
    general loop of :func:`_codings` (duplicates collapse), () if none has a code."""
    pairs = zip(systems_and_codes[::2], systems_and_codes[1::2], strict=True)
    return tuple(dict.fromkeys(c for c in (canonical_coding(*pair) for pair in pairs) if c[1]))


_CODINGS: Final = _Memo(_canonical_codings, 65536)


def _usual_codings(concept: Any) -> tuple[Coding, ...] | None:
    """Codings of the usual CodeableConcept (one or two coding entries, each with a string
    system and code), cached per distinct entry list; None or () for anything else, which
    :func:`_codings` reads entry by entry to report what is wrong."""
    coding = concept.get("coding") if type(concept) is dict else None
    if type(coding) is not list:
        return None
    if len(coding) == 1:
        entry = coding[0]
        if type(entry) is dict:
            system, code = entry.get("system"), entry.get("code")
            if type(system) is str and type(code) is str:
                return _CODINGS[system, code]
    elif len(coding) == 2:
        first, second = coding
        if type(first) is dict and type(second) is dict:
            system, code = first.get("system"), first.get("code")
            system2, code2 = second.get("system"), second.get("code")
            if (
                type(system) is str
                and type(code) is str
                and type(system2) is str
                and type(code2) is str
            ):
                return _CODINGS[system, code, system2, code2]
    return None


def _codings(concept: Any, where: str) -> tuple[Coding, ...]:
    """Canonical codings of a CodeableConcept; at least one, or the concept is unusable."""
    usual = _usual_codings(concept)
    if usual:
        return usual
    if type(concept) is not dict:
        raise _Skip(f"has no {where}" if concept is None else f"{where} is not an object")
    coding = concept.get("coding")
    if type(coding) is not list:
        raise _Skip(f"{where} has no coding" if coding is None else f"{where}.coding is not a list")
    out: list[Coding] = []
    for entry in coding:
        if type(entry) is not dict:
            raise _Skip(f"{where}.coding has an entry that is not an object")
        system, code = entry.get("system"), entry.get("code")
        if type(system) is str and type(code) is str:
            canonical = canonical_coding(system, code)
            if canonical[1]:
                out.append(canonical)
        elif (system is not None and type(system) is not str) or (
            code is not None and type(code) is not str
        ):
            raise _Skip(f"{where}.coding has a system or code that is not a string")
    if not out:
        raise _Skip(f"{where} has no coding with both a system and a code")
    return tuple(dict.fromkeys(out)) if len(out) > 1 else (out[0],)


def _display(concept: Any) -> str | None:
    text = concept.get("text")
    if type(text) is str and text:
        return text
    for entry in concept.get("coding") or ():
        display = entry.get("display")
        if type(display) is str and display:
            return display
    return None


def _concept_code(resource: dict[str, Any], key: str) -> str | None:
    """First code of a status-like CodeableConcept (clinicalStatus, verificationStatus)."""
    concept = _object(resource, key)
    if concept is None:
        return None
    coding = concept.get("coding")
    if coding is None:
        return None
    if type(coding) is not list:
        raise _Skip(f"{key}.coding is not a list")
    for entry in coding:
        if type(entry) is not dict:
            raise _Skip(f"{key}.coding has an entry that is not an object")
        code = _optional_str(entry, "code", key)
        if code:
            return code
    return None


def _parse_reference(reference: str) -> str | None:
    """``"Type/id"`` of a relative or absolute literal reference (version suffix dropped)."""
    cut = reference.find("/_history/")
    if cut >= 0:
        reference = reference[:cut]
    if reference.startswith(("urn:", "#")):
        return None
    parts = reference.rsplit("/", 2)
    if len(parts) < 2 or not parts[-2] or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


_REFERENCES: Final = _Memo(_parse_reference, 4096)


def _resolve(reference: str, full_urls: Mapping[str, str]) -> str | None:
    """``"Type/id"`` of a reference: a Bundle entry's fullUrl, else the reference parsed. (NDJSON
    has no fullUrls: the empty map is not asked, a method call by name when compiled.)"""
    return (full_urls.get(reference) if full_urls else None) or _REFERENCES[reference]


def _patient_of(resource: dict[str, Any], full_urls: Mapping[str, str]) -> str:
    """Patient id of the resource's subject."""
    subject = resource.get("subject")
    if type(subject) is not dict:
        raise _Skip("has no subject" if subject is None else "subject is not an object")
    reference = subject.get("reference")
    if type(reference) is not str:
        raise _Skip("subject has no literal reference to a Patient")
    key = _resolve(reference, full_urls)
    if key is None or not key.startswith("Patient/"):
        raise _Skip(f"subject {_show(reference)} does not resolve to a Patient")
    return key[8:]


# --- values -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite JSON number as a float; None for anything else (bool, text, inf, nan, 1e400)."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _quantity(quantity: Any, where: str) -> tuple[float | None, str | None, str | None]:
    """(value, comparator, unit) of a Quantity; the UCUM code wins over the display unit."""
    if type(quantity) is not dict:
        raise _Skip(f"{where} is not an object")
    number = quantity.get("value")
    if number is not None and (number := _number(number)) is None:
        raise _Skip(f"{where}.value is not a number")
    comparator = quantity.get("comparator")
    if comparator is not None and (type(comparator) is not str or comparator not in _COMPARATORS):
        raise _Skip(f"{where}.comparator is not one of <, <=, >=, >")
    code, text = quantity.get("code"), quantity.get("unit")
    if (code is not None and type(code) is not str) or (text is not None and type(text) is not str):
        raise _Skip(f"{where} has a unit or code that is not a string")
    return number, comparator, _unit(code, text, quantity.get("system"))


def _unit(code: str | None, text: str | None, system: Any) -> str | None:
    """A Quantity's unit: the UCUM code wins over the display unit."""
    return code if code and system in (None, _UCUM) else text or code


def _text_value(text: str) -> tuple[float | None, str | None, str | None]:
    """Read ">90", "<5", "7,5 %" from a valueString; other text is a non-numeric result."""
    rest = text.strip()
    comparator = None
    for candidate in ("<=", ">=", "<", ">"):
        if rest.startswith(candidate):
            comparator, rest = candidate, rest[len(candidate) :].lstrip()
            break
    number, _, unit = rest.partition(" ")
    number = number.replace(",", ".")
    if not (number.isascii() and number.lstrip("+-").replace(".", "", 1).isdigit()):
        return None, None, None
    return float(number), comparator, unit.strip() or None


def _value(element: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    """(value, comparator, unit) of an Observation or component without a valueQuantity; None
    for a non-numeric result (coded, boolean, range, absent...), which still counts."""
    text = element.get("valueString")
    if text is not None:
        if type(text) is not str:
            raise _Skip("valueString is not a string")
        return _text_value(text)
    integer = element.get("valueInteger")
    if integer is not None:
        if type(integer) is not int:
            raise _Skip("valueInteger is not an integer")
        number = _number(integer)
        if number is None:
            raise _Skip("valueInteger is not a number")
        return number, None, None
    return None, None, None


# --- one function per resource type -----------------------------------------------------------


def _observation_date(resource: dict[str, Any]) -> date:
    value = resource.get("effectiveDateTime")
    if value is not None:
        return _date(value, "effectiveDateTime")
    period = resource.get("effectivePeriod")
    if period is not None:
        start, end = _period(period, "effectivePeriod")
        day = start or end
        if day is not None:
            return day
    for key in ("effectiveInstant", "issued"):
        value = resource.get(key)
        if value is not None:
            return _date(value, key)
    raise _Skip("has no date (effective[x] or issued)")


def _observation(
    rid: str, codings: tuple[Coding, ...], day: date, status: str, element: dict[str, Any]
) -> ObservationRecord:
    quantity = element.get("valueQuantity")
    if quantity is not None:
        value, comparator, unit = _quantity(quantity, "valueQuantity")
    else:
        value, comparator, unit = _value(element)
    if value is None:
        return _new(ObservationRecord, (rid, codings, day, None, None, None, status))
    try:
        value, unit = to_canonical(codings, value, unit)
    except UnitError as exc:
        raise _Skip(str(exc)) from None
    return _new(ObservationRecord, (rid, codings, day, value, comparator, unit, status))


def _conversion_or_none(
    codings_and_unit: tuple[tuple[Coding, ...], str | None],
) -> tuple[Callable[[float], float] | None, str | None] | None:
    try:
        return conversion(*codings_and_unit)
    except UnitError:
        return None


_CONVERSIONS: Final = _Memo(_conversion_or_none, 8192)  # (codings, unit) -> conversion() or None


def _common_value(
    rid: str, codings: tuple[Coding, ...], day: date, status: str, quantity: Any
) -> ObservationRecord | None:
    """The record of a valueQuantity with a finite number, a comparator or none, and a unit
    that converts, as :func:`_quantity` and :func:`_observation` read it; None for any other."""
    if type(quantity) is not dict:
        return None
    value = quantity.get("value")
    if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:
        value = float(value)
    elif type(value) is not float or not math.isfinite(value):
        return None
    comparator = quantity.get("comparator")
    code, text = quantity.get("code"), quantity.get("unit")
    if (
        comparator not in _COMPARATOR_OR_NONE
        or (code is not None and type(code) is not str)
        or (text is not None and type(text) is not str)
    ):
        return None
    unit = code if code and quantity.get("system") in (None, _UCUM) else text or code  # _unit()
    found = _CONVERSIONS[codings, unit]
    if found is None:
        return None
    convert, unit = found
    if convert is not None and not math.isfinite(value := convert(value)):
        return None  # to_canonical refuses it
    return _new(ObservationRecord, (rid, codings, day, value, comparator, unit, status))


def _common_observation(
    resource: dict[str, Any], full_urls: Mapping[str, str]
) -> tuple[str, str, tuple[ObservationRecord, ...]] | None:
    """(resource name, patient id, records) of an Observation of the usual shape; None for
    any other Observation, which the general path (:func:`_clinical_records`) reads from the
    start.

    Why: Observations are most of a patient's resources and normalise runs on every CDS Hooks
    call; this reads them with few calls, lookups and checks. The usual shape: an id, a subject
    that resolves to a Patient, a kept status, one or two well-formed codings, an
    effectiveDateTime, and a valueQuantity with a number in a convertible unit, or components
    that each have one (a blood-pressure panel). That is exactly the shape for which the general
    path yields records and no Issue, so its order of checks and its messages are not needed.
    """
    ident = resource.get("id")
    status = resource.get("status")
    subject = resource.get("subject")
    if type(ident) is not str or not ident or status not in _KEPT or type(subject) is not dict:
        return None
    reference = subject.get("reference")
    if type(reference) is not str:
        return None
    patient = _resolve(reference, full_urls)
    codings = _usual_codings(resource.get("code"))
    when = resource.get("effectiveDateTime")
    if (
        patient is None
        or not patient.startswith("Patient/")
        or not codings
        or type(when) is not str
        or len(when) < 10
        or when[4] != "-"
        or when[7] != "-"
    ):
        return None
    try:
        day = date.fromisoformat(when[:10])  # the usual form, as _date reads it
    except ValueError:
        return None
    rid = f"Observation/{ident}"
    components = resource.get("component")
    if components is None:
        record = _common_value(rid, codings, day, status, resource.get("valueQuantity"))
        if record is None:
            return None
        records: tuple[ObservationRecord, ...] = (record,)
    else:
        # With keys other than these the Observation may have a value of its own.
        if type(components) is not list or not resource.keys() <= _OBSERVATION_ELEMENTS:
            return None
        parts = []
        for component in components:
            if type(component) is not dict:
                return None
            quantity = component.get("valueQuantity")
            if quantity is not None:
                part = _usual_codings(component.get("code"))
                record = _common_value(rid, part, day, status, quantity) if part else None
                if record is None:
                    return None
                parts.append(record)
        if not parts:
            return None
        records = tuple(parts)
    return rid, patient[8:], records


def _observation_records(
    resource: dict[str, Any], rid: str, issues: list[Issue]
) -> tuple[ObservationRecord, ...]:
    """Records of one Observation: one, or one per numeric component (blood-pressure panels).

    A component that cannot be read is an Issue of its own; the other components still count.
    """
    status = _status(resource, "status", _OBSERVATION_KEEP, _OBSERVATION_DROP)
    if status is None:
        return ()
    codings = _codings(resource.get("code"), "code")
    day = _observation_date(resource)
    components = resource.get("component")
    if components is None:
        return (_observation(rid, codings, day, status, resource),)
    if type(components) is not list:
        raise _Skip("component is not a list")
    records = []
    reported = len(issues)
    for component in components:
        if type(component) is not dict:
            issues.append(Issue(rid, "a component is not an object"))
            continue
        if component.get("valueQuantity") is None:
            continue
        try:
            part = _codings(component.get("code"), "component.code")
            records.append(_observation(rid, part, day, status, component))
        except _Skip as skip:
            issues.append(Issue(rid, f"component: {skip.args[0]}"))
    if any(key.startswith("value") for key in resource):
        try:
            records.append(_observation(rid, codings, day, status, resource))
        except _Skip as skip:
            issues.append(Issue(rid, skip.args[0]))
    if not records and len(issues) == reported:
        raise _Skip("has components but none with a numeric value")
    return tuple(records)


def _condition_record(resource: dict[str, Any], rid: str) -> ConditionRecord | None:
    """A Condition unless its verificationStatus drops it (see the module rules);
    clinicalStatus defaults to active."""
    if _concept_code(resource, "verificationStatus") in _VERIFICATION_DROP:
        return None
    clinical = _concept_code(resource, "clinicalStatus") or "active"
    if clinical not in _CLINICAL_STATUSES:
        raise _Skip(f"clinicalStatus {_show(clinical)} is not a valid clinical status")
    codings = _codings(resource.get("code"), "code")
    onset = _optional_date(resource, "onsetDateTime")
    period = resource.get("onsetPeriod")
    if onset is None and period is not None:
        start, end = _period(period, "onsetPeriod")
        onset = start or end
    recorded = _optional_date(resource, "recordedDate")
    abatement = _optional_date(resource, "abatementDateTime")
    period = resource.get("abatementPeriod")
    if abatement is None and period is not None:
        start, end = _period(period, "abatementPeriod")
        abatement = end or start
    return _new(ConditionRecord, (rid, codings, onset, abatement, clinical, recorded))


def contained_medication(resource: dict[str, Any], local_id: str) -> dict[str, Any] | None:
    """The Medication ``#local_id`` names among ``resource``'s contained resources, if any."""
    contained = resource.get("contained")
    if type(contained) is list:
        for item in contained:
            if (
                type(item) is dict
                and item.get("resourceType") == "Medication"
                and item.get("id") == local_id
            ):
                return item
    return None


def _medication(
    resource: dict[str, Any],
    medications: Mapping[str, dict[str, Any]],
    full_urls: Mapping[str, str],
) -> tuple[tuple[Coding, ...], str | None]:
    """Codings and display of medication[x], following a reference to a contained Medication
    or to a Medication elsewhere in the input."""
    concept = resource.get("medicationCodeableConcept")
    if concept is not None:
        return _codings(concept, "medicationCodeableConcept"), _display(concept)
    reference = _object(resource, "medicationReference")
    if reference is None:
        raise _Skip("has no medicationCodeableConcept or medicationReference")
    target = reference.get("reference")
    if type(target) is not str:
        raise _Skip("medicationReference has no literal reference")
    if target.startswith("#"):
        medication = contained_medication(resource, target[1:])
    else:
        key = _resolve(target, full_urls)
        medication = medications.get(key) if key else None
    if medication is None:
        raise _Skip(f"medicationReference {_show(target)} does not resolve to a Medication")
    concept = medication.get("code")
    return _codings(concept, "Medication.code"), _display(concept)


def _statement_record(
    resource: dict[str, Any],
    rid: str,
    medications: Mapping[str, dict[str, Any]],
    full_urls: Mapping[str, str],
) -> MedicationRecord | None:
    """A MedicationStatement; start/end from effective[x], else dateAsserted as the start."""
    status = _status(resource, "status", _STATEMENT_KEEP, _STATEMENT_DROP)
    if status is None:
        return None
    codings, display = _medication(resource, medications, full_urls)
    start = _optional_date(resource, "effectiveDateTime")
    end = None
    period = resource.get("effectivePeriod")
    if start is None and period is not None:
        start, end = _period(period, "effectivePeriod")
    if start is None:
        start = _optional_date(resource, "dateAsserted")
    return _new(MedicationRecord, (rid, codings, display, start, end, status))


def _request_record(
    resource: dict[str, Any],
    rid: str,
    medications: Mapping[str, dict[str, Any]],
    full_urls: Mapping[str, str],
    issues: list[Issue],
) -> MedicationRecord | None:
    """A MedicationRequest: from authoredOn (else validityPeriod.start) to the end of its
    supply; validityPeriod.end is how long it may be dispensed, not how long it is taken."""
    status = _status(resource, "status", _REQUEST_KEEP, _REQUEST_DROP)
    if status is None:
        return None
    codings, display = _medication(resource, medications, full_urls)
    dispense = _object(resource, "dispenseRequest") or {}
    validity = dispense.get("validityPeriod")
    valid_from, valid_to = (
        (None, None) if validity is None else _period(validity, "dispenseRequest.validityPeriod")
    )
    start = _optional_date(resource, "authoredOn") or valid_from
    try:
        supply = _supply(dispense)
    except _Skip as skip:  # the prescription still counts, as one without a supply duration
        issues.append(Issue(rid, f"{skip.args[0]}; read as no supply duration"))
        supply = None
    end = _use_end(start, supply, valid_to, status)
    return _new(MedicationRecord, (rid, codings, display, start, end, status))


class _Supply(NamedTuple):
    amount: float  # the supply of one dispense, in ``unit``
    unit: str  # a UCUM code: a key of _SUPPLY_DAYS or _SUPPLY_MONTHS
    dispenses: int  # the first one and numberOfRepeatsAllowed repeats


def _supply(dispense: dict[str, Any]) -> _Supply | None:
    """dispenseRequest.expectedSupplyDuration and numberOfRepeatsAllowed; None without the
    first (a quantity alone says nothing of how long it lasts)."""
    duration = dispense.get("expectedSupplyDuration")
    if duration is None:
        return None
    where = "dispenseRequest.expectedSupplyDuration"
    amount, _, unit = _quantity(duration, where)
    key = (unit or "").strip().lower()
    code = _SUPPLY_UNITS.get(key, key)
    if not key:
        raise _Skip(f"{where} has no unit")
    if code not in _SUPPLY_DAYS and code not in _SUPPLY_MONTHS:
        raise _Skip(f"{where} unit {_show(key)} is not a unit of time")
    if amount is None or amount <= 0:
        raise _Skip(f"{where} is not a positive length of time")
    repeats = dispense.get("numberOfRepeatsAllowed", 0)
    if type(repeats) is not int or repeats < 0:
        raise _Skip("dispenseRequest.numberOfRepeatsAllowed is not a whole number of 0 or more")
    return _Supply(amount, code, 1 + repeats)


def _last_day(first: date, amount: float, unit: str, times: int = 1) -> date:
    """The last day ``times`` supplies of ``amount`` ``unit`` last when they begin on ``first``:
    whole months and years by the calendar (FHIR: 'mo' is a calendar month), anything else in
    days (part of a day counts as a day, part of a month is UCUM's mean month of 30.4375 days)."""
    try:
        amount *= times
        months = amount * _SUPPLY_MONTHS.get(unit, 0)
        if months and months.is_integer():
            return first + relativedelta(months=int(months), days=-1)
        days = months * _UCUM_MONTH_DAYS if months else amount * _SUPPLY_DAYS[unit]
        return first + timedelta(days=math.ceil(days) - 1)
    except (OverflowError, ValueError):  # beyond the last date a date can hold
        return date.max


def _use_end(
    start: date | None, supply: _Supply | None, valid_to: date | None, status: str
) -> date | None:
    """The last day of use: the end of the whole supply, but no later than one dispense after
    validityPeriod.end (no dispense is made after it). Without a supply duration (or a start to
    count it from) an active request is taken until it lapses, by its status; a completed or
    stopped one has no end (the engine counts its start day only). A stopped request was halted
    before its supply was used (FHIR), on a day R4 does not record: no end either, or metformin
    stopped yesterday still got 'stop metformin' for the rest of its supply."""
    if supply is None or start is None or status == "stopped":
        return valid_to if status == "active" else None
    end = _last_day(start, supply.amount, supply.unit, supply.dispenses)
    if valid_to is None:
        return end
    return min(end, _last_day(valid_to, supply.amount, supply.unit))


def _target_bound(target: dict[str, Any]) -> tuple[float, str | None]:
    quantity = target.get("detailQuantity")
    if quantity is not None:
        value, comparator, unit = _quantity(quantity, "target.detailQuantity")
        if comparator in (">", ">="):
            raise _Skip("target is a lower bound; only upper-bound targets are used")
    else:
        detail_range = _object(target, "detailRange")
        if detail_range is None or detail_range.get("high") is None:
            raise _Skip("target has a measure but no detailQuantity or detailRange.high")
        value, _, unit = _quantity(detail_range["high"], "target.detailRange.high")
    if value is None:
        raise _Skip("target has no value")
    return value, unit


def _goal_records(resource: dict[str, Any], rid: str, issues: list[Issue]) -> list[GoalRecord]:
    """One GoalRecord per measurable target of an active or accepted Goal, in the measure's
    canonical unit. A target that cannot be read is an Issue; the others still count."""
    if _status(resource, "lifecycleStatus", _GOAL_KEEP, _GOAL_DROP) is None:
        return []
    start = _optional_date(resource, "startDate") or _optional_date(resource, "statusDate")
    targets = resource.get("target")
    if targets is None:
        return []
    if type(targets) is not list:
        raise _Skip("target is not a list")
    records = []
    for target in targets:
        try:
            if type(target) is not dict:
                raise _Skip("a target is not an object")
            measure = target.get("measure")
            if measure is None:
                if (
                    target.get("detailQuantity") is not None
                    or target.get("detailRange") is not None
                ):
                    raise _Skip("target has a value but no measure")
                continue
            measure = _codings(measure, "target.measure")
            value, unit = to_canonical(measure, *_target_bound(target))
            records.append(GoalRecord(rid, measure, value, unit, start))
        except (_Skip, UnitError) as exc:
            issues.append(Issue(rid, str(exc.args[0])))
    return records


def _ydernummer(identifiers: Any) -> str | None:
    for identifier in identifiers if type(identifiers) is list else (identifiers,):
        if type(identifier) is dict and identifier.get("system") == YDERNUMMER:
            value = identifier.get("value")
            if type(value) is str and value:
                return value
    return None


def _organization_record(
    resource: dict[str, Any], rid: str, full_urls: Mapping[str, str]
) -> OrganizationRecord:
    """An Organization always yields its record: a missing ydernummer or an unusable partOf
    (not a literal reference) is None, as neither is needed to read the other resources."""
    part_of = resource.get("partOf")
    target = part_of.get("reference") if type(part_of) is dict else None
    if type(target) is not str or not target:
        target = None
    parent = target and (_resolve(target, full_urls) or target)
    return OrganizationRecord(rid, _ydernummer(resource.get("identifier")), parent)


def _practice(
    patient: dict[str, Any],
    organizations: Mapping[str, OrganizationRecord],
    full_urls: Mapping[str, str],
) -> str | None:
    """Ydernummer of the general practitioner's Organization (from the Organization in the
    input, or from the reference's identifier); failing that, the reference itself.

    Never a conditional reference (``Practitioner?identifier=...|<CPR>``) or one that may hold a
    CPR number: the practice names list files and MeasureReports, stands in indicators-shared.csv
    and is printed by the ingest. Such a reference is an Issue and the patient has no practice."""
    references = patient.get("generalPractitioner")
    if references is None:
        return None
    if type(references) is not list:
        raise _Skip("generalPractitioner is not a list")
    fallback = None
    unusable = None
    for reference in references:
        if type(reference) is not dict:
            raise _Skip("generalPractitioner has an entry that is not an object")
        target = _optional_str(reference, "reference", "generalPractitioner")
        key = _resolve(target, full_urls) if target else None
        organization = organizations.get(key) if key else None
        number = organization.ydernummer if organization else None
        number = number or _ydernummer(reference.get("identifier"))
        if number:
            return number
        if target and not key and ("?" in target or _CPR_LIKE.search(target)):
            unusable = unusable or target
            continue
        fallback = fallback or key or target
    if fallback is None and unusable is not None:
        raise _Skip(f"generalPractitioner {_show(unusable)} names no practice")
    return fallback


def _patient_record(
    resource: dict[str, Any],
    pid: str,
    organizations: Mapping[str, OrganizationRecord],
    full_urls: Mapping[str, str],
    issues: list[Issue],
) -> PatientRecord:
    """Demographics of a Patient. A bad field is an Issue and None, never a lost patient: the
    patient's clinical data hang on it. Messages never quote Patient values (CPR numbers)."""
    rid = f"Patient/{pid}"
    try:
        birth_date = _optional_date(resource, "birthDate")
    except _Skip as skip:
        birth_date = None
        issues.append(Issue(rid, skip.args[0]))
    sex = resource.get("gender")
    if sex is not None and (type(sex) is not str or sex not in _GENDERS):
        sex = None
        issues.append(Issue(rid, "gender is not male, female, other or unknown"))
    try:
        practice = _practice(resource, organizations, full_urls)
    except _Skip as skip:
        practice = None
        issues.append(Issue(rid, skip.args[0]))
    deceased, deceased_on = _death(resource, rid, issues)
    no_records = ((), (), (), (), ())  # observations ... issues, gathered across resources later
    return _new(PatientRecord, (pid, birth_date, sex, practice, *no_records, deceased, deceased_on))


def _death(resource: dict[str, Any], rid: str, issues: list[Issue]) -> tuple[bool, date | None]:
    """Patient.deceased[x] as (dead, date of death). A deceasedDateTime that cannot be read still
    says the patient died (date unknown); a deceasedBoolean that is not a boolean says nothing."""
    when = resource.get("deceasedDateTime")
    if when is not None:
        try:
            return True, _date(when, "deceasedDateTime")
        except _Skip as skip:
            issues.append(Issue(rid, f"{skip.args[0]}: taken as dead on an unknown date"))
            return True, None
    flag = resource.get("deceasedBoolean")
    if flag is None or type(flag) is bool:
        return flag is True, None
    issues.append(Issue(rid, "deceasedBoolean is not true or false: taken as alive"))
    return False, None


# --- one resource -----------------------------------------------------------------------------


def _rid(resource: dict[str, Any], rtype: str, index: int) -> str:
    rid = resource.get("id")
    return f"{rtype}/{rid}" if type(rid) is str and rid else f"{rtype} #{index}"


def resource_records(
    resource: Any,
    full_urls: Mapping[str, str],
    medications: Mapping[str, dict[str, Any]],
    organizations: Mapping[str, OrganizationRecord] = _NO_ORGANIZATIONS,
    index: int = 0,
) -> ResourceRecords:
    """The records one resource yields, the patient they belong to, and its Issues.

    ``full_urls`` maps Bundle fullUrls to ``"Type/id"`` (empty for NDJSON); ``medications``
    holds Medication resources and ``organizations`` the records of Organizations (this
    function's ``organization``), both keyed ``"Type/id"``, for the references of
    MedicationStatements, MedicationRequests and Patients. ``index`` is the resource's position
    in its input, the name of a resource without an id. Never raises for a bad resource.
    See the module docstring for what a caller applies across resources.
    """
    if type(resource) is dict and resource.get("resourceType") == "Observation":
        common = _common_observation(resource, full_urls)
        if common is not None:
            return _new(ResourceRecords, (*common, (), None, (), (), None, None, ()))
    return _general_records(resource, full_urls, medications, organizations, index)


def _general_records(
    resource: Any,
    full_urls: Mapping[str, str],
    medications: Mapping[str, dict[str, Any]],
    organizations: Mapping[str, OrganizationRecord],
    index: int,
) -> ResourceRecords:
    """:func:`resource_records` of any resource, read field by field to report what is wrong."""
    if type(resource) is not dict:
        return _orphan(f"resource #{index}", "is not a JSON object")
    rtype = resource.get("resourceType")
    if type(rtype) is not str:
        return _orphan(f"resource #{index}", "has no resourceType")
    rid = _rid(resource, rtype, index)
    if rtype in _CLINICAL_TYPES:
        return _clinical_records(resource, rtype, rid, full_urls, medications)
    if rtype == "Patient":
        return _patient_records(resource, rid, organizations, full_urls)
    if rtype == "Organization":
        return ResourceRecords(
            rid, None, organization=_organization_record(resource, rid, full_urls)
        )
    return ResourceRecords(rid, None)


def _orphan(rid: str, reason: str) -> ResourceRecords:
    return ResourceRecords(rid, None, issues=(Issue(rid, reason),))


def _clinical_records(
    resource: dict[str, Any],
    rtype: str,
    rid: str,
    full_urls: Mapping[str, str],
    medications: Mapping[str, dict[str, Any]],
) -> ResourceRecords:
    try:
        pid = _patient_of(resource, full_urls)
    except _Skip as skip:
        return _orphan(rid, skip.args[0])
    ident = resource.get("id")
    observations: tuple[ObservationRecord, ...] = ()
    medication: MedicationRecord | None = None
    source: Literal["statement", "request"] | None = None
    condition: ConditionRecord | None = None
    goals: list[GoalRecord] = []
    issues: list[Issue] = []
    try:
        if ident is not None and type(ident) is not str:
            raise _Skip("id is not a string")
        if rtype == "Observation":
            observations = _observation_records(resource, rid, issues)
        elif rtype == "Condition":
            condition = _condition_record(resource, rid)
        elif rtype == "MedicationStatement":
            source = "statement"
            medication = _statement_record(resource, rid, medications, full_urls)
        elif rtype == "MedicationRequest":
            source = "request"
            medication = _request_record(resource, rid, medications, full_urls, issues)
        else:
            goals = _goal_records(resource, rid, issues)
    except _Skip as skip:
        issues.append(Issue(rid, skip.args[0]))
    except Exception as exc:  # last resort: one bad resource must not stop the others
        issues.append(Issue(rid, f"could not be read ({type(exc).__name__})"))
    medication_records = () if medication is None else (medication,)
    condition_records = () if condition is None else (condition,)
    return _new(
        ResourceRecords,
        (
            rid,
            pid,
            observations,
            medication_records,
            source,
            condition_records,
            tuple(goals),
            None,
            None,
            tuple(issues),
        ),
    )


def _patient_records(
    resource: dict[str, Any],
    rid: str,
    organizations: Mapping[str, OrganizationRecord],
    full_urls: Mapping[str, str],
) -> ResourceRecords:
    pid = resource.get("id")
    if type(pid) is not str or not pid:
        return _orphan(rid, "has no id, so no resource can refer to it")
    issues: list[Issue] = []
    try:
        patient = _patient_record(resource, pid, organizations, full_urls, issues)
    except Exception as exc:  # last resort, as in _clinical_records
        issues.append(Issue(rid, f"could not be read ({type(exc).__name__})"))
        patient = PatientRecord(pid, None, None, None)
    return _new(ResourceRecords, (rid, pid, (), (), None, (), (), patient, None, tuple(issues)))


# --- assembly ---------------------------------------------------------------------------------


class _Patient:
    """Records gathered for one patient while resources are read."""

    __slots__ = (
        "conditions",
        "goals",
        "issues",
        "medications",
        "observations",
        "requests",
    )

    def __init__(self) -> None:
        self.observations: list[ObservationRecord] = []
        self.medications: list[MedicationRecord] = []
        self.requests: list[ResourceRecords] = []  # used unless a statement covers them
        self.conditions: list[ConditionRecord] = []
        self.goals: list[GoalRecord] = []
        self.issues: list[Issue] = []

    def resources(self) -> list[str]:
        """Every resource that yielded a record or awaits use (for orphan reporting)."""
        names = [r.resource for r in self.observations]
        names += [r.resource for r in self.medications]
        names += [r.resource for r in self.conditions]
        names += [r.resource for r in self.goals]
        names += [r.resource for r in self.requests]
        return list(dict.fromkeys(names))


_BY_DATE: Final = itemgetter(2, 0, 1)  # ObservationRecord: date, resource, codings


def resource_codings(resource: Any) -> tuple[Coding, ...]:
    """The codes of what a resource is about (an Observation's or Condition's code, a
    medication's concept, a Goal's measures), canonical; () where none can be read.

    Why: a resource that yields no record is an Issue, and a card must be able to say that the
    eGFR it lacks is in the chart but could not be read, not that there is none.
    """
    if type(resource) is not dict:
        return ()
    kind = resource.get("resourceType")
    if kind in ("MedicationStatement", "MedicationRequest"):
        concepts = [resource.get("medicationCodeableConcept")]
    elif kind == "Goal":
        concepts = _each(resource.get("target"), "measure")
    else:  # and a panel's components, one of which may be what could not be read
        concepts = [resource.get("code"), *_each(resource.get("component"), "code")]
    found: list[Coding] = []
    for concept in concepts:
        try:
            found += _codings(concept, "code")
        except _Skip:
            continue
    return tuple(dict.fromkeys(found))


def _each(items: Any, key: str) -> list[Any]:
    """``item[key]`` of each object in a JSON list; [] for anything else."""
    return [item.get(key) for item in items if type(item) is dict] if type(items) is list else []


def _dated(day: date | None) -> date:
    return day or date.min


def normalise(resources: Iterable[Any], full_urls: Mapping[str, str] | None = None) -> Normalised:
    """Normalise resources of any number of patients into PatientRecords keyed by patient id.

    ``full_urls`` maps Bundle fullUrls to ``"Type/id"``; it defaults to the map a
    :class:`ResourceList` from :func:`read_resources` carries. Never raises for bad resources:
    each becomes an Issue on its patient's record, or in ``.issues`` when no patient is known.
    """
    if full_urls is None:
        full_urls = resources.full_urls if isinstance(resources, ResourceList) else {}
    orphans: list[Issue] = []
    patients: list[tuple[int, dict[str, Any]]] = []
    clinical: list[tuple[int, str, dict[str, Any]]] = []
    medications: dict[str, dict[str, Any]] = {}
    organizations: dict[str, OrganizationRecord] = {}
    for index, resource in enumerate(resources):
        rtype = resource.get("resourceType") if type(resource) is dict else None
        if type(rtype) is not str:
            orphans += resource_records(resource, full_urls, medications, index=index).issues
        elif rtype in _CLINICAL_TYPES:
            clinical.append((index, rtype, resource))
        elif rtype == "Patient":
            patients.append((index, resource))
        elif rtype == "Medication":
            medications.setdefault(_rid(resource, rtype, index), resource)
        elif rtype == "Organization":
            found = resource_records(resource, full_urls, medications, index=index)
            organizations.setdefault(found.resource, found.organization)  # type: ignore[arg-type]

    gathered: dict[str, _Patient] = {}
    seen: set[str] = set()
    for index, rtype, resource in clinical:
        # resource_records(), taken apart: most resources are Observations of the usual shape,
        # whose records need no ResourceRecords around them on the way to their patient.
        common = _common_observation(resource, full_urls) if rtype == "Observation" else None
        if common is None:
            found = _general_records(resource, full_urls, medications, _NO_ORGANIZATIONS, index)
            rid, pid, observations, meds, source, conditions, goals, _, _, issues = found
        else:
            rid, pid, observations = common
            meds = conditions = goals = issues = ()
            source = None
        if pid is None:
            orphans += issues
            continue
        acc = gathered.get(pid)
        if acc is None:
            acc = gathered[pid] = _Patient()
        if rid in seen:
            acc.issues.append(Issue(rid, DUPLICATE))
            continue
        seen.add(rid)
        if source == "request":
            acc.requests.append(found)
            continue
        if observations:  # each check skips an empty tuple, as most are
            acc.observations += observations
        if meds:
            acc.medications += meds
        if conditions:
            acc.conditions += conditions
        if goals:
            acc.goals += goals
        if issues:
            acc.issues += issues

    records: dict[str, PatientRecord] = {}
    for index, resource in patients:
        found = resource_records(resource, full_urls, medications, organizations, index)
        pid = found.patient
        if pid is None:
            orphans += found.issues
            continue
        if pid in records:
            first = records[pid]
            duplicate = Issue(found.resource, DUPLICATE)
            records[pid] = first._replace(issues=(*first.issues, duplicate))
            continue
        acc = gathered.pop(pid, None) or _Patient()
        acc.issues += found.issues
        records[pid] = _assemble(found.patient_record, acc)  # type: ignore[arg-type]

    for pid, acc in gathered.items():
        reason = f"refers to Patient/{pid}, which is not in the input"
        orphans += [Issue(name, reason) for name in acc.resources()] + acc.issues
    return Normalised(records, tuple(orphans))


def _assemble(patient: PatientRecord, acc: _Patient) -> PatientRecord:
    """Sorted, immutable records; each MedicationRequest unless a statement covers it."""
    statements = acc.medications[:]  # statements only, so far
    for request in acc.requests:
        if not any(_covers(s, r) for r in request.medications for s in statements):
            acc.medications += request.medications
            acc.issues += request.issues
    acc.observations.sort(key=_BY_DATE)
    acc.medications.sort(key=lambda r: (_dated(r.start), r.resource))
    acc.conditions.sort(key=lambda r: (_dated(r.onset), r.resource))
    acc.goals.sort(key=lambda r: (_dated(r.start), r.resource, r.measure, r.value))
    return patient._replace(
        observations=tuple(acc.observations),
        medications=tuple(acc.medications),
        conditions=tuple(acc.conditions),
        goals=tuple(acc.goals),
        issues=tuple(acc.issues),
    )


def _covers(statement: MedicationRecord, request: MedicationRecord) -> bool:
    """A statement of the same medication (a coding in common) that had not ended before the
    request was written: the medication card says what became of that prescription. A request
    written after the statement's end is a restart, newer than the card, and counts."""
    if statement.end is not None and request.start is not None and statement.end < request.start:
        return False
    return any(c in statement.codings for c in request.codings)


def normalise_patient(
    resources: Iterable[Any], full_urls: Mapping[str, str] | None = None
) -> PatientRecord:
    """Normalise the resources of exactly one patient (a CDS Hooks prefetch).

    The record's ``issues`` include the issues no patient could be found for, so a caller that
    looks at one patient sees every problem with its input.
    """
    result = normalise(resources, full_urls)
    if not result:
        why = next(
            (f": {i.resource} {i.reason}" for i in result.issues if "Patient" in i.resource), ""
        )
        raise FhirInputError(f"expected exactly one Patient, found none usable{why}")
    if len(result) > 1:
        found = ", ".join(f"Patient/{pid}" for pid in sorted(result)[:5])
        raise FhirInputError(f"expected exactly one Patient, found {len(result)}: {found}")
    (record,) = result.values()
    return record._replace(issues=record.issues + result.issues) if result.issues else record
