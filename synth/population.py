"""A seeded synthetic Danish general-practice population, written as FHIR Bulk Data NDJSON.

Why: population sweeps, bulk ingest and cluster reports need whole populations (practices in
quality clusters, patients with realistic prevalences, the awkward data real exports contain)
at any size, reproducible from a seed, and with no real person in them. :func:`write_population`
writes one NDJSON file per resource type, as a FHIR Bulk Data ``$export`` does, patient by
patient, so memory stays bounded for millions of patients; a given seed and size always give
byte-identical files, whatever the number of worker processes.

Shape (DK Core conventions, shared/DOMAIN.md §2):

- ``Organization.ndjson``: quality clusters ("klynger"), then practices identified by
  ydernummer (``urn:oid:1.2.208.176.1.4``) whose ``partOf`` points to their cluster.
- ``Patient.ndjson``: adults (18+) with ``generalPractitioner`` pointing to their practice.
- ``Condition``, ``MedicationStatement``, ``Goal``, ``Observation`` from
  :func:`synth.patients.generate_patient` with a :class:`~synth.patients.Profile` drawn here;
  ``MedicationRequest`` for some patients (prescriptions, alongside or instead of statements).

Who the patients are. Every figure is a modelling choice anchored on the source given; age
tables interpolate linearly between the anchor ages, so the overall adult prevalence follows from
the age distribution. Prevalences are of *diagnosed* disease, which is what a GP record holds.

- Age and sex of adults: 10-year bands with approximate sizes in the shape of Statistics
  Denmark's population table (FOLK1A, statistikbanken.dk; not copied from it), checked against
  DST totals of 1,136,063 aged 65+, 263,746 aged 80+ (61 % women) and 44,743 aged 90+ (72 %
  women) on 1 January 2019 (as quoted by egv.dk, "Hvor mange er ældre i Danmark?") and 80+ =
  4.7 % of the population in 2020 (dst.dk, Nyt "59 pct. flere over 80 år i 2030"). Children
  are not generated: the guidelines are for adults. Resulting shares: about 26 % aged 65+,
  7 % aged 80+.
- Type 2 diabetes: about 6 % of adults. Diabetesforeningen, "Diabetes i Danmark"
  (diabetes.dk, 2022 figures): about 310,000 with type 2 diabetes, 56 % men; SDCC /
  videncenterfordiabetes.dk, "Diabetes i tal": 252,516 (4.8 % of the whole population, 2017).
  Rises from < 1 % under 40 to about 15 % at 70-80; men x1.2, women x0.8.
- Hypertension (diagnosed): about 17 % of adults. "Prevalence, awareness, and control of
  arterial hypertension in Denmark", J Am Soc Hypertens 2009;3(1):19-24
  (doi:10.1016/j.jash.2008.08.001): 22 % of adults 20-89 hypertensive by home BP, 72 % of them
  aware. About 40 % of those over 80. At least 60 % of diabetics (a modelling choice: most
  Danish diabetics are treated for blood pressure).
- Ischaemic heart disease: about 3.3 % of adults. Hjerteforeningen, "Fakta om hjerte-kar-sygdom
  i Danmark" (hjerteforeningen.dk/alt-om-dit-hjerte/noegletal): about 156,500 live with it.
  Men x1.45, women x0.6; x1.8 with diabetes, x1.3 with hypertension.
- COPD (diagnosed): about 3 % of adults. Danske Regioner, "Færre danskere bliver
  diagnosticeret med KOL" (regioner.dk, 2022): 3,700 per 100,000 had the diagnosis in 2007,
  falling since; about 430,000 are estimated to have COPD but only 100,000-130,000 are treated
  (liv.dk / Ugeskrift for Læger; Lungeforeningen).
- Dementia (diagnosed): about 4 % of those 65+, rising to about 20 % at 95. Nationalt
  Videnscenter for Demens, "Incidence and prevalence of dementia in Denmark"
  (videnscenterfordemens.dk): 40,275 aged 65+ registered on 1 January 2024 (about 3.3 %), an
  estimated 97,000 with dementia; prevalence 1-2 % at 60-64 to 24-45 % at 90+.
- HbA1c of diabetics (:mod:`synth.patients` with a profile): right-skewed around 53 mmol/mol,
  so that about a third have a latest value above 58 and about 5 % one of 75 or more: inside
  the Danish Diabetes Database standards (DOMAIN.md §4: > 40 % below 59, < 20 % at 75 or more).
  A modelling choice; no national distribution was found to copy.
- Medication follows the conditions (:mod:`synth.patients`' tables: metformin, SGLT2 and GLP-1
  for diabetes, RAS agents and thiazides for hypertension, statins and aspirin for IHD,
  tiotropium for COPD, donepezil for dementia, risperidone for about 20 % of people with
  dementia, matching the ~19 % of people 65+ with dementia on antipsychotics in DOMAIN.md §4),
  plus short courses (pivmecillinam, ibuprofen, diazepam) after acute consultations.
- Individual goals (DOMAIN.md §4): 30 % of diabetics have an HbA1c Goal (64 mmol/mol at 80+ or
  with dementia, 58 at 65+ or with IHD, otherwise 53 or 58: DSAM's individual targets); 20 % of
  hypertensives a systolic Goal (145 at 80+, 130 with diabetes or IHD, otherwise 135: the upper
  ends of the Danish Society of Cardiology's NBV ch. 27 targets).
- Practices (Sundhedsdatastyrelsen, "Beskrivelse af almen praksissektoren i Danmark", 2016:
  about 1,980 practices, 3,500 full-time GPs, 1,600 listed patients per GP, solo practice the
  most common): 1-5 GPs per practice (half are solo), 1,500-3,000 patients per GP, scaled to the
  requested number of patients; with fewer than 500 patients per practice they are spread
  evenly. Clusters (kiap.dk, DOMAIN.md §1: about 30 GPs per cluster): 15-30 practices per cluster,
  scaled to the requested number of practices, at least one each.
- Practices differ, so that clusters have variation to discuss: each has a monitoring intensity
  (0.75-1.25 x the resources per patient) and an HbA1c level for its diabetics (+-2.5 mmol/mol).
- Prescriptions: 10 % of patients on medication also have MedicationRequests (renewals over the
  last year), 5 % have MedicationRequests instead of MedicationStatements (a practice system
  that exports prescriptions only; fhir_adapter uses requests when there is no statement).
- Deaths: an export of a practice system holds the patients who have died too. About 1 % of
  Danish adults die each year (some 55,000-60,000 deaths a year in the 2020s among about 4.7
  million adults: Statistics Denmark, statbank.dk tables DOD and FOLK1A; not age-dependent here,
  a modelling choice), so 2 % of patients have a ``deceasedDateTime`` within the two years before the
  reference date, on or after the day of their last recorded resource. From their own random
  stream: everything else about every patient is as without deaths.

Noise at documented rates (:class:`PopulationNoise`), counted in :class:`PopulationSummary`:
entered-in-error lab results (0.5 %), HbA1c in % (NPU03835, 2 %), eGFR above 90 as ``> 90``
(always), lab results without a unit (0.2 %); and malformed lab Observation lines (0.05 % each):
truncated JSON, wrong JSON types (a value as a Danish decimal string, a valueQuantity as text),
and a missing ``code``. Only final lab results are made malformed or unit-less, so each such
resource gives exactly one fhir_adapter Issue and the others none.
"""

