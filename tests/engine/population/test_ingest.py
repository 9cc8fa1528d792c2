"""Ingest: NDJSON into the facts store with nothing dropped silently."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import engine.population.ingest as ingest_module
from engine.population.ingest import _NEEDLES, IngestSettingError, ingest
from engine.population.store import clusters_of, snapshot_of
from synth.population import write_population


def test_synthetic_population_ingests_with_quarantine_and_clusters(tmp_path: Path) -> None:
    summary = write_population(tmp_path / "ndjson", 60, 3, 2, 11, dt.date(2026, 10, 1))
    result = ingest(tmp_path / "ndjson", tmp_path / "store")
    assert result.patients == 60
    assert result.lines == sum(summary.lines.values())
    quarantine = (tmp_path / "store" / "quarantine.ndjson").read_text().splitlines()
    assert len(quarantine) == result.quarantined
    assert all({"file", "line", "reason"} <= set(json.loads(q)) for q in quarantine)
    patients = pq.read_table(tmp_path / "store" / "patients.parquet")
    assert patients.num_rows == 60
    assert set(clusters_of(tmp_path / "store")) == set(summary.practice_cluster)
    assert snapshot_of(tmp_path / "store") == result.snapshot


def test_a_bad_line_is_quarantined_with_its_place(tmp_path: Path) -> None:
    source = tmp_path / "Patient.ndjson"
    good = {"resourceType": "Patient", "id": "a", "birthDate": "1950-01-01", "gender": "male"}
    source.write_text(json.dumps(good) + "\n{not json\n[1, 2]\n")
    result = ingest(source, tmp_path / "store")
    assert (result.patients, result.quarantined) == (1, 2)
    reasons = [
        json.loads(line)
        for line in (tmp_path / "store" / "quarantine.ndjson").read_text().splitlines()
    ]
    assert [(r["line"], r["reason"].split(":")[0]) for r in reasons] == [
        (2, "not JSON"),
        (3, "not a JSON object"),
    ]


def test_a_value_that_overflows_its_conversion_is_an_issue_not_a_failed_ingest(
    tmp_path: Path,
) -> None:
    """1e308 % HbA1c overflowed when converted to mmol/mol, and the worker's exception stopped
    the whole ingest."""
    source = tmp_path / "population.ndjson"
    patient = {"resourceType": "Patient", "id": "a", "birthDate": "1950-01-01"}
    hba1c = {
        "resourceType": "Observation",
        "id": "h",
        "status": "final",
        "code": {"coding": [{"system": "http://npu-terminology.org", "code": "NPU27300"}]},
        "subject": {"reference": "Patient/a"},
        "effectiveDateTime": "2026-01-05",
        "valueQuantity": {"value": 1e308, "unit": "%"},
    }
    source.write_text(f"{json.dumps(patient)}\n{json.dumps(hba1c)}\n")
    result = ingest(source, tmp_path / "store")
    assert (result.patients, result.quarantined) == (1, 0)
    issues = (tmp_path / "store" / "issues.ndjson").read_text().splitlines()
    assert [json.loads(line) for line in issues] == [
        {"resource": "Observation/h", "reason": "value 1e+308 is too large to convert to mmol/mol"}
    ]


def test_the_memory_limit_bounds_the_sql_step_and_a_bad_one_stops_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "Patient.ndjson"
    source.write_text(json.dumps({"resourceType": "Patient", "id": "a"}) + "\n")
    with pytest.raises(IngestSettingError, match="bad DuckDB memory limit 'lots'"):
        ingest(source, tmp_path / "store", memory_limit="lots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Patient.ndjson"]  # nothing begun
    limits: list[str | None] = []

    def configure(con: object, memory_limit: str | None = None, *args: object) -> None:
        limits.append(memory_limit)
        real(con, memory_limit, *args)

    real = ingest_module.configure
    monkeypatch.setattr(ingest_module, "configure", configure)
    assert ingest(source, tmp_path / "store", workers=1, memory_limit="384MB").patients == 1
    assert limits == ["384MB", "384MB"]  # the check, then the SQL step
    before = snapshot_of(tmp_path / "store")
    source.write_text(json.dumps({"resourceType": "Patient", "id": "b"}) + "\n")
    with pytest.raises(IngestSettingError, match="does not fit in the memory limit '1KB'"):
        ingest(source, tmp_path / "store", workers=1, memory_limit="1KB")  # DuckDB accepts it
    assert snapshot_of(tmp_path / "store") == before
    assert pq.read_table(tmp_path / "store" / "patients.parquet")["patient"].to_pylist() == ["a"]


def test_broken_reference_resources_are_quarantined_and_the_good_ones_used(
    tmp_path: Path,
) -> None:
    """Organizations and Medications are read first, for the others to refer to: a broken one
    is left to the quarantine, one without an id can be referred to by nothing, and the first
    good one of a name is the one used (as normalise does)."""
    atc = "http://www.whocc.no/atc"
    good = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {"coding": [{"system": atc, "code": "A10BA02"}]},
    }
    later = {**good, "code": {"coding": [{"system": atc, "code": "C10AA01"}]}}
    lines = [
        '{"resourceType": "Medication", "id": "m1", "code": ',  # cut off
        json.dumps({"resourceType": "Organization", "name": "no id"}),
        json.dumps(["resourceType", "Organization"]),
        json.dumps(good),
        json.dumps(later),
        json.dumps({"resourceType": "Patient", "id": "p", "birthDate": "1950-01-01"}),
        json.dumps(
            {
                "resourceType": "MedicationStatement",
                "id": "s1",
                "status": "active",
                "subject": {"reference": "Patient/p"},
                "medicationReference": {"reference": "Medication/m1"},
                "effectivePeriod": {"start": "2026-01-01"},
            }
        ),
    ]
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    result = ingest(tmp_path / "in.ndjson", tmp_path / "store")
    quarantine = (tmp_path / "store" / "quarantine.ndjson").read_text().splitlines()
    assert [json.loads(q)["line"] for q in quarantine] == [1, 3]
    assert result.quarantined == 2
    medications = pq.read_table(tmp_path / "store" / "medications.parquet").to_pylist()
    codes = {
        c["code"]: c["value"]
        for c in pq.read_table(tmp_path / "store" / "codes.parquet").to_pylist()
    }
    assert [(m["resource"], codes[m["code"]]) for m in medications] == [
        ("MedicationStatement/s1", "A10BA02")
    ]


def test_patients_without_a_practice_or_its_ydernummer_are_told(tmp_path: Path) -> None:
    """An export without its Organizations leaves references where ydernumre belong: the sweep
    would name lists and MeasureReports after them, so the ingest says so at once."""
    ydernummer = {"system": "urn:oid:1.2.208.176.1.4", "value": "123456"}
    organization = {"resourceType": "Organization", "id": "o1", "identifier": [ydernummer]}

    def patient(pid: str, **extra: object) -> str:
        return json.dumps({"resourceType": "Patient", "id": pid, **extra})

    lines = [
        json.dumps(organization),
        patient("by-organization", generalPractitioner=[{"reference": "Organization/o1"}]),
        patient("by-identifier", generalPractitioner=[{"identifier": ydernummer}]),
        patient("none"),
        patient("lost", generalPractitioner=[{"reference": "Organization/o2"}]),
        patient("lost-too", generalPractitioner=[{"reference": "urn:uuid:4f1c"}]),
    ]
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    result = ingest(tmp_path / "in.ndjson", tmp_path / "store", workers=1)
    assert result.without_practice == 1
    assert result.practice_references == (2, "Organization/o2")
    report = result.report()
    assert "note: 1 patient(s) without a practice" in report
    assert "warning: 2 patient(s) name a practice without a ydernummer" in report
    assert "e.g. Organization/o2" in report
    (tmp_path / "in.ndjson").write_text(json.dumps(organization) + "\n")
    assert "practice" not in ingest(tmp_path / "in.ndjson", tmp_path / "clean").report()


def test_a_ydernummer_in_two_clusters_is_told(tmp_path: Path) -> None:
    """Found by QA: two Organizations of one ydernummer (one practice, several doctors) in two
    clusters left one cluster without the practice, by the input's order, without a word."""

    def organization(oid: str, number: str, cluster: str) -> str:
        identifier = {"system": "urn:oid:1.2.208.176.1.4", "value": number}
        return json.dumps(
            {
                "resourceType": "Organization",
                "id": oid,
                "identifier": [identifier],
                "partOf": {"reference": f"Organization/{cluster}"},
            }
        )

    lines = [
        organization("a", "111111", "klynge-1"),
        organization("b", "111111", "klynge-2"),
        organization("c", "222222", "klynge-1"),
        organization("d", "222222", "klynge-1"),  # one practice, one cluster: no conflict
    ]
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    result = ingest(tmp_path / "in.ndjson", tmp_path / "store", workers=1)
    assert result.cluster_conflicts == {"111111": ("klynge-1", "klynge-2")}
    assert clusters_of(tmp_path / "store") == {"111111": "klynge-2", "222222": "klynge-1"}
    assert (
        "warning: 1 ydernummer(s) in more than one cluster by their Organizations' partOf, e.g. "
        "111111 in klynge-1, klynge-2: the last (klynge-2) is used" in result.report()
    )


