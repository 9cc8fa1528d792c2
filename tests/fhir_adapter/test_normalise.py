"""FHIR R4 JSON -> PatientRecord: status rules, values, references, and bad input."""

from __future__ import annotations

import copy
import gzip
import random
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fhir_adapter.normalise import (
    FhirInputError,
    OrganizationRecord,
    ResourceList,
    ResourceRecords,
    _common_observation,
    _general_records,
    normalise,
    normalise_patient,
    read_resources,
    resource_codings,
    resource_records,
)
from fhir_adapter.records import Issue, PatientRecord
from tests.support.shared_data import SYNTHEA, shared_data

FIXTURES = Path(__file__).parent / "fixtures"
CPR = "0101011234"  # obviously fake: the CPR identifier of the Danish fixture patient

NPU = "http://npu-terminology.org"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"


def load(name: str) -> ResourceList:
    return read_resources((FIXTURES / name).read_bytes())


def patient(pid: str = "p1", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **fields}


def observation(rid: str = "o1", **fields: Any) -> dict[str, Any]:
    """A final HbA1c of 53 mmol/mol for Patient/p1, with ``fields`` replacing or adding parts."""
    resource = {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": NPU, "code": "NPU27300"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01",
        "valueQuantity": {"value": 53, "unit": "mmol/mol"},
    }
    resource.update(fields)
    return {key: value for key, value in resource.items() if value is not None}


def medication(rtype: str, rid: str, **fields: Any) -> dict[str, Any]:
    """A metformin MedicationStatement or MedicationRequest for Patient/p1."""
    return {
        "resourceType": rtype,
        "id": rid,
        "status": "active",
        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "A10BA02"}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def one(*resources: dict[str, Any]) -> PatientRecord:
    """Normalise Patient/p1 plus ``resources``."""
    return normalise_patient([patient(), *resources])


def reasons(record: PatientRecord) -> dict[str, str]:
    return {issue.resource: issue.reason for issue in record.issues}


# --- the Danish fixture -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def danish() -> PatientRecord:
    return normalise_patient(load("dk_patient_bundle.json"))


def test_danish_patient_demographics_and_practice_ydernummer(danish: PatientRecord) -> None:
    assert danish[:4] == ("p1", date(1950, 1, 1), "female", "012345")
    assert danish.issues == ()


def test_danish_observations_are_canonical_and_sorted(danish: PatientRecord) -> None:
    rows = [
        (o.resource[12:], o.codings[0][1], o.date, o.value, o.unit) for o in danish.observations
    ]
    assert rows == [
        ("hba1c-old-uri", "NPU03835", date(2019, 5, 2), 58.0, "mmol/mol"),  # 7.5 % via old URI
        ("smoking", "72166-2", date(2023, 11, 20), None, None),  # coded result still counts
        ("bp", "8462-4", date(2024, 2, 10), 88.0, "mm[Hg]"),
        ("bp", "8480-6", date(2024, 2, 10), 142.0, "mm[Hg]"),
        ("creatinine", "NPU04998", date(2024, 3, 1), 71.0, "umol/L"),
        ("egfr", "DNK35302", date(2024, 3, 1), 90.0, "mL/min/1.73m2"),
        ("hba1c-new", "NPU27300", date(2024, 3, 1), 61.0, "mmol/mol"),  # 23:30+01:00 stays 1 Mar
        ("uacr", "NPU19661", date(2024, 3, 1), pytest.approx(22.1), "mg/g"),
    ]


def test_egfr_above_90_keeps_its_comparator(danish: PatientRecord) -> None:
    (egfr,) = [o for o in danish.observations if o.resource == "Observation/egfr"]
    assert (egfr.value, egfr.comparator, egfr.status) == (90.0, ">", "corrected")


def test_danish_conditions(danish: PatientRecord) -> None:
    rows = [
        (c.resource[10:], c.codings, c.onset, c.abatement, c.clinical_status, c.recorded)
        for c in danish.conditions
    ]
    assert rows == [
        # no clinicalStatus, and only a recordedDate: recorded is not onset
        ("t2d-sks", (("icd10", "E119"),), None, None, "active", date(2015, 6, 12)),
        ("t2d-icpc", (("icpc2", "T90"),), date(2015, 1, 1), None, "active", None),
        ("cystitis", (("icpc2", "U71"),), date(2023, 9, 1), date(2023, 9, 10), "resolved", None),
    ]  # the refuted hypertension is gone


def test_danish_medications_from_statements_and_an_uncovered_request(
    danish: PatientRecord,
) -> None:
    rows = [
        (m.resource.split("/")[1], m.codings, m.display, m.start, m.end, m.status)
        for m in danish.medications
    ]
    assert rows == [
        ("metformin", (("atc", "A10BA02"),), "Metformin 500 mg", date(2016, 1, 15), None, "active"),
        ("statin", (("atc", "C10AA05"),), "atorvastatin", date(2020, 4, 1), None, "active"),
        (
            "nsaid",
            (("atc", "M01AE01"),),
            "ibuprofen",
            date(2023, 1, 1),
            date(2023, 1, 14),
            "stopped",
        ),
        ("ramipril-request", (("atc", "C09AA05"),), None, date(2024, 1, 1), None, "active"),
        ("insulin-asserted", (("atc", "A10AE04"),), None, date(2024, 3, 5), None, "intended"),
    ]  # not-taken dropped; the ramipril request used: no statement of ramipril covers it


def test_danish_goal_targets(danish: PatientRecord) -> None:
    rows = [(g.resource, g.measure, g.value, g.unit, g.start) for g in danish.goals]
    assert rows == [
        ("Goal/targets", (("loinc", "8480-6"),), 135.0, "mm[Hg]", date(2024, 1, 10)),
        ("Goal/targets", (("npu", "NPU27300"),), 58.0, "mmol/mol", date(2024, 1, 10)),
    ]


def test_cpr_number_never_appears_in_issues() -> None:
    bad = patient(
        identifier=[{"system": "urn:oid:1.2.208.176.1.2", "value": CPR}],
        birthDate=CPR,
        gender=CPR,
        generalPractitioner=CPR,
    )
    conditional = observation(
        subject={"reference": f"Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"}
    )
    result = normalise([bad, conditional])
    assert len(result["p1"].issues) == 3
    assert result.issues == (
        Issue("Observation/o1", "subject (a conditional reference) does not resolve to a Patient"),
    )
    assert CPR not in repr(result["p1"])


@pytest.mark.parametrize(
    "reference",
    [CPR, f"{CPR[:6]}-{CPR[6:]}", f"urn:oid:1.2.208.176.1.2|{CPR}", f"Patient/{CPR}/"],
)
def test_a_subject_written_as_a_cpr_number_is_not_quoted(reference: str) -> None:
    """Found by QA: only conditional references were kept out of the messages, so a subject
    that is the CPR number itself (not a ``Type/id``) reached issues.ndjson word for word."""
    result = normalise([patient(), observation(subject={"reference": reference})])
    (issue,) = result.issues
    assert issue.resource == "Observation/o1"
    assert "does not resolve to a Patient" in issue.reason
    assert CPR not in issue.reason and CPR[6:] not in issue.reason


# --- Synthea-style transaction Bundle: urn:uuid references, MedicationRequest fallback ---------


def test_urn_uuid_references_resolve_through_full_urls() -> None:
    record = normalise_patient(load("transaction_urn_uuid.json"))
    assert record[:4] == (
        "6c8e8a3e-0000-4000-8000-000000000001",
        date(1961, 7, 1),
        "male",
        "054321",
    )
    assert [(o.codings[0][1], o.value, o.unit) for o in record.observations] == [
        ("4548-4", 64.0, "mmol/mol"),  # 8.0 %
        ("2160-0", pytest.approx(106.08), "umol/L"),  # 1.2 mg/dL
        ("8462-4", 81.0, "mm[Hg]"),
        ("8480-6", 128.0, "mm[Hg]"),
    ]
    assert record.conditions[0].codings == (("icd10", "E119"),)
    assert record.issues == ()