from __future__ import annotations

import bisect
import itertools
import math
import multiprocessing
import os
import random
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from synth.patients import (
    EGFR_CODE,
    UCUM_SYSTEM,
    Noise,
    Profile,
    Resource,
    fake_cpr,
    generate_patient,
    make_practice,
    minimum_resources,
)

RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Observation",
    "Condition",
    "MedicationStatement",
    "MedicationRequest",
    "Goal",
    "Organization",
)
"""One ``<type>.ndjson`` file each, always written (possibly empty)."""

MAX_PRACTICES = 100_000
"""Fake ydernumre are ``9`` and five digits, so at most this many practices."""

EVEN_SPREAD_BELOW = 500
"""Fewer patients per practice than this: spread them evenly instead of by list size."""

CHUNK_SIZE = 500
"""Patients per unit of work; a chunk's lines are held in memory until written."""

_PARALLEL_FROM = 5_000  # fewer patients than this: one process (starting workers costs ~1 s)
_SEED_PREFIX = "vejviser-population"

# (first age, last age, thousands of people, share of women): see the module docstring.
_AGE_BANDS: tuple[tuple[int, int, int, float], ...] = (
    (18, 29, 900, 0.49),
    (30, 39, 740, 0.50),
    (40, 49, 690, 0.50),
    (50, 59, 800, 0.50),
    (60, 69, 700, 0.51),
    (70, 79, 560, 0.53),
    (80, 89, 270, 0.60),
    (90, 99, 47, 0.72),
)
_AGE_WEIGHTS = tuple(sum(band[2] for band in _AGE_BANDS[: i + 1]) for i in range(len(_AGE_BANDS)))

