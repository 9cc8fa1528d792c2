"""Engines agree on Hypothesis-generated patients placed around thresholds and window edges.

The seeded population exercises typical data; these patients sit exactly where rules are
easiest to get wrong: values at and next to thresholds, dates on and next to window edges,
bounds such as '>90', stopped and restarted medication, resolved diagnoses, Goals, and deaths
on, before and after the reference date.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dateutil.relativedelta import relativedelta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.engines.test_agreement import library, on_duckdb, per_patient
from engine.cases import case_resources
from fhir_adapter.normalise import normalise_patient
from rules.schema import CasePatient

AS_OF = dt.date(2026, 6, 1)
EDGES = [relativedelta(days=0), relativedelta(days=1), relativedelta(days=14), relativedelta(days=15),
         relativedelta(days=28), relativedelta(days=29), relativedelta(months=3), relativedelta(months=6),
         relativedelta(months=12), relativedelta(months=12, days=1), relativedelta(months=24),
         relativedelta(months=24, days=1), relativedelta(years=5), relativedelta(years=12)]  # fmt: skip
LABS = {
    "npu:NPU27300": ("mmol/mol", [47, 48, 53, 54, 58, 59, 64, 65, 70, 71, 75, 76]),
    "npu:NPU03835": ("%", [6.5, 7.0, 7.5, 8.0, 9.0]),
    "npu:DNK35302": ("mL/min/1.73m2", [14, 29, 30, 31, 44, 45, 59, 60, ">90", "<15"]),
    "npu:NPU01568": ("mmol/L", [1.3, 1.4, 1.5, 1.7, 1.8, 2.5, 2.6, 3.0]),
    "npu:NPU19661": ("mg/g", [29, 30, 299, 300]),
    "npu:NPU04998": ("umol/L", [80, 104, 105, 130, 200]),
    "npu:NPU03230": ("mmol/L", [3.4, 4.5, 5.5, 6.1]),
}
CONDITIONS = [
    "icpc2:T90",
    "icpc2:K86",
    "icpc2:K76",
    "icpc2:R95",
    "icpc2:P70",
    "icd10:N18",
    "icpc2:R96",
]
DRUGS = ["atc:A10BA02", "atc:M01AE01", "atc:C09AA05", "atc:C03CA01", "atc:B01AC06", "atc:A02BC01",
         "atc:N05BA01", "atc:N05CF01", "atc:N02AA01", "atc:N05AH04", "atc:C10AA05", "atc:R03BA02",
         "atc:R03AC13", "atc:A10BB12", "atc:H02AB06"]  # fmt: skip


def day(edge: relativedelta, later: bool) -> str:
    moved = AS_OF - edge
    return (moved + dt.timedelta(days=1) if later else moved).isoformat()


@st.composite
def patients(draw: st.DrawFn) -> dict[str, Any]:
    edges = st.sampled_from(EDGES)
    observations = []
    for _ in range(draw(st.integers(0, 8))):
        code = draw(st.sampled_from(sorted(LABS)))
        unit, values = LABS[code]
        observations.append(
            {
                "code": code,
                "value": draw(st.sampled_from(values)),
                "unit": unit,
                "date": day(draw(edges), draw(st.booleans())),
                "status": draw(st.sampled_from(["final", "final", "final", "entered-in-error"])),
            }
        )
    if draw(st.booleans()):
        systolic = draw(st.sampled_from([119, 120, 130, 131, 135, 136, 145, 146]))
        observations.append(
            {
                "code": "loinc:85354-9",
                "date": day(draw(edges), draw(st.booleans())),
                "components": [
                    {
                        "code": "loinc:8480-6",
                        "value": systolic,
                        "unit": "mm[Hg]",
                        "date": AS_OF.isoformat(),
                    },
                    {
                        "code": "loinc:8462-4",
                        "value": 80,
                        "unit": "mm[Hg]",
                        "date": AS_OF.isoformat(),
                    },
                ],
            }
        )
    conditions = [
        {
            "code": draw(st.sampled_from(CONDITIONS)),
            "onset": day(draw(edges), draw(st.booleans())),
            "clinical_status": draw(st.sampled_from(["active", "active", "resolved"])),
            **({"abatement": day(draw(edges), draw(st.booleans()))} if draw(st.booleans()) else {}),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    medications = []
    for _ in range(draw(st.integers(0, 4))):
        medication: dict[str, Any] = {
            "code": draw(st.sampled_from(DRUGS)),
            "start": day(draw(edges), draw(st.booleans())),
            "status": draw(st.sampled_from(["active", "active", "completed", "stopped"])),
        }
        if draw(st.booleans()):
            medication["end"] = day(draw(st.sampled_from(EDGES[:8])), draw(st.booleans()))
        medications.append(medication)
    goals = []
    if draw(st.booleans()):
        goals.append(
            {
                "measure": "npu:NPU27300",
                "value": draw(st.sampled_from([53, 58, 64, 70])),
                "unit": "mmol/mol",
            }
        )
    age = draw(st.sampled_from([17, 18, 30, 64, 65, 66, 79, 80, 84, 85, 90]))
    birth = AS_OF - relativedelta(years=age, days=draw(st.sampled_from([0, 1, -1])))
    died = [False, False, False, False, True, AS_OF, AS_OF - dt.timedelta(days=1), AS_OF + dt.timedelta(days=1)]  # fmt: skip
    return {
        "birth_date": birth.isoformat(),
        "deceased": draw(st.sampled_from(died)),
        "sex": draw(st.sampled_from(["male", "female"])),
        "observations": observations,
        "conditions": conditions,
        "medications": medications,
        "goals": goals,
    }


@settings(
    max_examples=1,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(patients(), min_size=40, max_size=40))
def test_engines_agree_on_patients_at_the_edges(specs: list[dict[str, Any]]) -> None:
    records = []
    for number, spec in enumerate(specs):
        resources = case_resources(CasePatient.model_validate(spec))
        record = normalise_patient(resources)
        records.append(record._replace(id=f"g{number}"))
    guidelines = library()
    assert per_patient(guidelines, records, AS_OF) == on_duckdb(guidelines, records, AS_OF)