def test_medication_request_fallback_status_rules_and_validity_end() -> None:
    record = normalise_patient(load("transaction_urn_uuid.json"))
    rows = [(m.codings[0][1], m.display, m.start, m.end, m.status) for m in record.medications]
    assert rows == [
        ("316672", "Simvastatin 10 MG", date(2015, 3, 1), None, "stopped"),
        ("860975", "metformin 500 MG", date(2020, 10, 1), date(2021, 10, 1), "active"),
    ]  # cancelled and draft requests dropped; urn:uuid Medication resolved


def test_without_full_urls_urn_uuid_subjects_are_reported_not_guessed() -> None:
    resources = list(load("transaction_urn_uuid.json"))  # a plain list loses the fullUrl map
    result = normalise(resources)
    assert result["6c8e8a3e-0000-4000-8000-000000000001"].observations == ()
    assert all("does not resolve to a Patient" in issue.reason for issue in result.issues)
    assert len(result.issues) == 8


def test_full_urls_can_be_passed_explicitly() -> None:
    resources = load("transaction_urn_uuid.json")
    record = normalise_patient(list(resources), resources.full_urls)
    assert len(record.observations) == 4


# --- Observation rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        ("final", True),
        ("amended", True),
        ("corrected", True),
        ("preliminary", False),
        ("registered", False),
        ("cancelled", False),
        ("entered-in-error", False),
        ("unknown", False),
    ],
)
def test_observation_status(status: str, kept: bool) -> None:
    record = one(observation(status=status))
    assert len(record.observations) == int(kept)
    assert record.issues == ()


def test_observation_invalid_status_is_an_issue() -> None:
    record = one(observation(status="done"), observation("o2", status=None))
    assert reasons(record) == {
        "Observation/o1": "status 'done' is not a valid status",
        "Observation/o2": "has no status",
    }


@pytest.mark.parametrize(
    ("text", "value", "comparator", "unit"),
    [
        (">90", 90.0, ">", "mL/min/1.73m2"),
        ("<5", 5.0, "<", "mL/min/1.73m2"),
        (">= 60", 60.0, ">=", "mL/min/1.73m2"),
        ("57,5", 57.5, None, "mL/min/1.73m2"),
    ],
)
def test_value_string_with_comparator(
    text: str, value: float, comparator: str | None, unit: str
) -> None:
    egfr = {"coding": [{"system": LOINC, "code": "62238-1"}]}
    quantity = observation(code=egfr, valueQuantity=None, valueString=f"{text} mL/min/1.73m2")
    (record,) = one(quantity).observations
    assert (record.value, record.comparator, record.unit) == (value, comparator, unit)


def test_value_string_of_unknown_analyte_needs_no_unit_and_text_is_non_numeric() -> None:
    code = {"coding": [{"system": LOINC, "code": "5767-9"}]}
    record = one(
        observation("a", code=code, valueQuantity=None, valueString="<5"),
        observation("b", code=code, valueQuantity=None, valueString="positive"),
    )
    assert [(o.value, o.comparator, o.unit) for o in record.observations] == [
        (5.0, "<", None),
        (None, None, None),
    ]


def test_value_string_number_without_unit_for_a_known_analyte_is_an_issue() -> None:
    record = one(observation(valueQuantity=None, valueString=">90"))
    assert record.observations == ()
    assert reasons(record) == {"Observation/o1": "HbA1c value has no unit (expected mmol/mol)"}


@pytest.mark.parametrize(("text", "comparator"), [(">90", ">"), ("<15", "<"), ("27", None)])
def test_an_egfr_as_bare_text_is_read_in_its_only_unit(text: str, comparator: str | None) -> None:
    """DOMAIN.md: eGFR may arrive as the text ">90"; a bare "<15" was dropped as unitless."""
    egfr = {"coding": [{"system": NPU, "code": "DNK35302"}]}
    (record,) = one(observation(code=egfr, valueQuantity=None, valueString=text)).observations
    assert (record.comparator, record.unit) == (comparator, "mL/min/1.73m2")


def test_value_integer_and_absent_value() -> None:
    code = {"coding": [{"system": LOINC, "code": "72514-3"}]}
    record = one(
        observation("a", code=code, valueQuantity=None, valueInteger=4),
        observation("b", valueQuantity=None, dataAbsentReason={"text": "haemolysed"}),
    )
    assert [(o.resource, o.value, o.unit) for o in record.observations] == [
        ("Observation/a", 4.0, None),
        ("Observation/b", None, None),
    ]


def test_hba1c_percent_and_creatinine_mg_per_dl_are_converted() -> None:
    creatinine = {"coding": [{"system": LOINC, "code": "2160-0"}]}
    record = one(
        observation("a", valueQuantity={"value": 6.5, "unit": "%"}),
        observation("b", code=creatinine, valueQuantity={"value": 0.9, "code": "mg/dL"}),
    )
    assert [(o.value, o.unit) for o in record.observations] == [
        (48.0, "mmol/mol"),
        (pytest.approx(79.56), "umol/L"),
    ]


def test_ucum_code_wins_over_display_unit() -> None:
    quantity = {
        "value": 7.0,
        "unit": "mmol/mol",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    (record,) = one(observation(valueQuantity=quantity)).observations
    assert (record.value, record.unit) == (53.0, "mmol/mol")


def test_missing_or_unconvertible_unit_is_an_issue_and_the_rest_is_kept() -> None:
    record = one(
        observation("no-unit", valueQuantity={"value": 53}),
        observation("bad-unit", valueQuantity={"value": 53, "unit": "mg/dL"}),
        observation("good"),
    )
    assert [o.resource for o in record.observations] == ["Observation/good"]
    assert reasons(record) == {
        "Observation/no-unit": "HbA1c value has no unit (expected mmol/mol)",
        "Observation/bad-unit": "HbA1c unit 'mg/dL' cannot be converted to mmol/mol",
    }


@pytest.mark.parametrize(
    ("fields", "day"),
    [
        ({"effectiveDateTime": "2024-03-01T00:30:00+02:00"}, date(2024, 3, 1)),
        ({"effectiveDateTime": "2024-03"}, date(2024, 3, 1)),
        ({"effectivePeriod": {"start": "2024-02-10", "end": "2024-02-11"}}, date(2024, 2, 10)),
        ({"effectivePeriod": {"end": "2024-02-11"}}, date(2024, 2, 11)),
        ({"effectiveInstant": "2024-02-12T10:00:00Z"}, date(2024, 2, 12)),
        ({"issued": "2024-02-13T10:00:00.123+01:00"}, date(2024, 2, 13)),
        ({"effectivePeriod": {}, "issued": "2024-02-14"}, date(2024, 2, 14)),
    ],
)
def test_observation_date(fields: dict[str, Any], day: date) -> None:
    resource = observation(**{"effectiveDateTime": None, **fields})
    assert one(resource).observations[0].date == day


def test_observation_without_any_date_is_an_issue() -> None:
    record = one(observation(effectiveDateTime=None))
    assert reasons(record) == {"Observation/o1": "has no date (effective[x] or issued)"}


def test_blood_pressure_panel_yields_one_record_per_component() -> None:
    def component(code: str, value: Any, **extra: Any) -> dict[str, Any]:
        quantity = {"value": value, "unit": "mmHg"}
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": quantity,
            **extra,
        }

    panel = observation(
        "bp",
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        valueQuantity=None,
        effectiveDateTime=None,
        effectivePeriod={"start": "2024-05-01T08:00:00+02:00"},
        component=[
            component("8480-6", 138),
            component("8462-4", 84),
            {"code": {"coding": [{"system": LOINC, "code": "8478-0"}]}, "valueString": "irregular"},
        ],
    )
    record = one(panel)
    assert [(o.resource, o.codings, o.date, o.value) for o in record.observations] == [
        ("Observation/bp", (("loinc", "8462-4"),), date(2024, 5, 1), 84.0),
        ("Observation/bp", (("loinc", "8480-6"),), date(2024, 5, 1), 138.0),
    ]
    assert record.issues == ()


