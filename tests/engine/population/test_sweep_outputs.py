"""A whole run over the guideline library: the files a quality unit gets, checked against the
per-patient engine (the reference) and the closed-room rules.

One sweep for the module (DuckDB compiles all guidelines in a few seconds); every test reads
its files.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from fhir.resources.R4B.measurereport import MeasureReport

from engine.outcomes import GuidelineOutcome
from engine.patient import PatientEngine
from engine.population.duckdb_engine import load_tables
from engine.population.measure_report import YDERNUMMER, summary_report
from engine.population.run import RunManifest, run_sweep
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet
from service.feedback import PatientException
from tests.engine.population.synthetic import AS_OF, CLUSTERS, PRACTICES

SUPPRESS = 5


@pytest.fixture(scope="module")
def reference(
    library: GuidelineSet, patients: list[PatientRecord]
) -> dict[str, list[GuidelineOutcome]]:
    engine = PatientEngine(library)
    return {p.id: engine.evaluate(p, AS_OF) for p in patients}


@pytest.fixture(scope="module")
def exceptions(reference: dict[str, list[GuidelineOutcome]]) -> list[PatientException]:
    """Two exceptions for patients who count in t2d-hba1c's indicators: one recorded before the
    reference date (applies), one after (does not, yet)."""
    counted = sorted(
        patient
        for patient, outcomes in reference.items()
        for o in outcomes
        if o.guideline == "t2d-hba1c" and any(i.denominator for i in o.indicators)
    )
    assert len(counted) >= 2, "the population must put patients in t2d-hba1c's denominators"
    recorded = dt.datetime(2026, 9, 1, 10, 0, tzinfo=dt.UTC)
    late = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
    return [
        PatientException(counted[0], "t2d-hba1c", "hba1c-above-target", "declined", recorded, "u1"),
        PatientException(counted[1], "t2d-hba1c", None, "not-suitable", late, "u2"),
    ]


@pytest.fixture(scope="module")
def run(
    library: GuidelineSet,
    patients: list[PatientRecord],
    exceptions: list[PatientException],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunManifest]:
    out_dir = tmp_path_factory.mktemp("sweeps")
    with duckdb.connect() as con:
        load_tables(con, facts_tables(patients), library)
        yield run_sweep(
            con, library, [AS_OF], out_dir, CLUSTERS, SUPPRESS, exceptions, snapshot="test-1"
        )


@pytest.fixture(scope="module")
def day(run: RunManifest) -> Path:
    return run.directory / str(AS_OF)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def practice_of(patients: list[PatientRecord]) -> dict[str, str | None]:
    return {p.id: p.practice for p in patients}


# -- files ---------------------------------------------------------------------------------------


def test_a_run_publishes_every_file_and_a_manifest(
    run: RunManifest, day: Path, library: GuidelineSet
) -> None:
    assert run.directory.name == run.run_id
    assert not list(run.directory.parent.glob(".partial-*"))
    for name in ("outcomes.parquet", "indicators.csv", "indicators-shared.csv"):
        assert (day / name).is_file()
    assert sorted(p.name for p in (day / "lists").iterdir()) == [f"{p}.csv" for p in PRACTICES]
    for csv_file in [day / "indicators.csv", day / "indicators-shared.csv", *day.glob("lists/*")]:
        # for Excel, which reads a CSV without one as the machine's legacy code page
        assert csv_file.read_bytes().startswith(b"\xef\xbb\xbf"), csv_file
    in_force = library.in_force(AS_OF)
    with_indicators = [g for g in in_force if g.indicators]
    reports = list((day / "measure_reports").rglob("*.json"))
    assert len(reports) == 2 * len(PRACTICES) * len(with_indicators)

    manifest = json.loads((run.directory / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["snapshot"] == "test-1"
    assert manifest["as_of"] == [str(AS_OF)]
    assert {g["id"]: g["content_hash"] for g in manifest["guidelines"][str(AS_OF)]} == {
        g.id: g.content_hash for g in in_force
    }
    assert (
        manifest["rows"][f"{AS_OF}/outcomes.parquet"]
        == pq.read_metadata(day / "outcomes.parquet").num_rows
    )
    assert manifest["exceptions"] == 2 and manifest["practices"] == 3 and manifest["clusters"] == 2
    assert f"{AS_OF}/sweep" in manifest["timings"]
    assert RunManifest.read(run.directory) == run


def test_outcomes_parquet_holds_every_register_with_provenance(
    run: RunManifest,
    day: Path,
    library: GuidelineSet,
    patients: list[PatientRecord],
    reference: dict[str, list[GuidelineOutcome]],
) -> None:
    rows = pq.read_table(day / "outcomes.parquet").to_pylist()
    in_force = {g.id: g for g in library.in_force(AS_OF)}
    assert rows == sorted(rows, key=lambda r: (r["practice"] or "", r["patient"], r["guideline"]))
    practices = practice_of(patients)
    expected = {(p, o.guideline): o for p, outcomes in reference.items() for o in outcomes}
    assert {(r["patient"], r["guideline"]) for r in rows} == {
        key for key, o in expected.items() if o.in_register
    }
    assert (
        len(rows) < len(expected) == len(patients) * len(in_force) == run.patients * len(in_force)
    )
    for r in rows:
        g = in_force[r["guideline"]]
        assert (r["version"], r["content_hash"]) == (g.version, g.content_hash)
        assert r["practice"] == practices[r["patient"]]
        assert r["cluster"] == CLUSTERS.get(r["practice"])
        o = expected[(r["patient"], r["guideline"])]
        assert r["in_register"] == o.in_register
        assert sorted(r["recommendations"]) == sorted(x.id for x in o.recommendations)
        assert [t["name"] for t in r["targets"]] == [t.name for t in o.targets]


# -- lists ---------------------------------------------------------------------------------------


def test_each_list_holds_only_its_own_practice_patients(
    day: Path, patients: list[PatientRecord]
) -> None:
    practices = practice_of(patients)
    seen = 0
    for path in (day / "lists").iterdir():
        for row in read_csv(path):
            assert practices[row["patient"]] == path.stem
            seen += 1
    assert seen > 50, "the population must put patients on lists"
    unlisted = next(p.id for p in patients if p.practice is None)
    assert all(
        row["patient"] != unlisted for path in (day / "lists").iterdir() for row in read_csv(path)
    )


def test_list_reasons_are_the_cards_the_gp_would_see(
    day: Path, patients: list[PatientRecord], reference: dict[str, list[GuidelineOutcome]]
) -> None:
    """The reason is the card summary rendered with the patient's values, word for word the
    text the per-patient engine puts on the CDS Hooks card (Danish by default)."""
    expected = {
        (p.id, o.guideline, r.id): r.summary.da
        for p in patients
        if p.practice is not None
        for o in reference[p.id]
        for r in o.recommendations
    }
    got = {
        (row["patient"], row["guideline"], row["recommendation"]): row["reason"]
        for path in (day / "lists").iterdir()
        for row in read_csv(path)
    }
    assert got == expected
    rows = [row for path in (day / "lists").iterdir() for row in read_csv(path)]
    assert all(row["guideline_title"] and row["severity"] for row in rows)
    assert any(row["key_values"] for row in rows), "observations behind a card are listed"


# -- indicators ----------------------------------------------------------------------------------


def expected_counts(
    reference: dict[str, list[GuidelineOutcome]],
    patients: list[PatientRecord],
    excepted: set[tuple[str, str]],
) -> Counter[tuple[str, str, str, str, str]]:
    """(level, unit, guideline, indicator, count) from the per-patient engine, by hand."""
    counts: Counter[tuple[str, str, str, str, str]] = Counter()
    practices = practice_of(patients)
    for patient, outcomes in reference.items():
        practice = practices[patient]
        units = [("all", "all")]
        if practice is not None:
            units += [("practice", practice), ("cluster", CLUSTERS[practice])]
        for o in outcomes:
            for i in o.indicators:
                out_of_denominator = (patient, o.guideline) in excepted and i.denominator
                for unit in units:
                    key = (*unit, o.guideline, i.id)
                    counts[(*key, "register")] += 1
                    if out_of_denominator or i.excepted:
                        counts[(*key, "excepted")] += 1
                    elif i.denominator:
                        counts[(*key, "denominator")] += 1
                        counts[(*key, "numerator")] += i.numerator
    return counts


def test_practice_rows_count_what_the_per_patient_engine_counts(
    day: Path,
    patients: list[PatientRecord],
    reference: dict[str, list[GuidelineOutcome]],
    exceptions: list[PatientException],
) -> None:
    applied = {(e.patient_id, e.guideline_id) for e in exceptions if e.recorded_at.date() <= AS_OF}
    counts = expected_counts(reference, patients, applied)
    rows = read_csv(day / "indicators.csv")
    practice_rows = [r for r in rows if r["level"] == "practice"]
    assert practice_rows
    for r in practice_rows:
        key = (r["level"], r["id"], r["guideline"], r["indicator"])
        assert r["suppressed"] == "false"
        for name in ("register", "numerator", "denominator", "excepted"):
            assert int(r[name]) == counts[(*key, name)], (key, name)
        if int(r["denominator"]):
            assert float(r["rate"]) == pytest.approx(
                int(r["numerator"]) / int(r["denominator"]), abs=5e-5
            )
            assert float(r["ci_low"]) <= float(r["rate"]) <= float(r["ci_high"])
        else:
            assert r["rate"] == r["ci_low"] == r["ci_high"] == ""


def test_small_counts_are_suppressed_above_practice_level_only(
    day: Path,
    patients: list[PatientRecord],
    reference: dict[str, list[GuidelineOutcome]],
    exceptions: list[PatientException],
) -> None:
    applied = {(e.patient_id, e.guideline_id) for e in exceptions if e.recorded_at.date() <= AS_OF}
    counts = expected_counts(reference, patients, applied)
    rows = read_csv(day / "indicators.csv")
    outcomes = Counter()
    for r in rows:
        if r["level"] == "practice":
            continue
        key = (r["level"], r["id"], r["guideline"], r["indicator"])
        numerator, denominator = counts[(*key, "numerator")], counts[(*key, "denominator")]
        small = numerator < SUPPRESS or denominator - numerator < SUPPRESS
        outcomes[small] += 1
        if r["suppressed"] == "true":  # small, or hidden so that no small one can be worked out
            assert r["numerator"] == r["denominator"] == r["rate"] == ""
            assert r["ci_low"] == r["ci_high"] == ""
        else:
            assert not small
            assert (int(r["numerator"]), int(r["denominator"])) == (numerator, denominator)
        register = counts[(*key, "register")]
        assert r["register"] == (str(register) if register >= SUPPRESS else "")
    assert outcomes[True] and outcomes[False], "both kinds of row must occur in the population"
    assert {r["level"] for r in rows} == {"practice", "cluster", "all"}
    assert {r["id"] for r in rows if r["level"] == "cluster"} == set(CLUSTERS.values())

    shared = read_csv(day / "indicators-shared.csv")
    assert [r for r in shared if r["level"] != "practice"] == [
        r for r in rows if r["level"] != "practice"
    ]
    assert any(r["suppressed"] == "true" for r in shared if r["level"] == "practice")
    for r in shared:
        if r["numerator"]:
            n, d = int(r["numerator"]), int(r["denominator"])
            assert n >= SUPPRESS and d - n >= SUPPRESS


def test_no_small_count_is_the_difference_of_shown_ones(day: Path) -> None:
    """A cluster less its shown practices, or the country less its shown clusters and the shown
    practices outside them, is what those rows hide together; less one practice's own counts
    too (a practice reads the file). None of these may be a small count of patients."""
    shown: dict[tuple[str, str], dict[tuple[str, str], tuple[int, int]]] = {}
    own: dict[tuple[str, str, str], tuple[int, int]] = {}
    for r in read_csv(day / "indicators.csv"):
        if r["level"] == "practice":
            own[(r["guideline"], r["indicator"], r["id"])] = (
                int(r["numerator"]),
                int(r["denominator"]),
            )
    for r in read_csv(day / "indicators-shared.csv"):
        rows = shown.setdefault((r["guideline"], r["indicator"]), {})
        if r["suppressed"] == "false":
            rows[(r["level"], r["id"])] = (int(r["numerator"]), int(r["denominator"]))
    checked = 0
    for (guideline, indicator), rows in shown.items():
        for (level, unit), (n, d) in rows.items():
            if level == "practice":
                continue
            inside = [p for p in PRACTICES if level == "all" or CLUSTERS[p] == unit]
            covered = [
                p
                for p in inside
                if ("practice", p) in rows or (level == "all" and ("cluster", CLUSTERS[p]) in rows)
            ]
            known = [rows[u] for u in rows if level == "all" and u[0] == "cluster"]
            known += [
                rows[("practice", p)]
                for p in covered
                if ("practice", p) in rows
                and not (level == "all" and ("cluster", CLUSTERS[p]) in rows)
            ]
            rest = (n - sum(k[0] for k in known), d - sum(k[1] for k in known))
            hidden = [p for p in inside if p not in covered]
            for insider in [(0, 0)] + [own[(guideline, indicator, p)] for p in hidden]:
                left = (rest[0] - insider[0], rest[1] - insider[1])
                checked += 1
                assert left[1] == 0 or min(left[0], left[1] - left[0]) >= SUPPRESS, (
                    guideline,
                    indicator,
                    level,
                    unit,
                    left,
                )
    assert checked


# -- exceptions ----------------------------------------------------------------------------------


def test_an_exception_moves_the_patient_from_denominator_to_excepted_not_out_of_the_register(
    day: Path, reference: dict[str, list[GuidelineOutcome]], exceptions: list[PatientException]
) -> None:
    applied, later = exceptions
    rows = {
        (r["patient"], r["guideline"]): r
        for r in pq.read_table(day / "outcomes.parquet").to_pylist()
    }
    before = next(o for o in reference[applied.patient_id] if o.guideline == "t2d-hba1c")
    after = rows[(applied.patient_id, "t2d-hba1c")]
    assert after["in_register"] is True
    assert after["exceptions"] == ["declined"]
    memberships = {i["indicator"]: i["membership"] for i in after["indicators"]}
    for i in before.indicators:
        if i.denominator:
            assert memberships[i.id] == "excepted"
        else:
            assert memberships[i.id] == i.membership
    # other guidelines of the same patient are untouched
    other = [o for o in reference[applied.patient_id] if o.guideline != "t2d-hba1c"]
    for o in other:
        key = (applied.patient_id, o.guideline)
        if o.in_register:
            assert rows[key]["exceptions"] == []
        else:
            assert key not in rows
    # an exception recorded after the reference date does not count yet
    not_yet = rows[(later.patient_id, "t2d-hba1c")]
    assert not_yet["exceptions"] == []
    reference_memberships = next(
        [(i.id, i.membership) for i in o.indicators]
        for o in reference[later.patient_id]
        if o.guideline == "t2d-hba1c"
    )
    assert [(i["indicator"], i["membership"]) for i in not_yet["indicators"]] == (
        reference_memberships
    )
    # on the practice's list the patient stays, marked with the clinician's reason
    practice = after["practice"]
    listed = [
        r
        for r in read_csv(day / "lists" / f"{practice}.csv")
        if r["patient"] == applied.patient_id and r["guideline"] == "t2d-hba1c"
    ]
    assert all(r["exception"] == "declined" for r in listed)


# -- FHIR ----------------------------------------------------------------------------------------


def test_measure_reports_are_valid_fhir_and_agree_with_indicators_csv(
    day: Path, patients: list[PatientRecord]
) -> None:
    rows = {
        (r["id"], r["guideline"], r["indicator"]): r
        for r in read_csv(day / "indicators.csv")
        if r["level"] == "practice"
    }
    practices = practice_of(patients)
    for path in sorted((day / "measure_reports").rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        report = MeasureReport.model_validate(data)
        practice = path.parent.name
        assert report.reporter.identifier.value == practice
        assert report.status == "complete"
        assert str(report.period.start) == str(AS_OF)
        guideline = report.measure.split("/")[-1].split("|")[0]
        contained = {c["id"]: c for c in data.get("contained", [])}
        for group in data["group"]:
            indicator = group["code"]["coding"][0]["code"].split("/", 1)[1]
            row = rows[(practice, guideline, indicator)]
            counts = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
            assert counts["numerator"] == int(row["numerator"])
            assert counts["denominator"] == int(row["denominator"]) + int(row["excepted"])
            assert counts["denominator-exception"] == int(row["excepted"])
            assert counts["initial-population"] == int(row["register"])
            if int(row["denominator"]):
                assert group["measureScore"]["value"] == pytest.approx(float(row["rate"]), abs=5e-5)
            if report.type == "subject-list":
                for population in group["population"]:
                    if not population["count"]:
                        assert "subjectResults" not in population
                        continue
                    listed = contained[population["subjectResults"]["reference"][1:]]
                    ids = [e["item"]["reference"].removeprefix("Patient/") for e in listed["entry"]]
                    assert len(ids) == population["count"]
                    assert {practices[i] for i in ids} == {practice}
            else:
                assert report.type == "summary" and "contained" not in data


@pytest.mark.parametrize(
    ("practice", "reporter"),
    [
        ("123456", {"identifier": {"system": YDERNUMMER, "value": "123456"}}),
        ("Organization/o2", {"reference": "Organization/o2"}),
        ("urn:uuid:4f1c", {"display": "urn:uuid:4f1c"}),
    ],
    ids=["ydernummer", "reference", "other"],
)
def test_a_practice_known_only_by_a_reference_is_no_ydernummer_in_a_measure_report(
    library: GuidelineSet, practice: str, reporter: dict[str, object]
) -> None:
    """An export without its Organizations gives the practice as the patients' reference."""
    guideline = next(g for g in library.in_force(AS_OF) if g.indicators)
    report = summary_report(practice, guideline, {}, AS_OF, "da")
    MeasureReport.model_validate(report)
    assert reporter.items() <= report["reporter"].items()