def test_the_quarantine_is_in_input_order_when_chunks_finish_out_of_order(tmp_path: Path) -> None:
    """Two workers take the largest chunks first; the quarantine still lists the bad lines by
    file, then line, with the line numbers of the whole file."""
    source = tmp_path / "ndjson"
    source.mkdir()
    good = {"resourceType": "Patient", "birthDate": "1950-01-01", "gender": "male"}
    for name, lines in (("A.ndjson", 40), ("B.ndjson", 400), ("C.ndjson", 4)):
        rows = [json.dumps({**good, "id": f"{name}-{n}"}) for n in range(lines)]
        for bad in range(0, lines, 3):
            rows[bad] = "{not json"
        (source / name).write_text("\n".join(rows) + "\n")
    result = ingest(source, tmp_path / "store", workers=2, chunk_bytes=2_000)
    quarantine = [
        json.loads(line)
        for line in (tmp_path / "store" / "quarantine.ndjson").read_text().splitlines()
    ]
    want = [
        (name, bad + 1)
        for name, lines in (("A.ndjson", 40), ("B.ndjson", 400), ("C.ndjson", 4))
        for bad in range(0, lines, 3)
    ]
    assert [(q["file"], q["line"]) for q in quarantine] == want
    assert result.quarantined == len(want)
    assert result.patients == 444 - len(want)