def test_a_bad_component_is_an_issue_and_the_other_component_is_kept() -> None:
    panel = observation(
        "bp",
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        valueQuantity=None,
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 138, "unit": "mmHg"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": "84"},
            },
        ],
    )
    record = one(panel)
    assert [o.codings[0][1] for o in record.observations] == ["8480-6"]
    assert reasons(record) == {"Observation/bp": "component: valueQuantity.value is not a number"}


def test_panel_without_numeric_components_is_an_issue() -> None:
    panel = observation(valueQuantity=None, component=[{"code": {"text": "x"}}])
    assert reasons(one(panel)) == {"Observation/o1": "has components but none with a numeric value"}


# --- Medication rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        ("active", True),
        ("completed", True),
        ("intended", True),
        ("stopped", True),
        ("on-hold", True),
        ("entered-in-error", False),
        ("not-taken", False),
        ("unknown", False),
    ],
)
def test_medication_statement_status(status: str, kept: bool) -> None:
    record = one(medication("MedicationStatement", "s1", status=status))
    assert [m.status for m in record.medications] == ([status] if kept else [])


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        ("active", True),
        ("on-hold", True),
        ("completed", True),
        ("stopped", True),
        ("cancelled", False),
        ("entered-in-error", False),
        ("draft", False),
        ("unknown", False),
    ],
)
def test_medication_request_status(status: str, kept: bool) -> None:
    record = one(medication("MedicationRequest", "r1", status=status, authoredOn="2024-01-02"))
    assert [m.status for m in record.medications] == ([status] if kept else [])


PARACETAMOL = {"coding": [{"system": ATC, "code": "N02BE01"}]}


def test_a_request_is_ignored_when_a_statement_of_the_same_medication_is_kept() -> None:
    stopped = medication("MedicationStatement", "s1", status="stopped")
    request = medication("MedicationRequest", "r1")
    assert [m.resource for m in one(stopped, request).medications] == ["MedicationStatement/s1"]
    assert [m.resource for m in one(request).medications] == ["MedicationRequest/r1"]


def test_a_request_written_after_the_statement_ended_is_a_restart() -> None:
    """Found by QA: metformin stopped on the medication card in 2025 and prescribed again in
    September 2026 was hidden by the old statement, and eGFR 25 gave no card."""
    ended = {"start": "2020-01-01", "end": "2025-06-01"}
    stopped = medication("MedicationStatement", "s1", status="stopped", effectivePeriod=ended)
    restart = medication("MedicationRequest", "r1", authoredOn="2026-09-01")
    before = medication("MedicationRequest", "r0", authoredOn="2025-05-01")
    used = [m.resource for m in one(stopped, restart, before).medications]
    assert used == ["MedicationStatement/s1", "MedicationRequest/r1"]  # r0: the card covers it
    same_day = medication("MedicationRequest", "r2", authoredOn="2025-06-01")
    assert "MedicationRequest/r2" not in [m.resource for m in one(stopped, same_day).medications]


@pytest.mark.parametrize(
    "statement",
    [
        medication("MedicationStatement", "s1", status="entered-in-error"),
        medication("MedicationStatement", "s1", status="not-taken"),
        medication(
            "MedicationStatement",
            "s1",
            status="completed",
            medicationCodeableConcept=PARACETAMOL,
            effectivePeriod={"start": "2019-01-01", "end": "2019-02-01"},
        ),
    ],
    ids=["entered-in-error", "not-taken", "another-medication"],
)
def test_a_statement_of_nothing_or_of_another_medication_leaves_the_request(
    statement: dict[str, Any],
) -> None:
    """Found by QA: any statement hid every request, so an over-the-counter paracetamol
    statement from 2019, or one entered in error, hid an active metformin prescription, and
    the patient with eGFR 25 got no "stop metformin" card."""
    request = medication("MedicationRequest", "r1", authoredOn="2026-01-02")
    used = [m.resource for m in one(statement, request).medications]
    assert "MedicationRequest/r1" in used


def test_statement_dates() -> None:
    record = one(
        medication("MedicationStatement", "a", effectiveDateTime="2024-01-02T10:00:00Z"),
        medication("MedicationStatement", "b", effectivePeriod={"start": "2023", "end": "2023-06"}),
        medication("MedicationStatement", "c", dateAsserted="2022-05-05"),
        medication("MedicationStatement", "d"),
    )
    assert [(m.resource[20:], m.start, m.end) for m in record.medications] == [
        ("d", None, None),
        ("c", date(2022, 5, 5), None),
        ("b", date(2023, 1, 1), date(2023, 6, 1)),
        ("a", date(2024, 1, 2), None),
    ]


# --- MedicationRequest: in use for its supply, not its validity (decision 0009) --------------

UCUM = "http://unitsofmeasure.org"


def supplied(value: Any, code: str | None = "d", **dispense: Any) -> dict[str, Any]:
    """A dispenseRequest whose expectedSupplyDuration is ``value`` ``code`` (UCUM)."""
    return {"expectedSupplyDuration": {"value": value, "system": UCUM, "code": code}, **dispense}


def request_period(
    dispense: dict[str, Any], status: str = "active", **fields: Any
) -> tuple[date | None, date | None]:
    fields.setdefault("authoredOn", "2026-01-15")
    request = medication("MedicationRequest", "r1", status=status, dispenseRequest=dispense)
    (record,) = one({**request, **fields}).medications
    return record.start, record.end


def test_a_prescription_is_in_use_for_its_supply_not_while_it_may_be_dispensed() -> None:
    """Found by QA: a 20-tablet tramadol prescription valid two years counted as two years of
    use (an opioid for more than 6 months), a stopped one valid to 2028 as in use to 2028, and
    twelve monthly zopiclone renewals as twelve single days that never joined."""
    tramadol, zopiclone = normalise(load("medication_request_supply.json")).values()
    assert [(m.start, m.end, m.status) for m in tramadol.medications] == [
        (date(2026, 1, 15), date(2026, 1, 24), "active"),  # 10 days' supply, valid to 2028
        (date(2026, 3, 1), None, "stopped"),  # valid to 2028, no supply duration
    ]
    periods = [(m.start, m.end) for m in zopiclone.medications]
    assert len(periods) == 12
    assert periods[0] == (date(2025, 11, 15), date(2025, 12, 14))  # one calendar month
    assert all(
        end + timedelta(days=1) == following for (_, end), (following, _) in pairwise(periods)
    )
    assert periods[-1] == (date(2026, 10, 15), date(2026, 11, 14))


