"""Seeded synthetic FHIR R4 patients shaped like Danish general-practice data (DK Core).

Why: benchmarks, engine tests and demos need realistic patients that are reproducible and
contain no real person. :func:`generate_patient` is the reusable unit: a population generator
calls it once per patient with its own ``random.Random`` and a shared practice Organization
(:func:`make_practice`), so the same seed always gives the same population.

What a patient looks like (codes from shared/DOMAIN.md §2-3):

- Patient with a fake CPR number (:func:`fake_cpr`: day ``00`` never exists, so it cannot be a
  real person's) and ``generalPractitioner`` pointing to an Organization with a ydernummer.
- Chronic problem-list Conditions (ICPC-2: T90, K86, K76, R95, P70) and encounter-diagnosis
  Conditions for consultations, including short acute episodes (U71, R74, L03, P01).
- MedicationStatements (ATC) that follow the conditions, plus short courses after acute visits.
- Mostly Observations from visits over the last three years: blood-pressure panels (LOINC
  85354-9) and NPU lab results with per-patient baselines and trends.
- Deliberate noise at low rates (:class:`Noise`): entered-in-error results with absurd values,
  HbA1c in % (NPU03835), and eGFR above 90 reported as ``> 90`` as Danish labs do.

Two ways to say who the patient is. Without a :class:`Profile`, :func:`generate_patient` draws
the benchmark cohort: older, chronically ill patients (most have diabetes or hypertension), so
every guideline has work to do; benchmarks and tests rely on that output staying the same for a
seed. With a :class:`Profile` the caller decides age, sex, chronic conditions and individual
goals (``synth.population`` draws them with Danish prevalences), and values follow the profile
(blood pressure by age, HbA1c spread like a treated diabetes population).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal, NamedTuple

Resource = dict[str, Any]

CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"
YDERNUMMER_SYSTEM = "urn:oid:1.2.208.176.1.4"
NPU_SYSTEM = "http://npu-terminology.org"
LOINC_SYSTEM = "http://loinc.org"
ICPC2_SYSTEM = "urn:oid:1.2.208.176.2.31"
ATC_SYSTEM = "http://www.whocc.no/atc"
UCUM_SYSTEM = "http://unitsofmeasure.org"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

LOOKBACK_DAYS = 3 * 365
"""Observations, encounter diagnoses and courses fall within this many days before as_of."""

_CET = timezone(timedelta(hours=1))
_CEST = timezone(timedelta(hours=2))
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,40}")


@dataclass(frozen=True, slots=True)
class Noise:
    """Rates of deliberately awkward data, so every consumer meets it in ordinary runs."""

    entered_in_error: float = 0.01
    """Share of lab results recorded with an absurd value and status entered-in-error."""
    hba1c_percent: float = 0.05
    """Share of HbA1c results in the old DCCT unit (NPU03835, %) instead of mmol/mol."""
    egfr_above_90_as_bound: bool = True
    """Report an eGFR above 90 as the bound ``> 90`` (comparator), not a number."""


# --- code tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """Who the patient is, decided by the caller instead of drawn from the benchmark cohort.

    Why: a population needs realistic prevalences, comorbidity and individual targets, which
    are the population's business; this module only turns a profile into FHIR resources.
    """

    age: int
    sex: Literal["female", "male"]
    conditions: tuple[str, ...] = ()
    """ICPC-2 codes of chronic conditions, each one of :data:`CHRONIC_CONDITIONS`."""
    hba1c_goal: int | None = None
    """An individual HbA1c target (mmol/mol) agreed with a diabetic patient: a Goal."""
    systolic_goal: int | None = None
    """An individual systolic blood-pressure target (mmHg): a Goal."""
    hba1c_offset: float = 0.0
    """Added to a diabetic's HbA1c level: how well the practice's diabetics are controlled."""

    def __post_init__(self) -> None:
        unknown = set(self.conditions) - set(CHRONIC_CONDITIONS)
        if unknown:
            raise ValueError(f"unknown chronic condition(s): {', '.join(sorted(unknown))}")
        if self.sex not in ("female", "male"):
            raise ValueError("sex must be 'female' or 'male'")
        if not 0 <= self.age <= 120:
            raise ValueError("age must be between 0 and 120")


class _Lab(NamedTuple):
    code: str  # NPU code (DNK35302 is a Danish local code in the NPU system)
    text: str
    ucum: str
    unit: str  # human-readable unit
    decimals: int


EGFR_CODE = "DNK35302"

_LABS: dict[str, _Lab] = {
    "hba1c": _Lab("NPU27300", "HbA1c", "mmol/mol", "mmol/mol", 0),
    "egfr": _Lab(EGFR_CODE, "eGFR", "mL/min/{1.73_m2}", "mL/min/1.73m²", 0),
    "creatinine": _Lab("NPU04998", "P-Kreatinin", "umol/L", "µmol/L", 0),
    "ldl": _Lab("NPU01568", "P-LDL-kolesterol", "mmol/L", "mmol/L", 1),
    "uacr": _Lab("NPU19661", "U-Albumin/kreatinin-ratio", "mg/g", "mg/g", 0),
    "potassium": _Lab("NPU03230", "P-Kalium", "mmol/L", "mmol/L", 1),
}
_HBA1C_PERCENT = _Lab("NPU03835", "HbA1c (DCCT)", "%", "%", 1)


class _Chronic(NamedTuple):
    code: str
    text: str
    prevalence: float
    min_age: int
    drugs: tuple[tuple[str, str, float], ...]  # (ATC, name, probability given the condition)


# Prevalences are for the patients a benchmark cares about (chronic patients with many
# resources), not for the Danish population.
_CHRONIC: tuple[_Chronic, ...] = (
    _Chronic(
        "T90",
        "Type 2-diabetes",
        0.55,
        30,
        (("A10BA02", "Metformin", 0.85), ("A10BK01", "Dapagliflozin", 0.25),
         ("A10BJ02", "Liraglutid", 0.15), ("C10AA05", "Atorvastatin", 0.7)),
    ),
    _Chronic(
        "K86",
        "Hypertension",
        0.5,
        30,
        (("C09AA05", "Ramipril", 0.7), ("C03AA03", "Hydrochlorthiazid", 0.3)),
    ),
    _Chronic(
        "K76",
        "Kronisk iskæmisk hjertesygdom",
        0.15,
        45,
        (("C10AA05", "Atorvastatin", 0.9), ("B01AC06", "Acetylsalicylsyre", 0.8)),
    ),
    _Chronic("R95", "KOL", 0.12, 45, (("R03BB04", "Tiotropium", 0.7),)),
    _Chronic(
        "P70",
        "Demens",
        0.15,
        70,
        (("N06DA02", "Donepezil", 0.5), ("N05AX08", "Risperidon", 0.2)),
    ),
)  # fmt: skip

CHRONIC_CONDITIONS: tuple[str, ...] = tuple(c.code for c in _CHRONIC)
"""ICPC-2 codes a :class:`Profile` can name, each with its problem-list text and medication."""

_ACUTE: tuple[tuple[str, str, tuple[str, str, int, int] | None], ...] = (
    # (ICPC-2, text, course: (ATC, name, min days, max days) or None)
    ("U71", "Cystitis", ("J01CA08", "Pivmecillinam", 3, 3)),
    ("R74", "Øvre luftvejsinfektion", None),
    ("L03", "Lændesmerter", ("M01AE01", "Ibuprofen", 5, 30)),
    ("P01", "Angst/nervøsitet", ("N05BA01", "Diazepam", 7, 60)),
)

_DOSAGE = ("1 tablet dagligt", "1 tablet 2 gange dagligt", "Efter aftale")
_GIVEN = {
    "female": ("Anne", "Kirsten", "Mette", "Hanne", "Inge", "Karen", "Lone", "Susanne"),
    "male": ("Jens", "Peter", "Lars", "Henrik", "Søren", "Niels", "Michael", "Ole"),
}
_FAMILY = ("Testesen", "Prøvesen", "Eksempelsen", "Fiktivsen", "Syntesen", "Datasen")
_TOWNS = (("8000", "Aarhus C"), ("5000", "Odense C"), ("9000", "Aalborg"), ("2300", "København S"))


# --- public helpers ---------------------------------------------------------------------------


def fake_cpr(birth_date: date, serial: int) -> str:
    """A 10-digit CPR-shaped number that is never a real one: day ``00`` does not exist.

    The rest is the birth month and year and a 4-digit serial, so numbers still look like CPR
    numbers to code that checks their shape.
    """
    return f"00{birth_date:%m%y}{serial % 10000:04d}"


def make_practice(rng: random.Random, ydernummer: str | None = None) -> Resource:
    """A general practice Organization identified by its ydernummer (6 digits, fake range 9xxxxx)."""
    number = ydernummer or f"9{rng.randrange(100000):05d}"
    postal, town = rng.choice(_TOWNS)
    return {
        "resourceType": "Organization",
        "id": f"ydernr-{number}",
        "identifier": [{"system": YDERNUMMER_SYSTEM, "value": number}],
        "active": True,
        "name": f"Lægerne {rng.choice(_FAMILY)} & {rng.choice(_FAMILY)}",
        "address": [{"city": town, "postalCode": postal, "country": "DK"}],
    }


# --- the patient ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Profile:
    """Who the patient is: drives which resources exist and what values they hold."""

    birth_date: date
    sex: str
    conditions: list[_Chronic]
    drugs: dict[str, str] = field(default_factory=dict)  # ATC -> name, chronic medication
    hba1c: float = 36.0  # baseline mmol/mol at the start of the look-back window
    hba1c_slope: float = 0.0  # per year
    egfr: float = 85.0
    egfr_slope: float = -1.0
    ldl: float = 3.0
    uacr: float = 10.0
    potassium: float = 4.2
    systolic: float = 135.0
    diastolic: float = 82.0
    given: Profile | None = None  # the caller's profile, if there was one

    def has(self, code: str) -> bool:
        return any(c.code == code for c in self.conditions)


def _profile(rng: random.Random, as_of: date, given: Profile | None = None) -> _Profile:
    """The benchmark cohort's draw, or the caller's profile with values that follow it.

    The draws without a profile are kept exactly as they were: the same seed must keep giving
    the same patient (benchmarks and tests depend on it).
    """
    if given is None:
        sex = rng.choice(("female", "male"))
        age = min(95, max(35, round(rng.gauss(67, 12))))
        birth_date = as_of - timedelta(days=age * 365 + rng.randrange(365))
        conditions = [c for c in _CHRONIC if age >= c.min_age and rng.random() < c.prevalence]
        if not conditions:
            conditions = [_CHRONIC[1]]  # everyone in the cohort has at least hypertension
    else:
        sex, age = given.sex, given.age
        birth_date = as_of - timedelta(days=age * 365 + rng.randrange(365))
        conditions = [c for c in _CHRONIC if c.code in given.conditions]
    profile = _Profile(birth_date, sex, conditions, given=given)
    for condition in conditions:
        for atc, name, probability in condition.drugs:
            if rng.random() < probability:
                profile.drugs.setdefault(atc, name)
    if profile.has("T90") and given is not None:
        # Right-skewed around 52 mmol/mol: most treated diabetics near target, a tail above 75.
        profile.hba1c = 38 + rng.lognormvariate(math.log(15), 0.5) + given.hba1c_offset
        profile.hba1c_slope = rng.gauss(0, 1.5)
        profile.uacr = math.exp(rng.gauss(math.log(18), 1.1))
    elif profile.has("T90"):
        profile.hba1c = rng.uniform(44, 78)
        profile.hba1c_slope = rng.uniform(-3, 3)
        profile.uacr = math.exp(rng.gauss(math.log(18), 1.1))
    else:
        profile.hba1c = rng.uniform(32, 42)
        profile.uacr = math.exp(rng.gauss(math.log(6), 0.6))
    profile.egfr = rng.triangular(20, 115, 90 - max(0, age - 50) * 0.6)
    profile.egfr_slope = -rng.uniform(0, 3)
    profile.ldl = rng.gauss(3.3, 0.6) - (1.3 if "C10AA05" in profile.drugs else 0)
    profile.potassium = rng.gauss(4.2, 0.25) + (0.2 if "C09AA05" in profile.drugs else 0)
    if given is None:
        profile.systolic = rng.gauss(138, 12)
        profile.diastolic = rng.gauss(82, 7)
    else:  # rises with age; treated hypertension stays a little above the untreated mean
        hypertensive = profile.has("K86")
        profile.systolic = rng.gauss(116 + 0.4 * (age - 18) + (10 if hypertensive else 0), 10)
        profile.diastolic = rng.gauss(74 + (6 if hypertensive else 0), 7)
    return profile


def minimum_resources(profile: Profile, *, practice_included: bool = False) -> int:
    """The smallest ``resources`` for which :func:`generate_patient` keeps the whole problem
    list, every chronic drug the profile's conditions can bring and its goals.

    Why: generate_patient gives at most 40 % of a patient's clinical resources to Conditions,
    MedicationStatements and Goals, so a caller sizing patients by their care needs must not
    go below this, or a diabetic could lose the T90 Condition that puts them in a register.
    ``practice_included``: the call passes no ``practice``, so one is made and counted.
    """
    drugs = {atc for c in _CHRONIC if c.code in profile.conditions for atc, _, _ in c.drugs}
    needed = len(profile.conditions) + len(drugs)
    needed += (profile.hba1c_goal is not None) + (profile.systolic_goal is not None)
    budget = 1
    while int(budget * 0.4) < needed:  # the same arithmetic as generate_patient's cut
        budget += 1
    return budget + (2 if practice_included else 1)  # the Patient (and the practice)


def generate_patient(
    rng: random.Random,
    patient_id: str,
    resources: int,
    as_of: date,
    *,
    practice: Resource | None = None,
    noise: Noise | None = None,
    profile: Profile | None = None,
) -> list[Resource]:
    """One patient as a list of FHIR R4 resources, exactly ``resources`` long.

    ``practice`` is the patient's Organization (see :func:`make_practice`); when given it is
    referred to but not included, so a population can share it. Without it a practice is made
    and included. At most 40 % of the clinical resources are Conditions, MedicationStatements
    and Goals; the rest are Observations. Everything is drawn from ``rng`` only: the same
    generator state gives the same resources.

    ``profile`` fixes who the patient is (see :class:`Profile`); without it the patient is
    drawn from the benchmark cohort, as before. The problem list, chronic medication and goals
    come first, so they are all there when ``resources`` is at least 2.5 times their number.
    """
    if not _FHIR_ID.fullmatch(patient_id):
        raise ValueError("patient_id must be a FHIR id of at most 40 characters [A-Za-z0-9-.]")
    noise = noise or Noise()
    own_practice = practice is None
    if practice is None:
        practice = make_practice(rng)
    fixed = 2 if own_practice else 1
    if resources < fixed + 1:
        raise ValueError(f"a patient needs at least {fixed + 1} resources")
    budget = resources - fixed
    start = as_of - timedelta(days=LOOKBACK_DAYS)
    drawn = _profile(rng, as_of, profile)
    patient = _patient(rng, patient_id, drawn, practice)  # drawn first: same seed, same person
    gen = _Generator(rng, patient_id, drawn, start, as_of, noise)
    others = gen.chronic(budget)[: int(budget * 0.4)]
    observations = gen.observations(budget - len(others))
    return ([practice, patient] if own_practice else [patient]) + others + observations


def _patient(rng: random.Random, pid: str, profile: _Profile, practice: Resource) -> Resource:
    postal, town = rng.choice(_TOWNS)
    gp = {"reference": f"Organization/{practice['id']}"}
    if practice.get("name"):
        gp["display"] = practice["name"]
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {
                "use": "official",
                "system": CPR_SYSTEM,
                "value": fake_cpr(profile.birth_date, rng.randrange(10000)),
            }
        ],
        "active": True,
        "name": [
            {
                "use": "official",
                "family": rng.choice(_FAMILY),
                "given": [rng.choice(_GIVEN[profile.sex])],
            }
        ],
        "gender": profile.sex,
        "birthDate": profile.birth_date.isoformat(),
        "address": [{"use": "home", "city": town, "postalCode": postal, "country": "DK"}],
        "generalPractitioner": [gp],
    }


def _concept(
    system: str, code: str, text: str | None = None, display: str | None = None
) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], "text": text} if text else {"coding": [coding]}


class _Generator:
    """Builds one patient's clinical resources; ids are ``<patient>-<kind><n>``."""

    def __init__(
        self,
        rng: random.Random,
        pid: str,
        profile: _Profile,
        start: date,
        as_of: date,
        noise: Noise,
    ) -> None:
        self.rng = rng
        self.pid = pid
        self.subject = {"reference": f"Patient/{pid}"}
        self.profile = profile
        self.start = start
        self.as_of = as_of
        self.noise = noise
        self.counts: dict[str, int] = {}

    def _id(self, kind: str) -> str:
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{self.pid}-{kind}{n}"

    def _day(self) -> date:
        return self.start + timedelta(days=self.rng.randrange(LOOKBACK_DAYS + 1))

    def _moment(self, day: date) -> str:
        """A weekday-hours timestamp in Danish local time (the offset follows summer time)."""
        minutes = self.rng.randrange(8 * 60, 16 * 60)
        zone = _CEST if _summer_time(day) else _CET
        return datetime.combine(day, time(minutes // 60, minutes % 60), zone).isoformat()

    # -- conditions, medication, goals --

    def chronic(self, budget: int) -> list[Resource]:
        """Problem list, chronic medication, a goal, then consultations: in priority order, so
        truncating the list for a small patient keeps what matters most."""
        profile, rng = self.profile, self.rng
        out: list[Resource] = []
        for condition in profile.conditions:
            onset = self.as_of - timedelta(days=rng.randrange(200, 15 * 365))
            out.append(self._condition(condition.code, condition.text, onset, "problem-list-item"))
        for atc, name in profile.drugs.items():
            out.append(self._chronic_statement(atc, name))
        given = profile.given
        if given is None:
            if profile.has("T90") and rng.random() < 0.1:
                out.append(self._hba1c_goal())
        else:
            if given.hba1c_goal is not None:
                out.append(self._hba1c_goal(given.hba1c_goal))
            if given.systolic_goal is not None:
                out.append(self._systolic_goal(given.systolic_goal))
        for _ in range(round(budget * 0.06)):
            day = self._day()
            if profile.conditions and rng.random() < 0.6:
                chronic = rng.choice(profile.conditions)
                out.append(self._condition(chronic.code, chronic.text, day, "encounter-diagnosis"))
                continue
            code, text, course = rng.choice(_ACUTE)
            resolved = day + timedelta(days=rng.randrange(7, 22))
            out.append(self._condition(code, text, day, "encounter-diagnosis", resolved))
            if course is not None and rng.random() < 0.6:
                out.append(self._course(day, *course))
        return out

    def _condition(
        self, code: str, text: str, onset: date, category: str, abatement: date | None = None
    ) -> Resource:
        resolved = abatement is not None and abatement <= self.as_of
        resource: Resource = {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "clinicalStatus": _concept(_CLINICAL_STATUS, "resolved" if resolved else "active"),
            "verificationStatus": _concept(_VERIFICATION_STATUS, "confirmed"),
            "category": [_concept(_CONDITION_CATEGORY, category)],
            "code": _concept(ICPC2_SYSTEM, code, text),
            "subject": dict(self.subject),
            "onsetDateTime": onset.isoformat(),
            "recordedDate": onset.isoformat(),
        }
        if resolved:
            resource["abatementDateTime"] = abatement.isoformat()
        return resource

    def _statement(
        self, atc: str, name: str, status: str, begin: date, end: date | None
    ) -> Resource:
        period = {"start": begin.isoformat()}
        if end is not None:
            period["end"] = end.isoformat()
        return {
            "resourceType": "MedicationStatement",
            "id": self._id("med"),
            "status": status,
            "medicationCodeableConcept": _concept(ATC_SYSTEM, atc, name),
            "subject": dict(self.subject),
            "effectivePeriod": period,
            "dateAsserted": begin.isoformat(),
            "dosage": [{"text": self.rng.choice(_DOSAGE)}],
        }

    def _chronic_statement(self, atc: str, name: str) -> Resource:
        begin = self.as_of - timedelta(days=self.rng.randrange(60, 10 * 365))
        if self.rng.random() < 0.1:  # stopped during the look-back window
            end = max(begin, self._day()) + timedelta(days=1)
            if end < self.as_of:
                return self._statement(atc, name, "stopped", begin, end)
        return self._statement(atc, name, "active", begin, None)

    def _course(self, day: date, atc: str, name: str, shortest: int, longest: int) -> Resource:
        end = day + timedelta(days=self.rng.randint(shortest, longest) - 1)
        status = "completed" if end < self.as_of else "active"
        return self._statement(atc, name, status, day, end)

    def _hba1c_goal(self, value: int | None = None) -> Resource:
        begin = self._day()
        return {
            "resourceType": "Goal",
            "id": self._id("goal"),
            "lifecycleStatus": "active",
            "description": {"text": "Individuelt HbA1c-mål"},
            "subject": dict(self.subject),
            "startDate": begin.isoformat(),
            "target": [
                {
                    "measure": _concept(NPU_SYSTEM, "NPU27300", "HbA1c"),
                    "detailQuantity": {
                        "value": self.rng.choice((53, 58, 64)) if value is None else value,
                        "comparator": "<=",
                        "unit": "mmol/mol",
                        "system": UCUM_SYSTEM,
                        "code": "mmol/mol",
                    },
                }
            ],
        }

    def _systolic_goal(self, value: int) -> Resource:
        begin = self._day()
        return {
            "resourceType": "Goal",
            "id": self._id("goal"),
            "lifecycleStatus": "active",
            "description": {"text": "Individuelt blodtryksmål"},
            "subject": dict(self.subject),
            "startDate": begin.isoformat(),
            "target": [
                {
                    "measure": _concept(
                        LOINC_SYSTEM, "8480-6", "Systolisk blodtryk", "Systolic blood pressure"
                    ),
                    "detailQuantity": {
                        "value": value,
                        "comparator": "<=",
                        "unit": "mmHg",
                        "system": UCUM_SYSTEM,
                        "code": "mm[Hg]",
                    },
                }
            ],
        }

    # -- observations --

    def observations(self, count: int) -> list[Resource]:
        """Visits until ``count`` Observations exist: each visit has a blood pressure and the
        lab tests a GP would order for this patient; the last visit is cut to fit."""
        out: list[Resource] = []
        diabetic = self.profile.has("T90")
        while len(out) < count:
            day = self._day()
            out.append(self._blood_pressure(day))
            tests = []
            if self.rng.random() < (0.8 if diabetic else 0.15):
                tests.append("hba1c")
            if self.rng.random() < 0.6:
                tests += ["egfr", "creatinine"]
            if self.rng.random() < 0.4:
                tests.append("ldl")
            if self.rng.random() < (0.35 if diabetic else 0.05):
                tests.append("uacr")
            if self.rng.random() < 0.3:
                tests.append("potassium")
            out += (self._lab(analyte, day) for analyte in tests)
        return out[:count]

    def _years(self, day: date) -> float:
        return (day - self.start).days / 365.25

    def _value(self, analyte: str, day: date) -> float:
        """Value on a day: the patient's baseline, its trend, and measurement noise."""
        p, gauss = self.profile, self.rng.gauss
        years = self._years(day)
        if analyte == "hba1c":
            return max(28.0, p.hba1c + p.hba1c_slope * years + gauss(0, 3))
        if analyte == "egfr":
            return min(130.0, max(5.0, p.egfr + p.egfr_slope * years + gauss(0, 4)))
        if analyte == "creatinine":  # roughly the inverse of eGFR on the same day
            egfr = min(130.0, max(5.0, p.egfr + p.egfr_slope * years))
            return (5800 / egfr + (35 if p.sex == "male" else 25)) * math.exp(gauss(0, 0.05))
        if analyte == "ldl":
            return max(0.8, p.ldl + gauss(0, 0.25))
        if analyte == "uacr":
            return max(1.0, p.uacr * math.exp(gauss(0, 0.3)))
        if analyte == "potassium":
            return min(6.5, max(3.0, p.potassium + gauss(0, 0.25)))
        raise KeyError(analyte)

    def _lab(self, analyte: str, day: date) -> Resource:
        lab = _LABS[analyte]
        value = self._value(analyte, day)
        quantity: dict[str, Any] = {}
        if analyte == "hba1c" and self.rng.random() < self.noise.hba1c_percent:
            lab, value = _HBA1C_PERCENT, 0.09148 * value + 2.152
        if analyte == "egfr" and value > 90 and self.noise.egfr_above_90_as_bound:
            quantity["comparator"], value = ">", 90
        status = "final"
        if self.rng.random() < self.noise.entered_in_error:
            status, value = "entered-in-error", value * 10  # a typo caught and withdrawn
        number: float | int = round(value, lab.decimals) if lab.decimals else round(value)
        quantity.update(value=number, unit=lab.unit, system=UCUM_SYSTEM, code=lab.ucum)
        return {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": status,
            "category": [_concept(_OBS_CATEGORY, "laboratory")],
            "code": _concept(NPU_SYSTEM, lab.code, lab.text),
            "subject": dict(self.subject),
            "effectiveDateTime": self._moment(day),
            "valueQuantity": quantity,
        }

    def _blood_pressure(self, day: date) -> Resource:
        p, gauss = self.profile, self.rng.gauss
        systolic = round(p.systolic + gauss(0, 8))
        diastolic = round(min(systolic - 20, p.diastolic + gauss(0, 5)))
        return {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": "final",
            "category": [_concept(_OBS_CATEGORY, "vital-signs")],
            "code": _concept(
                LOINC_SYSTEM,
                "85354-9",
                "Blodtryk",
                "Blood pressure panel with all children optional",
            ),
            "subject": dict(self.subject),
            "effectiveDateTime": self._moment(day),
            "component": [
                _component("8480-6", "Systolic blood pressure", systolic),
                _component("8462-4", "Diastolic blood pressure", diastolic),
            ],
        }


def _summer_time(day: date) -> bool:
    """Danish (EU) summer time on a day's working hours: from the last Sunday of March to the
    day before the last Sunday of October. Computed here so no time-zone database is needed."""

    def last_sunday(month: int) -> date:
        end = date(day.year, month, 31)
        return end - timedelta(days=(end.weekday() + 1) % 7)

    return last_sunday(3) <= day < last_sunday(10)


def _component(code: str, display: str, value: int) -> dict[str, Any]:
    return {
        "code": _concept(LOINC_SYSTEM, code, None, display),
        "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM_SYSTEM, "code": "mm[Hg]"},
    }
