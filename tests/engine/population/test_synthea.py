"""100 Synthea patients (US codes: SNOMED CT, LOINC, RxNorm) ingested and swept.

Synthea is data nobody on the project wrote, coded the way an independent US quality-measure
engine expects. The store is made by ``vejviser ingest`` from the Bundle files as they are; each
register and lab fact below is counted again here straight from the raw JSON (plain ``json``, no
project code), so a value set that misses a Synthea code, a unit that does not convert or a
reference that does not resolve shows up as a difference. Then the per-patient engine, fed each
Bundle through the normalisation as a CDS Hooks call would be, must agree with the sweep patient
by patient.

Dates: the data end on 2021-03-25. AS_OF_DATA is a week later, when the labs are recent;
AS_OF_ALL is a date on which every guideline is in force (hypertension-bp only from 2024-04-09),
when no lab is younger than 12 months. A sweep takes several seconds, so the tests of the second
date are in the slow suite (``scripts/test.sh``, CI).

17 of the Synthea patients died (Patient.deceasedDateTime): from the day they died they are in
no register, so the expected registers below leave them out from that day on.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from dateutil.relativedelta import relativedelta
from typer.testing import CliRunner

from conformance.engines.test_agreement import assert_same, library, per_patient, swept
from engine.population.ingest import ISSUES, QUARANTINE
from engine.population.store import load_store
from fhir_adapter.normalise import normalise_patient, read_resources
from service.cli import app
from tests.support.shared_data import SYNTHEA, shared_data

AS_OF_DATA = dt.date(2021, 4, 1)
AS_OF_ALL = dt.date(2024, 6, 1)

# The SNOMED CT diagnoses Synthea writes for each register, read off the data (display as there).
DIABETES = {"44054006"}  # Diabetes (15777000 Prediabetes, 80394007 Hyperglycemia are not)
HYPERTENSION = {"38341003"}  # Hypertension
IHD = {"53741008", "22298006", "399211009"}  # Coronary Heart Disease, MI, History of MI
COPD = {"87433001"}  # Pulmonary emphysema
DEMENTIA = {"26929004"}  # Alzheimer's disease
# LOINC codes of the labs (Synthea 2019 conventions, shared/data/synthea-r4-100/README.md).
HBA1C, SYSTOLIC, LDL, UACR, EGFR = "4548-4", "8480-6", "18262-6", "14959-1", "33914-3"


@dataclass
class Raw:
    """What the test reads of one Synthea Bundle, without any project code."""

    id: str
    birth: dt.date
    died: dt.date | None
    conditions: list[tuple[str, str, dt.date, dt.date | None]] = field(default_factory=list)
    labs: list[tuple[str, dt.date, float | None, str | None]] = field(default_factory=list)
    requests: list[tuple[str, str, str, dt.date]] = field(default_factory=list)
    entries: int = 0


def day(value: str) -> dt.date:
    return dt.date.fromisoformat(value[:10])


def read_raw(path: Path) -> Raw:
    entries = json.loads(gzip.decompress(path.read_bytes()))["entry"]
    (patient,) = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient"]
    died = patient.get("deceasedDateTime")
    raw = Raw(patient["id"], day(patient["birthDate"]), died and day(died))
    raw.entries = len(entries)
    for resource in (e["resource"] for e in entries):
        match resource["resourceType"]:
            case "Condition":
                (coding,) = resource["code"]["coding"]
                status = resource["clinicalStatus"]["coding"][0]["code"]
                abated = resource.get("abatementDateTime")
                onset = day(resource["onsetDateTime"])
                raw.conditions.append((coding["code"], status, onset, abated and day(abated)))
            case "Observation":
                parts = [resource, *resource.get("component", [])]
                for part in parts:
                    quantity = part.get("valueQuantity", {})
                    code = part["code"]["coding"][0]["code"]
                    when = day(resource["effectiveDateTime"])
                    raw.labs.append((code, when, quantity.get("value"), quantity.get("unit")))
            case "MedicationRequest":
                (coding,) = resource["medicationCodeableConcept"]["coding"]
                authored = day(resource["authoredOn"])
                raw.requests.append(
                    (coding["code"], coding["display"], resource["status"], authored)
                )
    return raw


@cache
def raw_patients() -> dict[str, Raw]:
    patients = [read_raw(path) for path in sorted(SYNTHEA.glob("*.json.gz"))]
    return {p.id: p for p in patients}


def age(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def diagnosed(
    codes: set[str], on: dt.date, adults: bool = False, include_resolved: bool = False
) -> set[str]:
    """Patients with one of the codes begun by ``on`` and active then (or ever)."""
    found = set()
    for p in raw_patients().values():
        if (adults and age(p.birth, on) < 18) or (p.died is not None and p.died <= on):
            continue
        for code, status, onset, abated in p.conditions:
            if code not in codes or onset > on:
                continue
            if include_resolved or (abated > on if abated else status == "active"):
                found.add(p.id)
    return found


def latest_lab(p: Raw, code: str, on: dt.date, months: int = 12) -> tuple[Any, ...] | None:
    start = on - relativedelta(months=months)
    found = [lab for lab in p.labs if lab[0] == code and start <= lab[1] <= on]
    return max(found, key=lambda lab: lab[1], default=None)


def without_lab(patients: set[str], code: str, on: dt.date, months: int = 12) -> set[str]:
    return {pid for pid in patients if latest_lab(raw_patients()[pid], code, on, months) is None}


def taking(word: str, on: dt.date) -> set[str]:
    """Active, no end date (Synthea writes none): a request whose display names the drug."""
    return {
        p.id
        for p in raw_patients().values()
        for _, display, status, authored in p.requests
        if word in display.lower() and status == "active" and authored <= on
    }


# --- the store and the sweeps -----------------------------------------------------------------


@dataclass
class Swept:
    store: Path
    ingest_output: str
    swept: dict[dt.date, dict[tuple[str, str], tuple]] = field(default_factory=dict)

    def outcomes(self, on: dt.date) -> dict[tuple[str, str], tuple]:
        """Every patient x guideline outcome of the sweep on a date (swept when first asked)."""
        if on not in self.swept:
            with duckdb.connect() as con:
                load_store(con, self.store, library())
                self.swept[on] = swept(con, library(), on)
        return self.swept[on]

    def register(self, guideline: str, on: dt.date) -> set[str]:
        return {p for (p, g), o in self.outcomes(on).items() if g == guideline and o[0]}

    def listed(self, guideline: str, recommendation: str, on: dt.date) -> set[str]:
        return {
            p
            for (p, g), o in self.outcomes(on).items()
            if g == guideline and recommendation in o[1]
        }

    def members(self, guideline: str, indicator: str, membership: str, on: dt.date) -> set[str]:
        return {
            p
            for (p, g), o in self.outcomes(on).items()
            if g == guideline and (indicator, membership) in o[2]
        }


@pytest.fixture(scope="module")
def synthea() -> Path:
    return shared_data(SYNTHEA)


@pytest.fixture(scope="module")
def swept_store(synthea: Path, tmp_path_factory: pytest.TempPathFactory) -> Swept:
    store = tmp_path_factory.mktemp("synthea") / "store"
    result = CliRunner().invoke(app, ["ingest", str(synthea), "--store", str(store)])
    assert result.exit_code == 0, result.output
    return Swept(store, result.output)


def bundles(directory: Path) -> Iterator[Any]:
    for path in sorted(directory.glob("*.json.gz")):
        yield normalise_patient(read_resources(gzip.decompress(path.read_bytes())))


# --- the tests --------------------------------------------------------------------------------


def test_every_resource_of_every_bundle_is_ingested(swept_store: Swept) -> None:
    entries = sum(p.entries for p in raw_patients().values())
    assert (len(raw_patients()), entries) == (100, 15315)
    assert f"100 Bundle file(s), {entries} resource(s)" in swept_store.ingest_output
    assert (swept_store.store / QUARANTINE).read_bytes() == b""
    assert (swept_store.store / ISSUES).read_bytes() == b""
    patients = pq.read_table(swept_store.store / "patients.parquet").column("patient")
    assert sorted(patients.to_pylist()) == sorted(raw_patients())


@pytest.mark.parametrize(
    ("guideline", "codes", "on", "adults", "include_resolved", "size"),
    [
        ("t2d-hba1c", DIABETES, AS_OF_DATA, False, False, 5),
        ("t2d-annual-control", DIABETES, AS_OF_DATA, False, False, 5),
        ("lipids-diabetes", DIABETES, AS_OF_DATA, False, False, 5),
        ("diabetes-hba1c-indicators", DIABETES, AS_OF_DATA, True, False, 5),
        pytest.param(
            "hypertension-bp", HYPERTENSION, AS_OF_ALL, True, False, 19, marks=pytest.mark.slow
        ),
        ("lipids-ihd", IHD, AS_OF_DATA, True, True, 1),
        ("copd-diagnosis", COPD, AS_OF_DATA, False, False, 1),
        pytest.param(
            "copd-inhaled-steroid", COPD, AS_OF_ALL, False, False, 1, marks=pytest.mark.slow
        ),
        ("antipsychotics-dementia", DEMENTIA, AS_OF_DATA, False, False, 3),
    ],
)
def test_registers_are_the_patients_with_the_snomed_diagnosis(
    swept_store: Swept,
    guideline: str,
    codes: set[str],
    on: dt.date,
    adults: bool,
    include_resolved: bool,
    size: int,
) -> None:
    expected = diagnosed(codes, on, adults, include_resolved)
    assert swept_store.register(guideline, on) == expected
    assert len(expected) == size  # the data as published: a changed file changes this


def test_the_dead_are_in_no_register(swept_store: Swept) -> None:
    """11 patients had a register diagnosis before they died: none of them is listed after."""
    dead = {p.id for p in raw_patients().values() if p.died is not None and p.died <= AS_OF_DATA}
    registered = {p for (p, _), o in swept_store.outcomes(AS_OF_DATA).items() if o[0]}
    assert registered and not registered & dead
    codes = DIABETES | HYPERTENSION | IHD | COPD | DEMENTIA
    diagnosed_alive = {
        p.id
        for p in raw_patients().values()
        if p.id in dead and any(c in codes and onset < p.died for c, _, onset, _ in p.conditions)
    }
    assert len(diagnosed_alive) == 11  # the data as published


# Ingredients named in the displays of the data's RxNorm codes -> the value set that must hold
# every such code (RxNorm has no hierarchy here: each clinical drug is listed on its own).
INGREDIENTS = [
    (("metformin",), "metformin"),
    (("simvastatin", "simvistatin", "atorvastatin"), "statins"),  # Synthea spells "Simvistatin"
    (("ibuprofen", "naproxen"), "nsaids"),
    (("oxycodone", "hydrocodone", "meperidine"), "opioids"),
    (("warfarin",), "anticoagulants"),
    (("clopidogrel", "aspirin"), "platelet-inhibitors"),
    (("hydrochlorothiazide", "furosemide"), "diuretics"),
    (("captopril",), "ras-agents"),
    (("fluticasone",), "inhaled-corticosteroids"),
    (("salmeterol",), "long-acting-bronchodilators"),
    (("prednisone",), "systemic-corticosteroids"),
    (("sertraline",), "ssri"),
    (("diazepam",), "benzodiazepines"),
    (("insulin",), "hypoglycaemia-risk-antidiabetics"),
    (("amoxicillin", "penicillin v"), "copd-exacerbation-antibiotics"),
]


@pytest.mark.parametrize(("words", "valueset"), INGREDIENTS)
def test_rxnorm_codes_are_in_the_value_set_of_their_ingredient(
    synthea: Path, words: tuple[str, ...], valueset: str
) -> None:
    codes = {
        (code, display)
        for p in raw_patients().values()
        for code, display, _, _ in p.requests
        if any(word in display.lower() for word in words)
    }
    assert codes, f"no RxNorm code in the data names {words}"
    missing = [
        (c, d) for c, d in sorted(codes) if valueset not in library().index.of(("rxnorm", c))
    ]
    assert missing == []


def test_metformin_register_is_the_active_rxnorm_metformin_requests(swept_store: Swept) -> None:
    on_metformin = taking("metformin", AS_OF_DATA)
    assert len(on_metformin) == 3
    assert swept_store.register("metformin-kidney", AS_OF_DATA) == on_metformin
    assert swept_store.listed("metformin-kidney", "metformin-egfr-missing", AS_OF_DATA) == (
        without_lab(on_metformin, EGFR, AS_OF_DATA)
    )


def test_hba1c_in_percent_counts_in_mmol_per_mol(swept_store: Swept) -> None:
    diabetics = diagnosed(DIABETES, AS_OF_DATA, adults=True)
    ifcc = {}  # mmol/mol by the IFCC-NGSP master equation, rounded half up as labs report
    for pid in diabetics - without_lab(diabetics, HBA1C, AS_OF_DATA):
        _, _, percent, unit = latest_lab(raw_patients()[pid], HBA1C, AS_OF_DATA)
        assert unit == "%"
        ifcc[pid] = math.floor((percent - 2.152) / 0.09148 + 0.5)
    # 7.50 % is 58 mmol/mol, just not above 58; 3.03 % (10) is one of Synthea's implausible values.
    assert sorted(ifcc.values()) == [10, 43, 53, 58]
    guideline, on = "diabetes-hba1c-indicators", AS_OF_DATA
    assert swept_store.members(guideline, "hba1c-measured-12-months", "numerator", on) == set(ifcc)
    for indicator, numerator in [
        ("hba1c-above-58", lambda v: v > 58),
        ("ddd-1f1-hba1c-below-59", lambda v: v < 59),
        ("ddd-1f2-hba1c-75-or-more", lambda v: v >= 75),
    ]:
        expected = {pid for pid, value in ifcc.items() if numerator(value)}
        assert swept_store.members(guideline, indicator, "numerator", on) == expected
        assert swept_store.members(guideline, indicator, "denominator", on) == set(ifcc) - expected
    assert swept_store.listed("t2d-hba1c", "hba1c-missing", on) == diabetics - set(ifcc)


@pytest.mark.parametrize(
    ("recommendation", "code", "months", "size"),
    [("bp-missing", SYSTOLIC, 12, 1), ("ldl-missing", LDL, 12, 1), ("uacr-missing", UACR, 24, 1)],
)
def test_annual_control_sees_the_loinc_labs(
    swept_store: Swept, recommendation: str, code: str, months: int, size: int
) -> None:
    diabetics = diagnosed(DIABETES, AS_OF_DATA)
    missing = without_lab(diabetics, code, AS_OF_DATA, months)
    assert len(missing) == size
    assert swept_store.listed("t2d-annual-control", recommendation, AS_OF_DATA) == missing


@pytest.mark.slow
def test_no_blood_pressure_within_12_months_of_2024(swept_store: Swept) -> None:
    hypertensive = diagnosed(HYPERTENSION, AS_OF_ALL, adults=True)
    assert without_lab(hypertensive, SYSTOLIC, AS_OF_ALL) == hypertensive
    assert swept_store.listed("hypertension-bp", "bp-missing", AS_OF_ALL) == hypertensive


@pytest.mark.parametrize("as_of", [AS_OF_DATA, pytest.param(AS_OF_ALL, marks=pytest.mark.slow)])
def test_the_per_patient_engine_agrees_with_the_sweep(
    synthea: Path, swept_store: Swept, as_of: dt.date
) -> None:
    expected = per_patient(library(), list(bundles(synthea)), as_of)
    assert_same(expected, swept_store.outcomes(as_of))
    registered = sum(v[0] for v in expected.values())  # patient x guideline pairs
    assert registered == {AS_OF_DATA: 34, AS_OF_ALL: 54}[as_of]