@pytest.mark.parametrize(
    ("dispense", "end"),
    [
        (supplied(30), date(2026, 2, 13)),  # 15 January and 29 days after it
        (supplied(30, numberOfRepeatsAllowed=2), date(2026, 4, 14)),  # three dispenses
        (supplied(4, "wk"), date(2026, 2, 11)),
        (supplied(1, "mo"), date(2026, 2, 14)),  # a calendar month
        (supplied(3, "mo", numberOfRepeatsAllowed=3), date(2027, 1, 14)),
        (supplied(1, "a"), date(2027, 1, 14)),
        (supplied(0.5, "mo"), date(2026, 1, 30)),  # 15.2 days: part of a day is a day
        (supplied(36, "h"), date(2026, 1, 16)),
        (supplied(1e300, "a"), date.max),
        (supplied(5, numberOfRepeatsAllowed=10**400), date.max),
        ({"expectedSupplyDuration": {"value": 10, "unit": "dage"}}, date(2026, 1, 24)),
        ({"expectedSupplyDuration": {"value": 2, "unit": "Months"}}, date(2026, 3, 14)),
        (  # 12 dispenses of 30 days, the last one no later than the validity's end
            supplied(30, numberOfRepeatsAllowed=11, validityPeriod={"end": "2026-03-31"}),
            date(2026, 4, 29),
        ),
        (supplied(30, validityPeriod={"end": "2028-01-15"}), date(2026, 2, 13)),
    ],
)
def test_supply_duration_times_dispenses(dispense: dict[str, Any], end: date) -> None:
    assert request_period(dispense) == (date(2026, 1, 15), end)


@pytest.mark.parametrize(
    ("status", "end"), [("active", date(2028, 1, 15)), ("completed", None), ("stopped", None)]
)
def test_without_a_supply_duration_only_an_active_request_lasts(
    status: str, end: date | None
) -> None:
    """Until it may no longer be dispensed, by its status; a completed or stopped request
    cannot be placed in time (the engine counts its start day)."""
    valid = {"validityPeriod": {"start": "2026-01-15", "end": "2028-01-15"}}
    assert request_period(valid, status) == (date(2026, 1, 15), end)
    assert request_period({}, status) == (date(2026, 1, 15), None)


def test_a_stopped_request_is_not_in_use_for_the_rest_of_its_supply() -> None:
    """Found by a GP's QA pass: an ACE inhibitor stopped for a creatinine rise (90 days'
    supply) still got 'creatinine rose: stop the RAS agent'. FHIR R4: a stopped request was
    halted before all of it was used, on a day R4 does not record: its start day only, as
    without a supply; a completed one was used, for its supply."""
    assert request_period(supplied(90), "stopped") == (date(2026, 1, 15), None)
    assert request_period(supplied(90), "completed") == (date(2026, 1, 15), date(2026, 4, 14))


def test_without_authored_on_the_supply_begins_with_the_validity() -> None:
    dispense = supplied(30, validityPeriod={"start": "2026-02-01", "end": "2028-02-01"})
    assert request_period(dispense, authoredOn=None) == (date(2026, 2, 1), date(2026, 3, 2))
    assert request_period(supplied(30), authoredOn=None) == (None, None)


@pytest.mark.parametrize(
    ("dispense", "reason"),
    [
        (
            {"expectedSupplyDuration": {"value": 20, "unit": "tabletter"}},
            "unit 'tabletter' is not a unit of time",
        ),
        ({"expectedSupplyDuration": {"value": 20}}, "has no unit"),
        (supplied(0), "is not a positive length of time"),
        (supplied("30"), "value is not a number"),
        (supplied(30, numberOfRepeatsAllowed=-1), "numberOfRepeatsAllowed is not a whole"),
        (supplied(30, numberOfRepeatsAllowed=True), "numberOfRepeatsAllowed is not a whole"),
        ({"expectedSupplyDuration": "30 d"}, "expectedSupplyDuration is not an object"),
    ],
)
def test_an_unreadable_supply_is_reported_and_the_prescription_still_counts(
    dispense: dict[str, Any], reason: str
) -> None:
    request = medication("MedicationRequest", "r1", authoredOn="2026-01-15")
    record = one({**request, "dispenseRequest": dispense})
    assert [(m.start, m.end) for m in record.medications] == [(date(2026, 1, 15), None)]
    (issue,) = record.issues
    assert reason in issue.reason and issue.reason.endswith("read as no supply duration")


def test_medication_references() -> None:
    contained = {
        "resourceType": "Medication",
        "id": "m",
        "code": {"coding": [{"system": ATC, "code": "N02AA01"}], "text": "morfin"},
    }
    shared = {
        "resourceType": "Medication",
        "id": "shared",
        "code": {"coding": [{"system": ATC, "code": "M01AE01", "display": "ibuprofen"}]},
    }
    record = one(
        medication(
            "MedicationStatement",
            "contained",
            medicationCodeableConcept=None,
            contained=[contained],
            medicationReference={"reference": "#m"},
        ),
        medication(
            "MedicationStatement",
            "relative",
            medicationCodeableConcept=None,
            medicationReference={"reference": "Medication/shared"},
        ),
        medication(
            "MedicationStatement",
            "absolute",
            medicationCodeableConcept=None,
            medicationReference={
                "reference": "https://fhir.example.dk/Medication/shared/_history/2"
            },
        ),
        medication(
            "MedicationStatement",
            "dangling",
            medicationCodeableConcept=None,
            medicationReference={"reference": "Medication/elsewhere"},
        ),
        medication(
            "MedicationStatement",
            "no-contained",
            medicationCodeableConcept=None,
            medicationReference={"reference": "#gone"},
        ),
        shared,
    )
    assert {m.resource[20:]: (m.codings[0][1], m.display) for m in record.medications} == {
        "contained": ("N02AA01", "morfin"),
        "relative": ("M01AE01", "ibuprofen"),
        "absolute": ("M01AE01", "ibuprofen"),
    }
    assert reasons(record) == {
        "MedicationStatement/dangling": "medicationReference 'Medication/elsewhere' does not resolve to a Medication",
        "MedicationStatement/no-contained": "medicationReference '#gone' does not resolve to a Medication",
    }


# --- Condition rules --------------------------------------------------------------------------