# Diagnosed prevalence at anchor ages (interpolated in between, flat outside): module docstring.
_T2D = ((18, 0.002), (30, 0.006), (40, 0.02), (50, 0.05), (60, 0.10), (70, 0.145), (80, 0.15), (90, 0.11))  # fmt: skip
_HYPERTENSION = ((18, 0.003), (30, 0.014), (40, 0.045), (50, 0.11), (60, 0.215), (70, 0.33), (80, 0.41), (90, 0.43))  # fmt: skip
_IHD = ((35, 0.0), (45, 0.006), (55, 0.022), (65, 0.048), (75, 0.08), (85, 0.105), (95, 0.105))  # fmt: skip
_COPD = ((35, 0.001), (45, 0.006), (55, 0.025), (65, 0.055), (75, 0.085), (85, 0.085), (95, 0.065))  # fmt: skip
_DEMENTIA = ((58, 0.0), (62, 0.002), (67, 0.005), (72, 0.012), (77, 0.028), (82, 0.06), (87, 0.11), (92, 0.16), (97, 0.2))  # fmt: skip

_HBA1C_GOAL_SHARE = 0.3
_SYSTOLIC_GOAL_SHARE = 0.2
_REQUESTS_ONLY = 0.05
_DEATHS_PER_YEAR = 0.01
_DEATH_YEARS = 2
_REQUESTS_TOO = 0.10
_GPS_PER_PRACTICE = ((1, 0.50), (2, 0.25), (3, 0.13), (4, 0.08), (5, 0.04))
_CLUSTER_TOWNS = (
    "Aarhus", "København", "Odense", "Aalborg", "Esbjerg", "Randers", "Kolding", "Horsens",
    "Vejle", "Roskilde", "Herning", "Silkeborg", "Næstved", "Viborg", "Holbæk", "Svendborg",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PopulationNoise:
    """Rates of deliberately awkward data (see the module docstring for what each looks like).

    Lab-result rates are per lab Observation; the structural kinds (``missing_unit`` and the
    malformed ones) only hit final results, so each gives exactly one fhir_adapter Issue.
    """

    entered_in_error: float = 0.005
    hba1c_percent: float = 0.02
    egfr_above_90_as_bound: bool = True
    missing_unit: float = 0.002
    invalid_json: float = 0.0005
    wrong_type: float = 0.0005
    missing_code: float = 0.0005

    def __post_init__(self) -> None:
        structural = self.missing_unit + self.invalid_json + self.wrong_type + self.missing_code
        rates = (self.entered_in_error, self.hba1c_percent, structural)
        if any(not 0 <= rate <= 1 for rate in rates):
            raise ValueError("noise rates must be between 0 and 1 (structural ones in total)")


NOISE_KINDS = ("entered_in_error", "hba1c_percent", "egfr_above_90", "missing_unit")
"""Valid FHIR that a consumer must handle (counted per resource written)."""
MALFORMED_KINDS = ("invalid_json", "wrong_type", "missing_code")
"""Lines that are not valid FHIR R4 (counted per line written)."""


@dataclass(frozen=True)
class PopulationSummary:
    """What :func:`write_population` wrote: files, counts, noise, and how fast.

    Everything but ``seconds`` and ``workers`` is determined by the arguments.
    """

    out_dir: Path
    seed: int
    as_of: date
    patients: int
    practices: int
    clusters: int
    lines: Mapping[str, int]
    """File name -> lines written, malformed lines included."""
    noise: Mapping[str, int]
    """:data:`NOISE_KINDS` -> resources written with it (a resource can have two kinds)."""
    malformed: Mapping[str, int]
    """:data:`MALFORMED_KINDS` -> lines written."""
    conditions: Mapping[str, int]
    """ICPC-2 code -> patients with it on the problem list."""
    goals: Mapping[str, int]
    """``hba1c`` / ``systolic`` -> patients with such an individual Goal."""
    prescriptions: Mapping[str, int]
    """``requests_too`` / ``requests_only`` -> patients with MedicationRequests."""
    ages: Mapping[str, int]
    """Age band (``18-29``...) -> patients."""
    sexes: Mapping[str, int]
    practice_patients: Mapping[str, int]
    """Ydernummer -> patients listed."""
    practice_cluster: Mapping[str, str]
    """Ydernummer -> the id of its cluster Organization."""
    deceased: int = 0
    """Patients with a ``deceasedDateTime`` (all within two years of the reference date)."""
    seconds: float = 0.0
    workers: int = 1

    @property
    def resources(self) -> int:
        """All lines written, malformed ones included."""
        return sum(self.lines.values())

    @property
    def resources_per_second(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    def prevalence(self, code: str) -> float:
        """Share of patients with a chronic condition (ICPC-2 code) on the problem list."""
        return self.conditions.get(code, 0) / self.patients

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a CLI or a run log."""
        return {
            "out_dir": str(self.out_dir),
            "seed": self.seed,
            "as_of": self.as_of.isoformat(),
            "patients": self.patients,
            "practices": self.practices,
            "clusters": self.clusters,
            "resources": self.resources,
            "lines": dict(self.lines),
            "noise": dict(self.noise),
            "malformed": dict(self.malformed),
            "conditions": dict(self.conditions),
            "goals": dict(self.goals),
            "prescriptions": dict(self.prescriptions),
            "ages": dict(self.ages),
            "sexes": dict(self.sexes),
            "deceased": self.deceased,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "resources_per_second": round(self.resources_per_second),
        }

    def report(self) -> str:
        """A few lines for a person: what was written where, prevalences, noise, speed."""
        prevalences = ", ".join(
            f"{code} {100 * self.prevalence(code):.1f} %" for code in sorted(self.conditions)
        )
        files = ", ".join(f"{name} {count:,}" for name, count in self.lines.items())
        noise = ", ".join(f"{k} {v:,}" for k, v in {**self.noise, **self.malformed}.items())
        return "\n".join(
            [
                f"{self.patients:,} patients in {self.practices:,} practice(s) and "
                f"{self.clusters:,} cluster(s) (seed {self.seed}, reference date {self.as_of}) "
                f"-> {self.out_dir}",
                f"lines: {files}",
                f"prevalence: {prevalences}; deceased: {self.deceased:,}",
                f"noise: {noise}",
                f"{self.resources:,} resources in {self.seconds:.1f} s with {self.workers} "
                f"process(es): {self.resources_per_second:,.0f} resources/s",
            ]
        )


# --- the plan: clusters, practices, list sizes ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Practice:
    """What a patient needs of their practice (small: it is sent to every worker process)."""

    first: int  # index of the practice's first patient
    ydernummer: str
    reference: Resource  # {"id", "name"}: what generate_patient refers to
    monitoring: float  # resources per patient, relative to the population's
    hba1c_offset: float  # mmol/mol added to this practice's diabetics' HbA1c


@dataclass(frozen=True, slots=True)
class _Plan:
    patients: int
    practices: tuple[_Practice, ...]
    organizations: tuple[Resource, ...]  # clusters, then practices
    practice_cluster: dict[str, str] = field(default_factory=dict)
    practice_patients: dict[str, int] = field(default_factory=dict)


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, at least one each (largest remainder).

    Needs ``total >= len(weights)``; deterministic for the same inputs.
    """
    count = len(weights)
    spare = total - count  # one each first, the rest by weight
    whole = sum(weights)
    shares = [spare * w / whole for w in weights]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(count), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]


def _even(total: int, count: int) -> list[int]:
    return [total // count + (i < total % count) for i in range(count)]


def _plan(patients: int, practices: int, clusters: int, seed: int) -> _Plan:
    """Clusters, practices and list sizes, drawn from the seed alone (not the patients)."""
    rng = random.Random(f"{_SEED_PREFIX}:{seed}:plan")
    width = max(3, len(str(clusters)))
    cluster_orgs = []
    for number in range(1, clusters + 1):
        cluster_orgs.append(
            {
                "resourceType": "Organization",
                "id": f"klynge-{number:0{width}d}",
                "active": True,
                "type": [{"text": "Kvalitetsklynge i almen praksis"}],
                "name": f"Klynge {rng.choice(_CLUSTER_TOWNS)} {number}",
            }
        )
    per_cluster = _allocate(practices, [rng.uniform(15, 30) for _ in range(clusters)])
    sizes = [rng.choices(*zip(*_GPS_PER_PRACTICE, strict=True))[0] for _ in range(practices)]
    if patients < EVEN_SPREAD_BELOW * practices:
        listed = _even(patients, practices)
    else:
        listed = _allocate(patients, [gps * rng.uniform(1500, 3000) for gps in sizes])
    numbers = rng.sample(range(MAX_PRACTICES), practices)
    plan_practices: list[_Practice] = []
    practice_orgs: list[Resource] = []
    practice_cluster: dict[str, str] = {}
    practice_patients: dict[str, int] = {}
    first = 0
    cluster_index = 0
    left_in_cluster = per_cluster[0]
    for i in range(practices):
        if left_in_cluster == 0:
            cluster_index += 1
            left_in_cluster = per_cluster[cluster_index]
        left_in_cluster -= 1
        cluster = cluster_orgs[cluster_index]
        ydernummer = f"9{numbers[i]:05d}"
        org = make_practice(rng, ydernummer)
        org["partOf"] = {"reference": f"Organization/{cluster['id']}", "display": cluster["name"]}
        practice_orgs.append(org)
        practice_cluster[ydernummer] = cluster["id"]
        practice_patients[ydernummer] = listed[i]
        plan_practices.append(
            _Practice(
                first,
                ydernummer,
                {"id": org["id"], "name": org["name"]},
                rng.uniform(0.75, 1.25),
                rng.gauss(0, 2.5),
            )
        )
        first += listed[i]
    return _Plan(
        patients,
        tuple(plan_practices),
        tuple(cluster_orgs + practice_orgs),
        practice_cluster,
        practice_patients,
    )


# --- one patient ----------------------------------------------------------------------------------


def _interpolate(table: Sequence[tuple[int, float]], age: float) -> float:
    if age <= table[0][0]:
        return table[0][1]
    for (a0, p0), (a1, p1) in itertools.pairwise(table):
        if age <= a1:
            return p0 + (p1 - p0) * (age - a0) / (a1 - a0)
    return table[-1][1]


def _band(age: int) -> str:
    for low, high, _, _ in _AGE_BANDS:
        if low <= age <= high:
            return f"{low}-{high}"
    return f"{_AGE_BANDS[-1][0]}+"


def _draw_profile(rng: random.Random, practice: _Practice) -> Profile:
    """Age, sex, chronic conditions and goals with the prevalences in the module docstring."""
    low, high, _, women = rng.choices(_AGE_BANDS, cum_weights=_AGE_WEIGHTS)[0]
    age = rng.randint(low, high)
    sex = "female" if rng.random() < women else "male"
    male = sex == "male"
    conditions: list[str] = []
    diabetic = rng.random() < _interpolate(_T2D, age) * (1.2 if male else 0.8)
    if diabetic:
        conditions.append("T90")
    hypertension_risk = _interpolate(_HYPERTENSION, age)
    hypertensive = rng.random() < (max(0.6, hypertension_risk) if diabetic else hypertension_risk)
    if hypertensive:
        conditions.append("K86")
    ihd_risk = _interpolate(_IHD, age) * (1.45 if male else 0.6)
    ihd_risk *= (1.8 if diabetic else 1.0) * (1.3 if hypertensive else 1.0)
    ihd = rng.random() < ihd_risk
    if ihd:
        conditions.append("K76")
    if rng.random() < _interpolate(_COPD, age):
        conditions.append("R95")
    dementia = rng.random() < _interpolate(_DEMENTIA, age)
    if dementia:
        conditions.append("P70")
    hba1c_goal = systolic_goal = None
    if diabetic and rng.random() < _HBA1C_GOAL_SHARE:
        if age >= 80 or dementia:
            hba1c_goal = 64
        elif age >= 65 or ihd:
            hba1c_goal = 58
        else:
            hba1c_goal = rng.choice((53, 58))
    if hypertensive and rng.random() < _SYSTOLIC_GOAL_SHARE:
        systolic_goal = 145 if age >= 80 else 130 if (diabetic or ihd) else 135
    return Profile(
        age,
        sex,
        tuple(conditions),
        hba1c_goal=hba1c_goal,
        systolic_goal=systolic_goal,
        hba1c_offset=practice.hba1c_offset,
    )


_CARE = {  # extra resources over three years per chronic condition: (fewest, most)
    "T90": (25, 45),
    "K86": (8, 18),
    "K76": (6, 14),
    "R95": (4, 10),
    "P70": (3, 8),
}


def _resources(rng: random.Random, profile: Profile, practice: _Practice) -> int:
    """How many resources the patient gets: a few visits for the healthy, more with each
    chronic condition, scaled by the practice's monitoring; never fewer than the profile's
    problem list, medication and goals need."""
    if profile.age < 40:
        count = rng.randint(1, 4)
    elif profile.age < 65:
        count = rng.randint(2, 8)
    else:
        count = rng.randint(3, 12)
    for code in profile.conditions:
        count += rng.randint(*_CARE[code])
    count = round(count * practice.monitoring) + 1  # + the Patient
    return max(count, 2, minimum_resources(profile))


def _requests(
    rng: random.Random, pid: str, statements: list[Resource], as_of: date
) -> list[Resource]:
    """Prescriptions behind MedicationStatements: a course is one request; chronic medication
    is renewed every 80-180 days over the last year. Each supply (expectedSupplyDuration) lasts
    until the next renewal; the last one's until the drug was stopped, or, still taken, 3 months
    with 3 repeats. Each is valid (may be dispensed) until the next one, the last until a year
    after it or until the drug was stopped."""
    out: list[Resource] = []
    for statement in statements:
        period = statement["effectivePeriod"]
        start = date.fromisoformat(period["start"])
        end = date.fromisoformat(period["end"]) if "end" in period else None
        chronic = end is None or statement["status"] == "stopped"
        if not chronic:
            dates = [start]
        else:
            last = as_of if end is None else end
            day = max(start, last - timedelta(days=365))
            dates = []
            while day <= last:
                dates.append(day)
                day += timedelta(days=rng.randint(80, 180))
        for i, day in enumerate(dates):
            final = i == len(dates) - 1
            supply: dict[str, Any] = {}
            if not final:
                until, status = dates[i + 1], "completed"
                supply["expectedSupplyDuration"] = _duration((until - day).days, "days", "d")
            elif end is None:
                until, status = day + timedelta(days=365), "active"
                supply["numberOfRepeatsAllowed"] = 3
                supply["expectedSupplyDuration"] = _duration(3, "months", "mo")
            else:
                until = end
                status = "stopped" if chronic else statement["status"]
                supply["expectedSupplyDuration"] = _duration((end - day).days + 1, "days", "d")
            out.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"{pid}-rx{len(out) + 1}",
                    "status": status,
                    "intent": "order",
                    "medicationCodeableConcept": statement["medicationCodeableConcept"],
                    "subject": {"reference": f"Patient/{pid}"},
                    "authoredOn": day.isoformat(),
                    "dosageInstruction": statement["dosage"],
                    "dispenseRequest": {
                        "validityPeriod": {"start": day.isoformat(), "end": until.isoformat()},
                        **supply,
                    },
                }
            )
    return out


