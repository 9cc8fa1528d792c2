"""The population generator: reproducible NDJSON, valid FHIR, Danish shape, counted noise.

Why: sweeps, bulk ingest and cluster reports are tested and demonstrated on these files; if
they drifted between runs, linked patients to no practice, or carried noise nobody counted,
every number computed from them would be suspect.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class

from fhir_adapter.codes import canonical_coding
from fhir_adapter.normalise import Normalised, ResourceList, normalise, read_resources
from synth.patients import Profile, generate_patient, minimum_resources
from synth.population import (
    RESOURCE_TYPES,
    PopulationNoise,
    PopulationSummary,
    _plan,
    write_population,
)

AS_OF = date(2026, 10, 1)
VALUESETS = Path(__file__).resolve().parents[2] / "guidelines" / "valuesets"
# Small and noisy: every kind of noise occurs in a population that validates quickly.
NOISY = PopulationNoise(
    entered_in_error=0.02,
    hba1c_percent=0.1,
    missing_unit=0.02,
    invalid_json=0.01,
    wrong_type=0.01,
    missing_code=0.01,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> PopulationSummary:
    out = tmp_path_factory.mktemp("small")
    return write_population(out, 150, 4, 2, 5, AS_OF, noise=NOISY, workers=1)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> PopulationSummary:
    """The default noise rates, and enough patients for prevalences."""
    return write_population(tmp_path_factory.mktemp("large"), 2000, 5, 2, 2026, AS_OF, workers=1)


@pytest.fixture(scope="module")
def large_read(large: PopulationSummary) -> tuple[Normalised, int]:
    return _read_all(large)


def _lines(summary: PopulationSummary, rtype: str) -> list[bytes]:
    return (summary.out_dir / f"{rtype}.ndjson").read_bytes().splitlines()


def _resources(summary: PopulationSummary, rtype: str) -> list[dict[str, Any]]:
    """The resources of a file, skipping lines that are not JSON (the truncated ones)."""
    out = []
    for line in _lines(summary, rtype):
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def _read_all(summary: PopulationSummary) -> tuple[Normalised, int]:
    """read_resources + normalise over every file, as a bulk ingest would; read_resources
    refuses an NDJSON text with a non-JSON line, so those lines are set aside (and counted)."""
    resources = ResourceList()
    skipped = 0
    for rtype in RESOURCE_TYPES:
        good = []
        for line in _lines(summary, rtype):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped += 1
            else:
                good.append(line)
        if good:
            resources += read_resources(b"\n".join(good))
    return normalise(resources), skipped


def _is_noisy(resource: dict[str, Any]) -> bool:
    """A lab result made unreadable on purpose: no code, a value that is not a number or a
    quantity that is not an object, or no unit."""
    quantity = resource.get("valueQuantity")
    return resource["resourceType"] == "Observation" and (
        "code" not in resource
        or (quantity is not None and type(quantity) is not dict)
        or (type(quantity) is dict and type(quantity.get("value")) is str)
        or (type(quantity) is dict and "unit" not in quantity and "code" not in quantity)
    )


# --- reproducible, counted, streamed -----------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(
    small: PopulationSummary, tmp_path: Path
) -> None:
    again = write_population(tmp_path / "again", 150, 4, 2, 5, AS_OF, noise=NOISY, workers=1)
    for rtype in RESOURCE_TYPES:
        name = f"{rtype}.ndjson"
        assert (again.out_dir / name).read_bytes() == (small.out_dir / name).read_bytes(), name
    other = write_population(tmp_path / "other", 150, 4, 2, 6, AS_OF, noise=NOISY, workers=1)
    assert (other.out_dir / "Patient.ndjson").read_bytes() != (
        small.out_dir / "Patient.ndjson"
    ).read_bytes()


def test_worker_processes_and_chunks_do_not_change_the_bytes(tmp_path: Path) -> None:
    one = write_population(tmp_path / "one", 40, 3, 1, 9, AS_OF, noise=NOISY, workers=1)
    two = write_population(
        tmp_path / "two", 40, 3, 1, 9, AS_OF, noise=NOISY, workers=2, chunk_size=7
    )
    assert two.workers == 2
    for rtype in RESOURCE_TYPES:
        name = f"{rtype}.ndjson"
        assert (one.out_dir / name).read_bytes() == (two.out_dir / name).read_bytes(), name
    for counts in ("lines", "noise", "malformed", "conditions", "goals", "prescriptions", "ages"):
        assert getattr(one, counts) == getattr(two, counts), counts


def test_one_file_per_type_with_the_counted_lines(small: PopulationSummary) -> None:
    files = sorted(p.name for p in small.out_dir.iterdir())
    assert files == sorted(f"{t}.ndjson" for t in RESOURCE_TYPES)  # no .partial left behind
    for rtype in RESOURCE_TYPES:
        assert len(_lines(small, rtype)) == small.lines[f"{rtype}.ndjson"], rtype
    assert small.lines["Patient.ndjson"] == 150
    assert small.lines["Organization.ndjson"] == 4 + 2
    assert small.lines["MedicationRequest.ndjson"] > 0
    assert small.resources == sum(small.lines.values())
    assert sum(small.ages.values()) == sum(small.sexes.values()) == 150
    assert small.seconds > 0 and small.resources_per_second > 0
    assert "150 patients in 4 practice(s) and 2 cluster(s)" in small.report()


def test_every_well_formed_line_is_valid_fhir_r4b(small: PopulationSummary) -> None:
    not_json = invalid = 0
    for rtype in RESOURCE_TYPES:
        for line in _lines(small, rtype):
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                not_json += 1
                assert rtype == "Observation"
                continue
            assert resource["resourceType"] == rtype
            try:
                get_fhir_model_class(rtype).model_validate(resource)
            except ValueError:
                invalid += 1
                assert _is_noisy(resource), resource
    assert not_json == small.malformed["invalid_json"] > 0
    assert invalid == small.malformed["wrong_type"] + small.malformed["missing_code"]
    assert small.malformed["wrong_type"] > 0 and small.malformed["missing_code"] > 0


def test_noise_is_present_and_counted(small: PopulationSummary) -> None:
    observations = _resources(small, "Observation")
    labs = [
        r
        for r in observations
        if "code" in r and r["code"]["coding"][0]["system"] == "http://npu-terminology.org"
    ]
    withdrawn = sum(r["status"] == "entered-in-error" for r in labs)
    percent = sum(r["code"]["coding"][0]["code"] == "NPU03835" for r in labs)
    bounds = sum(
        type(r.get("valueQuantity")) is dict and r["valueQuantity"].get("comparator") == ">"
        for r in observations
    )
    no_unit = sum(
        type(q := r.get("valueQuantity")) is dict
        and type(q.get("value")) is not str
        and "unit" not in q
        for r in observations
    )
    assert small.noise == {
        "entered_in_error": withdrawn,
        "hba1c_percent": percent,
        "egfr_above_90": bounds,
        "missing_unit": no_unit,
    }
    assert all(count > 0 for count in small.noise.values())


def test_no_noise_when_switched_off(tmp_path: Path) -> None:
    quiet = PopulationNoise(0, 0, False, 0, 0, 0, 0)
    summary = write_population(tmp_path, 60, 2, 1, 3, AS_OF, noise=quiet, workers=1)
    assert set(summary.noise.values()) == set(summary.malformed.values()) == {0}
    result, skipped = _read_all(summary)
    assert skipped == 0 and not result.issues
    assert all(record.issues == () for record in result.values())


# --- Danish shape ------------------------------------------------------------------------------


def test_prevalences_are_roughly_those_of_danish_adults(large: PopulationSummary) -> None:
    """Generous bounds around the sourced targets (module docstring of synth.population)."""
    assert 0.04 <= large.prevalence("T90") <= 0.09  # ~6.5 %
    assert 0.12 <= large.prevalence("K86") <= 0.24  # ~17 %
    assert 0.015 <= large.prevalence("K76") <= 0.06  # ~3.3 %
    assert 0.01 <= large.prevalence("R95") <= 0.05  # ~3 %
    elderly = sum(n for band, n in large.ages.items() if int(band[:2]) >= 70)
    assert 0.15 <= elderly / large.patients <= 0.25  # 70+ is ~19 % of adults
    assert 0.01 <= large.conditions["P70"] / elderly <= 0.10  # dementia mostly in the old
    assert 0.4 <= large.sexes["female"] / large.patients <= 0.6

    # The summary counts what the files hold: problem-list Conditions and birth dates.
    problem_list: dict[str, set[str]] = {}
    for condition in _resources(large, "Condition"):
        if condition["category"][0]["coding"][0]["code"] == "problem-list-item":
            code = condition["code"]["coding"][0]["code"]
            problem_list.setdefault(code, set()).add(condition["subject"]["reference"])
    assert {code: len(who) for code, who in problem_list.items()} == {
        code: n for code, n in large.conditions.items() if n
    }
    ages = [AS_OF.year - int(p["birthDate"][:4]) for p in _resources(large, "Patient")]
    assert min(ages) >= 18 and max(ages) <= 101


def test_some_patients_have_died_after_their_last_record(large: PopulationSummary) -> None:
    """About 2 % died within two years of the reference date, never before a record of theirs."""
    died = {
        f"Patient/{p['id']}": date.fromisoformat(p["deceasedDateTime"])
        for p in _resources(large, "Patient")
        if "deceasedDateTime" in p
    }
    assert len(died) == large.deceased
    assert 0.01 <= large.deceased / large.patients <= 0.03
    assert all(AS_OF - timedelta(days=731) <= day <= AS_OF for day in died.values())
    for rtype in ("Observation", "Condition", "MedicationStatement", "Goal"):
        for resource in _resources(large, rtype):
            subject = resource.get("subject")
            when = resource.get("effectiveDateTime") or resource.get("recordedDate")
            if isinstance(subject, dict) and subject.get("reference") in died and when:
                assert date.fromisoformat(when[:10]) <= died[subject["reference"]]


def test_medication_follows_the_conditions(large: PopulationSummary) -> None:
    conditions: dict[str, set[str]] = {}
    for condition in _resources(large, "Condition"):
        conditions.setdefault(condition["subject"]["reference"], set()).add(
            condition["code"]["coding"][0]["code"]
        )
    drugs: dict[str, set[str]] = {}
    for rtype in ("MedicationStatement", "MedicationRequest"):
        for resource in _resources(large, rtype):
            atc = resource["medicationCodeableConcept"]["coding"][0]["code"]
            drugs.setdefault(resource["subject"]["reference"], set()).add(atc)
    diabetics = [p for p, codes in conditions.items() if "T90" in codes]
    on_metformin = sum("A10BA02" in drugs.get(p, ()) for p in diabetics)
    assert on_metformin / len(diabetics) > 0.6
    metformin_users = [p for p, atcs in drugs.items() if "A10BA02" in atcs]
    assert all("T90" in conditions.get(p, ()) for p in metformin_users)


def test_practices_point_to_clusters_and_patients_to_practices(small: PopulationSummary) -> None:
    organizations = {o["id"]: o for o in _resources(small, "Organization")}
    clusters = {k for k, o in organizations.items() if "partOf" not in o}
    practices = {k: o for k, o in organizations.items() if "partOf" in o}
    assert len(clusters) == small.clusters and len(practices) == small.practices
    for org in practices.values():
        (identifier,) = org["identifier"]
        assert identifier["system"] == "urn:oid:1.2.208.176.1.4"
        assert len(identifier["value"]) == 6 and identifier["value"].isdigit()
        cluster = org["partOf"]["reference"].removeprefix("Organization/")
        assert cluster in clusters
        assert small.practice_cluster[identifier["value"]] == cluster
    assert set(small.practice_cluster.values()) == clusters  # no cluster without a practice
    listed: Counter[str] = Counter()
    for patient in _resources(small, "Patient"):
        (gp,) = patient["generalPractitioner"]
        org = practices[gp["reference"].removeprefix("Organization/")]
        listed[org["identifier"][0]["value"]] += 1
    assert listed == Counter(small.practice_patients)
    assert min(listed.values()) >= 1


def test_list_sizes_vary_with_many_patients_and_are_even_with_few() -> None:
    big = _plan(200_000, 80, 4, 1)
    sizes = sorted(big.practice_patients.values())
    assert sum(sizes) == 200_000
    assert sizes[-1] > 3 * sizes[0]  # solo practices and partnerships
    per_cluster = Counter(big.practice_cluster.values())
    assert len(per_cluster) == 4 and min(per_cluster.values()) >= 10
    assert max(per_cluster.values()) > min(per_cluster.values())
    few = _plan(1000, 7, 3, 1)
    assert sorted(set(few.practice_patients.values())) == [142, 143]
    assert len(set(few.practice_cluster.values())) == 3
    assert len(set(big.practice_patients)) == 80  # ydernumre are unique


def test_cpr_numbers_are_fake_and_unique(small: PopulationSummary) -> None:
    numbers = [p["identifier"][0]["value"] for p in _resources(small, "Patient")]
    assert len(set(numbers)) == len(numbers)
    assert all(len(n) == 10 and n.isdigit() and n.startswith("00") for n in numbers)


def test_goals_use_codes_the_value_sets_know(large: PopulationSummary) -> None:
    known: dict[str, set[tuple[str, str]]] = {}
    for name in ("hba1c", "systolic-blood-pressure"):
        valueset = yaml.safe_load((VALUESETS / f"{name}.yaml").read_text(encoding="utf-8"))
        known[name] = {
            (include["system"], str(code))
            for include in valueset["include"]
            for code in include["codes"]
        }
    values: dict[str, Counter[int]] = {"hba1c": Counter(), "systolic-blood-pressure": Counter()}
    for goal in _resources(large, "Goal"):
        (target,) = goal["target"]
        coding = target["measure"]["coding"][0]
        key = canonical_coding(coding["system"], coding["code"])
        (name,) = [n for n, codes in known.items() if key in codes]
        values[name][target["detailQuantity"]["value"]] += 1
    assert sum(values["hba1c"].values()) == large.goals["hba1c"] > 0
    assert sum(values["systolic-blood-pressure"].values()) == large.goals["systolic"] > 0
    assert set(values["hba1c"]) <= {53, 58, 64} and values["hba1c"][64] > 0
    assert set(values["systolic-blood-pressure"]) <= {130, 135, 145}


# --- through fhir_adapter ----------------------------------------------------------------------


def test_normalise_gives_one_record_per_patient_with_issues_only_for_the_noise(
    large: PopulationSummary, large_read: tuple[Normalised, int]
) -> None:
    result, skipped = large_read
    assert skipped == large.malformed["invalid_json"] > 0
    assert len(result) == large.patients
    assert result.issues == ()  # nothing refers to a patient or practice that is not there
    noisy = {f"Observation/{r['id']}" for r in _resources(large, "Observation") if _is_noisy(r)}
    issues = [issue for record in result.values() for issue in record.issues]
    assert {issue.resource for issue in issues} == noisy
    expected = large.noise["missing_unit"] + large.malformed["wrong_type"]
    assert len(issues) == expected + large.malformed["missing_code"]
    assert large.malformed["wrong_type"] > 0 and large.malformed["missing_code"] > 0
    by_practice = Counter(record.practice for record in result.values())
    assert by_practice == Counter(large.practice_patients)


def test_prescription_only_patients_get_their_medication_from_requests(
    large: PopulationSummary, large_read: tuple[Normalised, int]
) -> None:
    assert large.prescriptions["requests_only"] > 0 and large.prescriptions["requests_too"] > 0
    with_statements = {r["subject"]["reference"] for r in _resources(large, "MedicationStatement")}
    requests = _resources(large, "MedicationRequest")
    only = {r["subject"]["reference"] for r in requests} - with_statements
    assert len(only) == large.prescriptions["requests_only"]
    result, _ = large_read
    for reference in only:
        record = result[reference.removeprefix("Patient/")]
        assert record.medications
        assert all(m.resource.startswith("MedicationRequest/") for m in record.medications)


# --- the profile parameter of generate_patient -------------------------------------------------


def test_a_profile_decides_who_the_patient_is() -> None:
    profile = Profile(41, "female", ("T90", "R95"), hba1c_goal=58, systolic_goal=135)
    size = minimum_resources(profile, practice_included=True)
    resources = generate_patient(random.Random(1), "x1", size, AS_OF, profile=profile)
    assert len(resources) == size
    patient = resources[1]
    assert patient["gender"] == "female"
    assert AS_OF.year - int(patient["birthDate"][:4]) in (41, 42)
    problems = {
        r["code"]["coding"][0]["code"]
        for r in resources
        if r["resourceType"] == "Condition"
        and r["category"][0]["coding"][0]["code"] == "problem-list-item"
    }
    assert problems == {"T90", "R95"}
    goals = sorted(
        r["target"][0]["detailQuantity"]["value"] for r in resources if r["resourceType"] == "Goal"
    )
    assert goals == [58, 135]


@pytest.mark.parametrize("seed", range(5))
def test_a_healthy_profile_has_no_problem_list_or_medication(seed: int) -> None:
    profile = Profile(25, "male")
    resources = generate_patient(random.Random(seed), f"x{seed}", 60, AS_OF, profile=profile)
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["Goal"] == 0 and kinds["Observation"] > 30
    assert all(
        r["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
        for r in resources
        if r["resourceType"] == "Condition"
    )
    assert all(  # only short courses after acute visits
        "end" in r["effectivePeriod"]
        for r in resources
        if r["resourceType"] == "MedicationStatement"
    )


def test_profiles_and_arguments_that_cannot_be(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown chronic condition"):
        Profile(50, "male", ("X99",))
    with pytest.raises(ValueError, match="more clusters"):
        write_population(tmp_path, 10, 2, 3, 1, AS_OF)
    with pytest.raises(ValueError, match="exceed the number of patients"):
        write_population(tmp_path, 3, 4, 1, 1, AS_OF)
    with pytest.raises(ValueError, match="at least 1"):
        write_population(tmp_path, 0, 1, 1, 1, AS_OF)
    assert list(tmp_path.iterdir()) == []