def condition(rid: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "code": {"coding": [{"system": "urn:oid:1.2.208.176.2.31", "code": "T90"}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def status_concept(code: str) -> dict[str, Any]:
    return {"coding": [{"code": code}]}


@pytest.mark.parametrize(
    ("verification", "kept"),
    [
        ("confirmed", True),
        ("unconfirmed", False),  # a register counts diagnoses, not suspicions
        ("provisional", False),
        ("differential", False),
        ("refuted", False),
        ("entered-in-error", False),
    ],
)
def test_condition_verification_status(verification: str, kept: bool) -> None:
    record = one(condition("c", verificationStatus=status_concept(verification)))
    assert len(record.conditions) == int(kept)


def test_condition_clinical_status_onset_and_abatement() -> None:
    record = one(
        condition("a", recordedDate="2020-02-02"),
        condition(
            "b",
            clinicalStatus=status_concept("resolved"),
            onsetPeriod={"start": "2019-01-01"},
            abatementPeriod={"start": "2019-03-01", "end": "2019-04-01"},
        ),
        condition("c", onsetAge={"value": 40, "unit": "a"}, recordedDate="2021-01-01"),
        condition("d", clinicalStatus=status_concept("cured")),
    )
    rows = [
        (c.resource, c.onset, c.abatement, c.clinical_status, c.recorded) for c in record.conditions
    ]
    assert rows == [
        ("Condition/a", None, None, "active", date(2020, 2, 2)),
        ("Condition/c", None, None, "active", date(2021, 1, 1)),
        ("Condition/b", date(2019, 1, 1), date(2019, 4, 1), "resolved", None),
    ]
    assert reasons(record) == {
        "Condition/d": "clinicalStatus 'cured' is not a valid clinical status"
    }


def test_sks_and_icd10_diagnoses_get_the_same_coding() -> None:
    record = one(
        condition("sks", code={"coding": [{"system": "urn:oid:1.2.208.176.2.4", "code": "DE119"}]}),
        condition(
            "icd", code={"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]}
        ),
    )
    assert {c.codings for c in record.conditions} == {(("icd10", "E119"),)}


def test_duplicate_codings_collapse() -> None:
    code = {
        "coding": [
            {"system": NPU, "code": "NPU27300"},
            {"system": "urn:oid:1.2.208.176.2.1", "code": "npu27300"},
            {"system": LOINC, "code": "59261-8"},
            {"system": LOINC},  # no code: ignored
        ]
    }
    (record,) = one(observation(code=code)).observations
    assert record.codings == (("npu", "NPU27300"), ("loinc", "59261-8"))


# --- Goals ------------------------------------------------------------------------------------


def goal(rid: str, *targets: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "id": rid,
        "lifecycleStatus": "active",
        "description": {"text": "target"},
        "subject": {"reference": "Patient/p1"},
        "target": list(targets),
        **fields,
    }


HBA1C_MEASURE = {"coding": [{"system": NPU, "code": "NPU27300"}]}


def test_goal_targets_are_converted_and_bounds_checked() -> None:
    record = one(
        goal(
            "percent",
            {"measure": HBA1C_MEASURE, "detailQuantity": {"value": 7.0, "unit": "%"}},
            statusDate="2024-02-01",
        ),
        goal(
            "lower",
            {
                "measure": HBA1C_MEASURE,
                "detailQuantity": {"value": 40, "comparator": ">=", "unit": "mmol/mol"},
            },
        ),
        goal(
            "low-only",
            {"measure": HBA1C_MEASURE, "detailRange": {"low": {"value": 40, "unit": "mmol/mol"}}},
        ),
        goal("no-unit", {"measure": HBA1C_MEASURE, "detailQuantity": {"value": 58}}),
        goal("descriptive", {"detailString": "walk daily"}),
        goal("no-target", target=None),
    )
    assert [(g.resource, g.value, g.unit, g.start) for g in record.goals] == [
        ("Goal/percent", 53.0, "mmol/mol", date(2024, 2, 1))
    ]
    assert reasons(record) == {
        "Goal/lower": "target is a lower bound; only upper-bound targets are used",
        "Goal/low-only": "target has a measure but no detailQuantity or detailRange.high",
        "Goal/no-unit": "HbA1c value has no unit (expected mmol/mol)",
    }


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        ("active", True),
        ("accepted", True),
        ("proposed", False),
        ("planned", False),
        ("on-hold", False),
        ("completed", False),
        ("cancelled", False),
        ("entered-in-error", False),
        ("rejected", False),
    ],
)
def test_goal_lifecycle_status(status: str, kept: bool) -> None:
    target = {"measure": HBA1C_MEASURE, "detailQuantity": {"value": 58, "unit": "mmol/mol"}}
    record = one(goal("g", target, lifecycleStatus=status))
    assert len(record.goals) == int(kept)


# --- Patient ----------------------------------------------------------------------------------


def test_patient_practice_variants() -> None:
    yder = {"system": "urn:oid:1.2.208.176.1.4", "value": "099999"}
    by_identifier = patient("a", generalPractitioner=[{"type": "Organization", "identifier": yder}])
    by_reference = patient("b", generalPractitioner=[{"reference": "Organization/unknown"}])
    nothing = patient("c", birthDate="1970")
    result = normalise([by_identifier, by_reference, nothing])
    assert [(p.id, p.practice, p.birth_date) for p in result.values()] == [
        ("a", "099999", None),
        ("b", "Organization/unknown", None),
        ("c", None, date(1970, 1, 1)),
    ]


def test_a_practice_is_never_a_reference_that_may_hold_a_cpr_number() -> None:
    """Found by QA: a generalPractitioner given as a conditional reference (or as a bare CPR
    number) became the practice as written, CPR number and all: a list file name, a
    MeasureReport reporter, an id in indicators-shared.csv and the ingest's warning."""
    conditional = f"Practitioner?identifier=urn:oid:1.2.208.176.1.2|{CPR}"
    by_search = patient("a", generalPractitioner=[{"reference": conditional}])
    by_number = patient("b", generalPractitioner=[{"reference": CPR}])
    second = patient(
        "c",
        generalPractitioner=[{"reference": conditional}, {"reference": "Organization/unknown"}],
    )
    result = normalise([by_search, by_number, second])
    assert [(p.id, p.practice) for p in result.values()] == [
        ("a", None),
        ("b", None),
        ("c", "Organization/unknown"),
    ]
    assert [i.reason for i in result["a"].issues + result["b"].issues] == [
        "generalPractitioner (a conditional reference) names no practice",
        "generalPractitioner (a value that may hold a CPR number) names no practice",
    ]
    assert CPR not in repr(result)


def test_patient_deceased_variants() -> None:
    result = normalise(
        [
            patient("alive"),
            patient("not-dead", deceasedBoolean=False),
            patient("dated", deceasedDateTime="2025-03-01T23:30:00+01:00"),
            patient("year", deceasedDateTime="2024"),
            patient("undated", deceasedBoolean=True),
            patient("garbled", deceasedDateTime="190101-0123"),
            patient("odd", deceasedBoolean="yes"),
        ]
    )
    assert {p.id: (p.deceased, p.deceased_on) for p in result.values()} == {
        "alive": (False, None),
        "not-dead": (False, None),
        "dated": (True, date(2025, 3, 1)),  # the date as written, no time-zone shift
        "year": (True, date(2024, 1, 1)),
        "undated": (True, None),
        "garbled": (True, None),
        "odd": (False, None),
    }
    reasons = {i.resource: i.reason for p in result.values() for i in p.issues}
    assert reasons == {
        "Patient/garbled": "deceasedDateTime is not a valid date: taken as dead on an unknown date",
        "Patient/odd": "deceasedBoolean is not true or false: taken as alive",
    }  # never the value itself: it could be a CPR number


def test_normalise_patient_needs_exactly_one_patient() -> None:
    with pytest.raises(FhirInputError, match="found none usable"):
        normalise_patient([observation()])
    with pytest.raises(FhirInputError, match="Patient #0 has no id"):
        normalise_patient([{"resourceType": "Patient"}])
    with pytest.raises(FhirInputError, match="found 2: Patient/a, Patient/b"):
        normalise_patient([patient("a"), patient("b")])


def test_duplicates_are_reported_and_the_first_copy_used() -> None:
    record = normalise_patient([patient(), patient(), observation(), observation(status="amended")])
    assert [o.status for o in record.observations] == ["final"]
    assert [issue.resource for issue in record.issues] == ["Observation/o1", "Patient/p1"]


# --- several patients, orphans, determinism ---------------------------------------------------


def test_normalise_groups_by_patient_and_keeps_orphans_visible() -> None:
    other = observation("o2", subject={"reference": "Patient/p2"})
    stranger = observation("o3", subject={"reference": "Patient/nobody"})
    result = normalise([patient(), patient("p2"), observation(), other, stranger, "junk"])
    assert sorted(result) == ["p1", "p2"]
    assert [o.resource for o in result["p2"].observations] == ["Observation/o2"]
    assert result.issues == (
        Issue("resource #5", "is not a JSON object"),
        Issue("Observation/o3", "refers to Patient/nobody, which is not in the input"),
    )


def test_normalise_patient_includes_orphan_issues() -> None:
    record = normalise_patient([patient(), observation(subject=None)])
    assert record.issues == (Issue("Observation/o1", "has no subject"),)


def test_records_do_not_depend_on_input_order(danish: PatientRecord) -> None:
    resources = list(load("dk_patient_bundle.json"))
    random.Random(7).shuffle(resources)
    assert normalise_patient(resources) == danish


# --- malformed resources ----------------------------------------------------------------------


def test_malformed_resources_are_reported_and_the_rest_kept() -> None:
    bad = [
        "not an object",
        {"id": "x"},
        observation("code-is-text", code="NPU27300"),
        observation("coding-is-text", code={"coding": ["NPU27300"]}),
        observation("code-is-number", code={"coding": [{"system": NPU, "code": 27300}]}),
        observation("no-code", code=None),
        observation("text-only-code", code={"text": "HbA1c"}),
        observation("value-is-text", valueQuantity={"value": "53", "unit": "mmol/mol"}),
        observation("value-is-bool", valueQuantity={"value": True, "unit": "mmol/mol"}),
        observation("quantity-is-list", valueQuantity=[53]),
        observation(
            "bad-comparator", valueQuantity={"value": 5, "comparator": "~", "unit": "mmol/mol"}
        ),
        observation("bad-date", effectiveDateTime="01-03-2024"),
        observation("impossible-date", effectiveDateTime="2024-02-30"),
        observation("date-is-number", effectiveDateTime=20240301),
        observation("status-is-list", status=["final"]),
        observation("subject-is-text", subject="Patient/p1"),
        observation("subject-not-patient", subject={"reference": "Group/g1"}),
        observation("components-not-list", component={"code": {}}),
        {**observation(), "id": 17},
        condition("clinical-status-is-text", clinicalStatus="active"),
        medication("MedicationStatement", "no-medication", medicationCodeableConcept=None),
        medication("MedicationStatement", "period-is-text", effectivePeriod="2024"),
        goal("targets-not-list", target={"measure": HBA1C_MEASURE}),
        goal("target-is-text", "HbA1c < 53"),
        observation("value-too-big", valueQuantity={"value": 10**400, "unit": "mmol/mol"}),
        observation("unit-is-number", valueQuantity={"value": 53, "unit": 53}),
        observation("string-not-text", valueQuantity=None, valueString=53),
        observation("integer-is-float", valueQuantity=None, valueInteger=53.5),
        observation("integer-too-big", valueQuantity=None, valueInteger=10**400),
        condition("status-coding-is-text", clinicalStatus={"coding": ["active"]}),
        medication(
            "MedicationStatement",
            "reference-without-url",
            medicationCodeableConcept=None,
            medicationReference={"display": "Metformin"},
        ),
        goal("target-without-value", {"measure": HBA1C_MEASURE, "detailQuantity": {"unit": "%"}}),
        goal("value-without-measure", {"detailQuantity": {"value": 53, "unit": "mmol/mol"}}),
    ]
    good = observation("good")
    result = normalise([patient(), *bad, good])
    record = result["p1"]
    assert [o.resource for o in record.observations] == ["Observation/good"]
    assert record.medications == record.conditions == record.goals == ()
    issues = {issue.resource: issue.reason for issue in (*record.issues, *result.issues)}
    assert issues == {
        "resource #1": "is not a JSON object",
        "resource #2": "has no resourceType",
        "Observation/code-is-text": "code is not an object",
        "Observation/coding-is-text": "code.coding has an entry that is not an object",
        "Observation/code-is-number": "code.coding has a system or code that is not a string",
        "Observation/no-code": "has no code",
        "Observation/text-only-code": "code has no coding",
        "Observation/value-is-text": "valueQuantity.value is not a number",
        "Observation/value-is-bool": "valueQuantity.value is not a number",
        "Observation/quantity-is-list": "valueQuantity is not an object",
        "Observation/bad-comparator": "valueQuantity.comparator is not one of <, <=, >=, >",
        "Observation/bad-date": "effectiveDateTime is not a valid date",
        "Observation/impossible-date": "effectiveDateTime is not a valid date",
        "Observation/date-is-number": "effectiveDateTime is not a valid date",
        "Observation/status-is-list": "status is not a string",
        "Observation/subject-is-text": "subject is not an object",
        "Observation/subject-not-patient": "subject 'Group/g1' does not resolve to a Patient",
        "Observation/components-not-list": "component is not a list",
        "Observation #19": "id is not a string",
        "Condition/clinical-status-is-text": "clinicalStatus is not an object",
        "MedicationStatement/no-medication": "has no medicationCodeableConcept or medicationReference",
        "MedicationStatement/period-is-text": "effectivePeriod is not an object",
        "Goal/targets-not-list": "target is not a list",
        "Goal/target-is-text": "a target is not an object",
        "Observation/value-too-big": "valueQuantity.value is not a number",
        "Observation/unit-is-number": "valueQuantity has a unit or code that is not a string",
        "Observation/string-not-text": "valueString is not a string",
        "Observation/integer-is-float": "valueInteger is not an integer",
        "Observation/integer-too-big": "valueInteger is not a number",
        "Condition/status-coding-is-text": "clinicalStatus.coding has an entry that is not an object",
        "MedicationStatement/reference-without-url": "medicationReference has no literal reference",
        "Goal/target-without-value": "target has no value",
        "Goal/value-without-measure": "target has a value but no measure",
    }


def keys_and_strings(value: Any, keys: set[str], strings: set[str]) -> None:
    if isinstance(value, dict):
        keys.update(value)
        for item in value.values():
            keys_and_strings(item, keys, strings)
    elif isinstance(value, list):
        for item in value:
            keys_and_strings(item, keys, strings)
    elif isinstance(value, str):
        strings.add(value)


FIELDS: set[str] = {"valueString", "valueInteger", "effectiveInstant", "issued", "abatementPeriod"}
PLAUSIBLE: set[str] = {">90", "2024-13", "#m", "Medication/m", "urn:uuid:x"}
for name in ("dk_patient_bundle.json", "transaction_urn_uuid.json"):
    keys_and_strings(orjson.loads((FIXTURES / name).read_bytes()), FIELDS, PLAUSIBLE)
TYPES = sorted({"Bundle", *(r["resourceType"] for r in load("dk_patient_bundle.json"))})
SKELETONS = [
    observation(),
    condition("c"),
    medication("MedicationStatement", "s"),
    medication("MedicationRequest", "r"),
    goal("g", {"measure": HBA1C_MEASURE, "detailQuantity": {"value": 53, "unit": "mmol/mol"}}),
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(sorted(PLAUSIBLE)),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(sorted(FIELDS)) | st.text(max_size=8), children, max_size=3
        )
    ),
    max_leaves=10,
)