def _duration(value: int, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": code}


def _code(resource: Resource) -> str | None:
    return resource.get("code", {}).get("coding", [{}])[0].get("code")


def _structural_noise(rng: random.Random, resource: Resource, noise: PopulationNoise) -> str | None:
    """Maybe break a final lab result; returns the kind of noise applied (the resource is
    changed in place), or ``"invalid_json"`` for the caller to truncate the line."""
    u = rng.random()
    kind = None
    for candidate, rate in (
        ("invalid_json", noise.invalid_json),
        ("wrong_type", noise.wrong_type),
        ("missing_code", noise.missing_code),
        ("missing_unit", noise.missing_unit),
    ):
        if u < rate:
            kind = candidate
            break
        u -= rate
    if kind is None or (kind == "missing_unit" and _code(resource) == EGFR_CODE):
        return None  # eGFR has one unit: a bare value is read (fhir_adapter.units), not noise
    quantity = resource["valueQuantity"]
    if kind == "wrong_type":
        if rng.random() < 0.5:  # text with a Danish decimal comma: "53,0" is not a number
            quantity["value"] = f"{quantity['value']:.1f}".replace(".", ",")
        else:  # the whole quantity as text
            resource["valueQuantity"] = f"{quantity['value']} {quantity.get('unit', '')}".strip()
    elif kind == "missing_code":
        del resource["code"]
    elif kind == "missing_unit":
        for key in ("unit", "system", "code"):
            quantity.pop(key, None)
    return kind


def _death(rng: random.Random, resources: list[Resource], as_of: date) -> date | None:
    """The day a patient died, if they did within :data:`_DEATH_YEARS` of ``as_of``: never
    before a resource of theirs, so no lab result is dated after the death."""
    if rng.random() >= _DEATHS_PER_YEAR * _DEATH_YEARS:
        return None
    window = as_of - timedelta(days=round(365.25 * _DEATH_YEARS))
    last = max((_day_of(r) for r in resources), default=window)
    earliest = min(max(window, last), as_of)
    return earliest + timedelta(days=rng.randint(0, (as_of - earliest).days))


def _day_of(resource: Resource) -> date:
    """The date a resource was recorded on (the fields :mod:`synth.patients` writes)."""
    for key in ("effectiveDateTime", "authoredOn", "dateAsserted", "startDate", "recordedDate"):
        if key in resource:
            return date.fromisoformat(resource[key][:10])
    return date.min


def _patient_lines(
    seed: int,
    index: int,
    practice: _Practice,
    as_of: date,
    noise: PopulationNoise,
    stats: Counter[str],
) -> Iterator[tuple[str, bytes]]:
    """(resource type, NDJSON line) of one patient, from the patient's own random stream."""
    rng = random.Random(f"{_SEED_PREFIX}:{seed}:{index}")
    pid = f"p{index:06d}"
    profile = _draw_profile(rng, practice)
    count = _resources(rng, profile, practice)
    lab_noise = Noise(noise.entered_in_error, noise.hba1c_percent, noise.egfr_above_90_as_bound)
    resources = generate_patient(
        rng, pid, count, as_of, practice=practice.reference, noise=lab_noise, profile=profile
    )
    patient = resources[0]
    cpr = patient["identifier"][0]
    cpr["value"] = fake_cpr(date.fromisoformat(patient["birthDate"]), index)  # unique < 10,000
    died = _death(random.Random(f"{_SEED_PREFIX}:{seed}:{index}:death"), resources, as_of)
    if died is not None:
        patient["deceasedDateTime"] = died.isoformat()
        stats["deceased"] += 1

    statements = [r for r in resources if r["resourceType"] == "MedicationStatement"]
    u = rng.random() if statements else 1.0
    if u < _REQUESTS_ONLY + _REQUESTS_TOO:
        requests = _requests(rng, pid, statements, as_of)
        if u < _REQUESTS_ONLY:
            resources = [r for r in resources if r["resourceType"] != "MedicationStatement"]
            stats["prescriptions:requests_only"] += 1
        else:
            stats["prescriptions:requests_too"] += 1
        resources += requests

    stats[f"age:{_band(profile.age)}"] += 1
    stats[f"sex:{profile.sex}"] += 1
    for code in profile.conditions:
        stats[f"condition:{code}"] += 1
    stats["goal:hba1c"] += int(profile.hba1c_goal is not None)
    stats["goal:systolic"] += int(profile.systolic_goal is not None)

    for resource in resources:
        rtype = resource["resourceType"]
        kind = None
        if rtype == "Observation" and "valueQuantity" in resource:
            if resource["status"] == "entered-in-error":
                stats["noise:entered_in_error"] += 1
            else:
                kind = _structural_noise(rng, resource, noise)
            if kind != "invalid_json":  # counted as written: after any structural noise
                if _code(resource) == "NPU03835":
                    stats["noise:hba1c_percent"] += 1
                quantity = resource["valueQuantity"]
                if type(quantity) is dict and quantity.get("comparator") == ">":
                    stats["noise:egfr_above_90"] += 1
        line = orjson.dumps(resource)
        if kind == "invalid_json":  # an export cut off mid-line (between UTF-8 characters)
            cut = len(line) // 2
            while line[cut] & 0xC0 == 0x80:
                cut -= 1
            line = line[:cut]
        if kind is not None:
            prefix = "malformed" if kind in MALFORMED_KINDS else "noise"
            stats[f"{prefix}:{kind}"] += 1
        stats[f"lines:{rtype}"] += 1
        yield rtype, line


# --- chunks and workers ---------------------------------------------------------------------------

_worker_state: dict[str, Any] = {}


def _init_worker(plan: _Plan, seed: int, as_of: date, noise: PopulationNoise) -> None:
    _worker_state.update(
        plan=plan, firsts=[p.first for p in plan.practices], seed=seed, as_of=as_of, noise=noise
    )


def _chunk(bounds: tuple[int, int]) -> tuple[dict[str, bytes], Counter[str]]:
    """NDJSON bytes per resource type, and the counts, for patients ``start..stop-1``."""
    state = _worker_state
    plan: _Plan = state["plan"]
    firsts: list[int] = state["firsts"]
    lines: dict[str, list[bytes]] = {rtype: [] for rtype in RESOURCE_TYPES}
    stats: Counter[str] = Counter()
    for index in range(*bounds):
        practice = plan.practices[bisect.bisect_right(firsts, index) - 1]
        for rtype, line in _patient_lines(
            state["seed"], index, practice, state["as_of"], state["noise"], stats
        ):
            lines[rtype].append(line)
    out = {rtype: b"".join(line + b"\n" for line in found) for rtype, found in lines.items()}
    return out, stats


def _chunks(patients: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, patients, size):
        yield start, min(start + size, patients)


def _results(
    plan: _Plan, seed: int, as_of: date, noise: PopulationNoise, workers: int, chunk_size: int
) -> Iterator[tuple[dict[str, bytes], Counter[str]]]:
    """Chunk results in patient order; at most ``2 * workers`` chunks are in flight, so memory
    stays bounded however many patients there are."""
    chunks = _chunks(plan.patients, chunk_size)
    if workers <= 1:
        _init_worker(plan, seed, as_of, noise)
        try:
            yield from map(_chunk, chunks)
        finally:
            _worker_state.clear()
        return
    # spawn: no inherited locks or threads from the caller (a service, a test runner).
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker, (plan, seed, as_of, noise)) as pool:
        pending: deque[Any] = deque()
        for bounds in chunks:
            pending.append(pool.apply_async(_chunk, (bounds,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _default_workers(patients: int) -> int:
    if patients < _PARALLEL_FROM:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


# --- the public entry -----------------------------------------------------------------------------


def write_population(
    out_dir: Path | str,
    patients: int,
    practices: int,
    clusters: int,
    seed: int,
    as_of: date,
    *,
    noise: PopulationNoise | None = None,
    workers: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> PopulationSummary:
    """Write a synthetic population as ``<type>.ndjson`` files in ``out_dir``.

    ``patients`` adults listed with ``practices`` practices in ``clusters`` quality clusters
    (each cluster has at least one practice and each practice at least one patient), with data
    from the three years before ``as_of``. The same arguments give byte-identical files,
    whatever ``workers`` (processes; default: one for small populations, else the available
    cores up to 8) and ``chunk_size``. Files are written under a temporary name and renamed
    when complete, so a file with the final name is never partial. Existing files of the same
    names are replaced; other files in ``out_dir`` are left alone.
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    if not 1 <= clusters <= practices:
        raise ValueError("need at least one cluster, and no more clusters than practices")
    if practices > min(patients, MAX_PRACTICES):
        raise ValueError(
            f"practices must not exceed the number of patients (nor {MAX_PRACTICES:,})"
        )
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    noise = noise or PopulationNoise()
    workers = _default_workers(patients) if workers is None else max(1, workers)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(patients, practices, clusters, seed)
    final = {rtype: out / f"{rtype}.ndjson" for rtype in RESOURCE_TYPES}
    partial = {rtype: path.with_name(path.name + ".partial") for rtype, path in final.items()}
    stats: Counter[str] = Counter()
    files = {rtype: partial[rtype].open("wb", buffering=1 << 20) for rtype in RESOURCE_TYPES}
    try:
        files["Organization"].write(b"".join(orjson.dumps(o) + b"\n" for o in plan.organizations))
        stats["lines:Organization"] += len(plan.organizations)
        for chunk, counts in _results(plan, seed, as_of, noise, workers, chunk_size):
            for rtype, data in chunk.items():
                files[rtype].write(data)
            stats.update(counts)
        for handle in files.values():
            handle.close()
        for rtype in RESOURCE_TYPES:
            partial[rtype].replace(final[rtype])
    except BaseException:
        for handle in files.values():
            handle.close()
        for path in partial.values():
            path.unlink(missing_ok=True)
        raise
    return PopulationSummary(
        out_dir=out,
        seed=seed,
        as_of=as_of,
        patients=patients,
        practices=practices,
        clusters=clusters,
        lines={f"{t}.ndjson": stats[f"lines:{t}"] for t in RESOURCE_TYPES},
        noise={kind: stats[f"noise:{kind}"] for kind in NOISE_KINDS},
        malformed={kind: stats[f"malformed:{kind}"] for kind in MALFORMED_KINDS},
        conditions={code: stats[f"condition:{code}"] for code in _CARE},
        goals={kind: stats[f"goal:{kind}"] for kind in ("hba1c", "systolic")},
        prescriptions={
            kind: stats[f"prescriptions:{kind}"] for kind in ("requests_too", "requests_only")
        },
        ages={f"{low}-{high}": stats[f"age:{low}-{high}"] for low, high, _, _ in _AGE_BANDS},
        sexes={sex: stats[f"sex:{sex}"] for sex in ("female", "male")},
        practice_patients=plan.practice_patients,
        practice_cluster=plan.practice_cluster,
        deceased=stats["deceased"],
        seconds=time.perf_counter() - started,
        workers=workers,
    )