def test_a_reference_resource_whose_type_is_spelt_with_escapes_is_used(tmp_path: Path) -> None:
    """Found in review: the scan for Organizations and Medications looked for the type's name as
    written, and an Organization written "Organi\\u007aation" (valid JSON, the same resource)
    was passed over: its patients lost their practice."""
    ydernummer = {"system": "urn:oid:1.2.208.176.1.4", "value": "123456"}
    organization = json.dumps(
        {"resourceType": "Organization", "id": "o1", "identifier": [ydernummer]}
    )
    medication = json.dumps(
        {
            "resourceType": "Medication",
            "id": "m1",
            "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]},
        }
    )
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "birthDate": "1950-01-01",
        "generalPractitioner": [{"reference": "Organization/o1"}],
    }
    statement = {
        "resourceType": "MedicationStatement",
        "id": "s1",
        "status": "active",
        "subject": {"reference": "Patient/p"},
        "medicationReference": {"reference": "Medication/m1"},
        "effectivePeriod": {"start": "2026-01-01"},
    }
    lines = [
        organization.replace("Organization", "Organi\\u007aation"),
        medication.replace("Medication", "\\u004dedication"),
        json.dumps(patient),
        json.dumps(statement),
    ]
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    result = ingest(tmp_path / "in.ndjson", tmp_path / "store")
    assert (result.quarantined, result.without_practice) == (0, 0)
    patients = pq.read_table(tmp_path / "store" / "patients.parquet").to_pylist()
    assert [(p["patient"], p["practice"]) for p in patients] == [("p", "123456")]
    medications = pq.read_table(tmp_path / "store" / "medications.parquet").to_pylist()
    assert [m["resource"] for m in medications] == ["MedicationStatement/s1"]


def test_each_reference_needle_holds_the_byte_searched_first() -> None:
    """A block without the byte is passed over: the byte must be part of the type name."""
    assert all(byte in needle for byte, needle in _NEEDLES)