@st.composite
def garbage_resource(draw: st.DrawFn) -> Any:
    """Plain junk, or a handled resource type whose fields (some from a valid skeleton) hold
    random JSON, FHIR-ish keys nested at any depth."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    resource: dict[str, Any] = copy.deepcopy(draw(st.sampled_from([{}, *SKELETONS])))
    resource["resourceType"] = draw(st.sampled_from(TYPES))
    resource.update(draw(st.dictionaries(st.sampled_from(sorted(FIELDS)), json_values, max_size=4)))
    return resource


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage_resource(), max_size=5))
def test_normalise_never_raises_on_garbage(resources: list[Any]) -> None:
    result = normalise([patient(), *resources])
    issues = [*result.issues, *(i for p in result.values() for i in p.issues)]
    # The last-resort handler is for bugs: every bad input must get a reason in plain words.
    assert not [i for i in issues if i.reason.startswith("could not be read")]


# --- the usual Observation (fast path) -------------------------------------------------------
#
# resource_records and normalise read Observations of the usual shape through a fast path
# (_common_observation). For exactly the Observations it reads it must give what the general path
# gives, and decline every other: never a record where the general path has an Issue.

BP_PANEL = observation(
    "bp",
    valueQuantity=None,
    component=[
        {
            "code": {"coding": [{"system": LOINC, "code": code, "display": name}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "code": "mm[Hg]"},
        }
        for code, name, value in (("8480-6", "Systolic", 141), ("8462-4", "Diastolic", 88))
    ],
)
USUAL = [observation(), BP_PANEL]

near_values = st.one_of(
    st.sampled_from([0, 53, 7.1, -1, 2**53, 2**53 + 1, 2**64, 10**30, 1e308, True, "53", None]),
    json_values,
)
quantities = st.fixed_dictionaries(
    {},
    optional={
        "value": near_values,
        "comparator": st.sampled_from(["<", "<=", ">=", ">", "=", "", None, 1]),
        "unit": st.sampled_from(["mmol/mol", "%", "mmHg", "", "furlongs", None, 5]),
        "code": st.sampled_from(["mmol/mol", "%", "mm[Hg]", "", "kg", None, 5]),
        "system": st.sampled_from(["http://unitsofmeasure.org", "urn:other", None, 1]),
        "id": near_values,
    },
)
codings = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "system": st.sampled_from([NPU, LOINC, "urn:x", "", None, 3]),
            "code": st.sampled_from(["NPU27300", "8480-6", "8462-4", " npu27300 ", "", None, 3]),
            "display": near_values,
        },
    ),
    max_size=3,
)
concepts = st.one_of(st.fixed_dictionaries({"coding": codings}), near_values)
components = st.lists(
    st.one_of(
        st.fixed_dictionaries({}, optional={"code": concepts, "valueQuantity": quantities}),
        st.fixed_dictionaries({"valueQuantity": st.none(), "valueString": st.text(max_size=3)}),
        near_values,
    ),
    max_size=3,
)


def either(*plausible: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(plausible), near_values)


ELEMENTS = {
    "id": either("o2", ""),
    "status": either("final", "amended", "corrected", "preliminary", "entered-in-error"),
    "code": concepts,
    "subject": st.fixed_dictionaries(
        {
            "reference": either(
                "Patient/p2",
                "https://fhir.example.dk/Patient/p1/_history/2",
                "Group/g1",
                "urn:uuid:p1",
                "#p1",
                "Patient/",
            )
        }
    )
    | near_values,
    "effectiveDateTime": either(
        "2024-03-01T23:30:00+01:00", "2024-13-01", "2024-02-30", "2024-03", "20240301"
    ),
    "valueQuantity": quantities | near_values,
    "component": components | near_values,
    "valueString": either(">90", "7,5 %"),
    "valueInteger": near_values,
    "category": near_values,
    "_status": near_values,
    "valueFoo": near_values,
}
changes = st.lists(st.sampled_from(sorted(ELEMENTS)), max_size=2, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({key: ELEMENTS[key] for key in keys})
)


@st.composite
def near_usual(draw: st.DrawFn) -> dict[str, Any]:
    """A usual Observation with up to two elements replaced or added and one removed."""
    resource = copy.deepcopy(draw(st.sampled_from(USUAL)))
    resource.update(draw(changes))
    for key in draw(st.lists(st.sampled_from(sorted(resource)), max_size=1)):
        if key != "resourceType":
            resource.pop(key, None)
    return resource


@st.composite
def usual_variants(draw: st.DrawFn) -> dict[str, Any]:
    """Observations of the usual shape with other plausible values, units, dates, references."""
    quantity = {
        "value": draw(st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | st.just(-0.0)),
        "unit": draw(st.sampled_from(["mmol/mol", "%", "mmHg", "mmol/L", "g/L", "kg"])),
        **draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "code": st.sampled_from(["mmol/mol", "%", "mm[Hg]", "", "1"]),
                    "system": st.sampled_from(["http://unitsofmeasure.org", "urn:x"]),
                    "comparator": st.sampled_from(["<", "<=", ">=", ">"]),
                },
            )
        ),
    }
    pairs = [(NPU, "NPU27300"), (NPU, "npu27300"), (LOINC, "4548-4"), (LOINC, "8480-6")]
    coding = draw(st.lists(st.sampled_from([*pairs, ("urn:x", "x")]), min_size=1, max_size=3))
    resource = observation(
        draw(st.sampled_from(["o1", "o-2", "x" * 64])),
        status=draw(st.sampled_from(["final", "amended", "corrected"])),
        code={"coding": [{"system": s, "code": c} for s, c in coding]},
        subject={"reference": draw(st.sampled_from(["Patient/p1", "http://x.dk/Patient/p1"]))},
        effectiveDateTime=draw(st.sampled_from(["2024-03-01", "2024-03-01T00:30:00+01:00"])),
        valueQuantity=quantity,
    )
    if draw(st.booleans()):  # the same value as a panel's component, beside a systolic one
        component = {"code": resource.pop("code"), "valueQuantity": resource.pop("valueQuantity")}
        resource["code"] = BP_PANEL["code"]
        resource["component"] = [component, BP_PANEL["component"][0]]
    return resource


def general(resource: Any) -> ResourceRecords:
    return _general_records(resource, {}, {}, {}, 0)


UNKNOWN = {"coding": [{"system": "urn:x", "code": "x"}]}  # an analyte without a canonical unit


def test_values_too_large_for_a_float_are_issues_on_both_paths() -> None:
    """Found by the test below: an HbA1c of 1.65e307 % overflows when converted to mmol/mol,
    which raised out of the fast path (so out of normalise) and was "could not be read
    (OverflowError)" on the general path."""
    huge = observation(valueQuantity={"value": 1e308, "unit": "%"})
    digits = observation("o2", valueQuantity=None, valueString="9" * 400, code=UNKNOWN)
    record = one(huge, digits)
    assert (record.observations, reasons(record)) == (
        (),
        {
            "Observation/o1": "value 1e+308 is too large to convert to mmol/mol",
            "Observation/o2": "value is too large to be a number",
        },
    )
    assert _common_observation(huge, {}) is None


def test_the_usual_observations_take_the_fast_path() -> None:
    for resource in USUAL:
        assert _common_observation(resource, {}) is not None
        assert resource_records(resource, {}, {}) == general(resource)
    panel = resource_records(BP_PANEL, {}, {})
    assert [o.value for o in panel.observations] == [141.0, 88.0]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_usual() | usual_variants())
def test_the_fast_path_agrees_with_the_general_path(resource: dict[str, Any]) -> None:
    fast = _common_observation(resource, {})
    event("general path" if fast is None else "fast path")
    assert resource_records(resource, {}, {}) == general(resource)


# --- reading ----------------------------------------------------------------------------------


def test_read_bundle_list_single_resource_and_ndjson() -> None:
    one_resource = orjson.dumps(observation())
    as_list = orjson.dumps([patient(), observation()])
    ndjson = b"\n".join([orjson.dumps(patient()), b"", orjson.dumps(observation()), b"  "])
    bundle = orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": patient()}, {"fullUrl": "x"}],
        }
    )
    assert [r["resourceType"] for r in read_resources(one_resource)] == ["Observation"]
    assert len(read_resources(as_list)) == 2
    assert len(read_resources(ndjson.decode())) == 2
    assert len(read_resources(b"\xef\xbb\xbf" + ndjson)) == 2
    assert [r["id"] for r in read_resources(bundle)] == ["p1"]
    assert read_resources("") == []


def test_read_nested_batch_response_bundles_keep_full_urls() -> None:
    inner = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"fullUrl": "urn:uuid:abc", "resource": patient("abc")}],
    }
    outer = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": inner}]}
    resources = read_resources(orjson.dumps(outer))
    assert [r["id"] for r in resources] == ["abc"]
    assert resources.full_urls == {"urn:uuid:abc": "Patient/abc"}


def test_ndjson_bad_line_names_the_line() -> None:
    lines = [orjson.dumps(patient()), b"", orjson.dumps(observation()), b'{"resourceType": "Obs']
    with pytest.raises(FhirInputError, match=r"^NDJSON line 4 is not valid JSON"):
        read_resources(b"\n".join(lines))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<Bundle xmlns='http://hl7.org/fhir'/>", "not valid JSON"),
        (b'{"resourceType": "Patient",', "not valid JSON"),
        (b"42", "got JSON int"),
        (b'"Patient"', "got JSON str"),
        (b'{"resourceType": "Bundle", "entry": {}}', "Bundle.entry is not a list"),
    ],
)
def test_input_that_is_not_fhir_json_raises(data: bytes, message: str) -> None:
    with pytest.raises(FhirInputError, match=message):
        read_resources(data)


def test_malformed_bundle_entries_are_passed_on_to_be_reported() -> None:
    data = orjson.dumps({"resourceType": "Bundle", "entry": [7, {"resource": [1]}]})
    result = normalise(read_resources(data))
    assert result.issues == (
        Issue("resource #0", "is not a JSON object"),
        Issue("resource #1", "is not a JSON object"),
    )


# --- Synthea: data shaped by someone else -----------------------------------------------------

OBSERVATION_DROPPED = {"entered-in-error", "cancelled", "preliminary", "registered", "unknown"}
REQUEST_DROPPED = {"cancelled", "entered-in-error", "draft", "unknown"}
VERIFICATION_DROPPED = {"refuted", "entered-in-error", "unconfirmed", "provisional", "differential"}
SYNTHEA_FILES = sorted(SYNTHEA.glob("*.json.gz")) if SYNTHEA.is_dir() else []


def accounted_for(resource: dict[str, Any], produced: set[str], reported: set[str]) -> bool:
    """True if the resource became a record, an Issue, or was dropped by a documented rule."""
    rid = f"{resource['resourceType']}/{resource['id']}"
    if rid in produced or rid in reported:
        return True
    match resource["resourceType"]:
        case "Observation":
            return resource["status"] in OBSERVATION_DROPPED
        case "Condition":
            codes = [
                c.get("code") for c in resource.get("verificationStatus", {}).get("coding", [])
            ]
            return bool(VERIFICATION_DROPPED & set(codes))
        case "MedicationRequest":
            return resource["status"] in REQUEST_DROPPED
        case "Goal":
            targets = [t for t in resource.get("target", []) if "measure" in t]
            return resource["lifecycleStatus"] not in {"active", "accepted"} or not targets
    return resource["resourceType"] == "Patient"


@pytest.mark.parametrize(
    "path",
    SYNTHEA_FILES or [SYNTHEA],  # without the data: one case that skips, or fails in CI
    ids=lambda path: path.name.split("_")[-1][:8],
)
def test_synthea_patient(path: Path) -> None:
    shared_data(SYNTHEA)
    resources = read_resources(gzip.decompress(path.read_bytes()))
    result = normalise(resources)
    assert len(result) == 1
    assert result.issues == ()
    (record,) = result.values()
    assert record.observations
    produced = {r.resource for part in record[4:8] for r in part}
    reported = {issue.resource for issue in record.issues}
    assert [r["id"] for r in resources if not accounted_for(r, produced, reported)] == []
    units = {o.codings: o.unit for o in record.observations if o.value is not None}
    assert units.get((("loinc", "4548-4"),), "mmol/mol") == "mmol/mol"
    assert units.get((("loinc", "33914-3"),), "mL/min/1.73m2") == "mL/min/1.73m2"


# --- one resource at a time (bulk ingest) -----------------------------------------------------


def test_resource_records_of_an_observation_and_an_orphan() -> None:
    (record,) = normalise_patient([patient(), observation()]).observations
    found = resource_records(observation(), {}, {})
    assert found == ResourceRecords("Observation/o1", "p1", observations=(record,))
    orphan = resource_records(observation(subject=None), {}, {})
    assert orphan == ResourceRecords(
        "Observation/o1", None, issues=(Issue("Observation/o1", "has no subject"),)
    )
    assert resource_records("junk", {}, {}, index=3).issues == (
        Issue("resource #3", "is not a JSON object"),
    )


def test_resource_records_marks_requests_and_every_statement() -> None:
    request = resource_records(medication("MedicationRequest", "r1"), {}, {})
    assert (request.medication_source, [m.resource for m in request.medications]) == (
        "request",
        ["MedicationRequest/r1"],
    )
    # A statement dropped by its status yields no record: it covers no request.
    dropped = resource_records(
        medication("MedicationStatement", "s1", status="entered-in-error"), {}, {}
    )
    assert (dropped.patient, dropped.medication_source, dropped.medications) == (
        "p1",
        "statement",
        (),
    )


def test_resource_records_of_organizations_and_patients() -> None:
    practice = {
        "resourceType": "Organization",
        "id": "prac",
        "identifier": [{"system": "urn:oid:1.2.208.176.1.4", "value": "012345"}],
        "partOf": {"reference": "https://fhir.example.dk/Organization/cluster/_history/3"},
    }
    organization = resource_records(practice, {}, {}).organization
    assert organization == OrganizationRecord("Organization/prac", "012345", "Organization/cluster")
    listed = patient(generalPractitioner=[{"reference": "Organization/prac"}])
    found = resource_records(listed, {}, {}, {"Organization/prac": organization})
    assert (found.patient, found.patient_record, found.issues) == (
        "p1",
        PatientRecord("p1", None, None, "012345"),
        (),
    )
    # Without the Organization the practice is the reference, as in normalise.
    assert resource_records(listed, {}, {}).patient_record.practice == "Organization/prac"


def test_normalise_is_resource_records_assembled(danish: PatientRecord) -> None:
    resources = load("dk_patient_bundle.json")
    found = [resource_records(r, resources.full_urls, {}, index=i) for i, r in enumerate(resources)]
    observations = sorted(
        (o for f in found for o in f.observations), key=lambda o: (o.date, o.resource, o.codings)
    )
    assert tuple(observations) == danish.observations
    assert {f.resource for f in found if f.medication_source == "request"} <= {
        m.resource for f in found for m in f.medications
    }


def test_the_usual_observation_and_the_general_path_agree() -> None:
    """A panel with a value of its own beside its components is read by the general path."""
    bp = {"coding": [{"system": LOINC, "code": "8480-6"}]}
    component = {"code": bp, "valueQuantity": {"value": 140, "unit": "mmHg"}}
    panel = observation("bp", valueQuantity=None, component=[component])
    odd = {**panel, "id": "odd", "valueCodeableConcept": {"text": "x"}}
    record = one(panel, odd)
    assert [(o.resource, o.value) for o in record.observations] == [
        ("Observation/bp", 140.0),
        ("Observation/odd", 140.0),
        ("Observation/odd", None),  # the panel's own (coded) value, HbA1c-coded here
    ]


def test_resource_codings_reads_what_a_resource_is_about_whatever_else_is_wrong() -> None:
    npu = {"system": "http://npu-terminology.org", "code": "NPU27300"}
    atc = {"system": "http://www.whocc.no/atc", "code": "A10BA02"}
    panel = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}},
            "junk",
            {"code": {"coding": "junk"}},
        ],
    }
    assert resource_codings(panel) == (("loinc", "85354-9"), ("loinc", "8480-6"))
    assert resource_codings({"resourceType": "Observation", "code": {"coding": [npu]}}) == (
        ("npu", "NPU27300"),
    )
    statement = {
        "resourceType": "MedicationStatement",
        "medicationCodeableConcept": {"coding": [atc]},
    }
    assert resource_codings(statement) == (("atc", "A10BA02"),)
    goal = {"resourceType": "Goal", "target": [{"measure": {"coding": [npu]}}, 5]}
    assert resource_codings(goal) == (("npu", "NPU27300"),)
    for garbage in [
        None,
        [],
        {"resourceType": "Condition", "code": "E11"},
        {"code": {"coding": [5]}},
    ]:
        assert resource_codings(garbage) == ()
