"""Streaming ingest: the same facts as normalise + facts_tables, upserts, an atomic store."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.population import chunks
from engine.population import ingest as ingest_module
from engine.population.ingest import (
    ISSUES,
    QUARANTINE,
    STORE_FORMAT,
    IngestInProgressError,
    inflated,
    ingest,
    ndjson_files,
)
from engine.population.store import (
    FACT_TABLES,
    MANIFEST,
    StoreError,
    load_store,
    snapshot_of,
    write_store,
)
from engine.population.tables import facts_tables
from fhir_adapter.normalise import FhirInputError, normalise
from rules.guideline_set import load_guidelines
from synth.population import write_population
from tests.engine.population.synthetic import LIBRARY

AS_OF = dt.date(2026, 10, 1)


def read_lines(source: Path) -> list[Any]:
    """Every JSON object of the files in ingest order (what the in-memory path normalised)."""
    resources = []
    for path in ndjson_files(source):
        for line in path.read_bytes().split(b"\n"):
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(resource, dict):
                resources.append(resource)
    return resources


def resolved(tables: dict[str, pa.Table]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of each fact table, sorted, with integer codes replaced by (system, value)."""
    codes = {row["code"]: (row["system"], row["value"]) for row in tables["codes"].to_pylist()}
    out = {}
    for name in FACT_TABLES:
        rows = []
        for row in tables[name].to_pylist():
            if name == "codes":
                row = {"coding": (row["system"], row["value"])}
            elif "code" in row:
                row["code"] = codes[row["code"]]
            rows.append(tuple(row.items()))
        out[name] = sorted(rows, key=repr)
    return out


def store_tables(store: Path) -> dict[str, pa.Table]:
    return {name: pq.read_table(store / f"{name}.parquet") for name in FACT_TABLES}


def store_issues(store: Path) -> Counter[tuple[str, str]]:
    lines = (store / ISSUES).read_text(encoding="utf-8").splitlines()
    return Counter((i["resource"], i["reason"]) for i in map(json.loads, lines))


def expected_issues(resources: list[Any]) -> Counter[tuple[str, str]]:
    patients = normalise(resources)
    found = [*patients.issues, *(i for p in patients.values() for i in p.issues)]
    return Counter((i.resource, i.reason) for i in found)


def dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False)


def first_line(path: Path, predicate: Any) -> dict[str, Any]:
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            resource = json.loads(line)
        except json.JSONDecodeError:
            continue
        if predicate(resource):
            return resource
    raise AssertionError(f"nothing in {path.name} matches")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic population (with its malformed lines) plus every cross-resource awkwardness:
    duplicates in one file and across files, a duplicate Patient, a resource without an id, a
    patient not in the input, dead patients (dated, undated, unreadable date), statements beside
    a requests-only patient's prescriptions (of the same medication: the requests are not used;
    of another, or entered in error: they are), and a Medication that comes after the statement
    that refers to it."""
    source = tmp_path_factory.mktemp("noisy")
    write_population(source, 200, 3, 2, 31, AS_OF)  # two requests-only patients
    observations = source / "Observation.ndjson"
    lab = first_line(observations, lambda r: "valueQuantity" in r and r["status"] == "final")
    panel = first_line(observations, lambda r: "component" in r)
    changed = {**lab, "valueQuantity": {**lab["valueQuantity"], "value": 99.5}}
    patient = first_line(source / "Patient.ndjson", lambda r: True)
    statements = {
        r["subject"]["reference"]
        for r in map(json.loads, (source / "MedicationStatement.ndjson").read_text().splitlines())
    }
    requests_only = first_line(
        source / "MedicationRequest.ndjson",
        lambda r: r["subject"]["reference"] not in statements,
    )
    other = first_line(  # the other requests-only patient: rx1-4 atorvastatin, rx5-7 aspirin
        source / "MedicationRequest.ndjson",
        lambda r: (
            r["subject"]["reference"] not in {*statements, requests_only["subject"]["reference"]}
        ),
    )
    prescribed = {
        r["id"]: r
        for r in map(json.loads, (source / "MedicationRequest.ndjson").read_text().splitlines())
    }
    subject_of_other = other["subject"]["reference"].removeprefix("Patient/")

    def stated(sid: str, rx: str, **fields: object) -> str:
        request = prescribed[f"{subject_of_other}-{rx}"]
        statement = {
            "resourceType": "MedicationStatement",
            "id": sid,
            "status": "active",
            "subject": other["subject"],
            "medicationCodeableConcept": request["medicationCodeableConcept"],
            "effectivePeriod": {"start": "2025-01-01"},
        }
        return dumps({**statement, **fields})

    subject = lab["subject"]
    extra = [
        dumps(changed),  # "Extra" sorts before "Observation": this one is first and used
        dumps({**panel, "effectiveDateTime": "2020-01-01"}),
        dumps({**patient, "birthDate": "1901-01-01"}),
        dumps({k: v for k, v in lab.items() if k != "id"}),  # named by its position
        dumps({**lab, "id": "ghost", "subject": {"reference": "Patient/not-there"}}),
        dumps({**lab, "id": "twice"}),
        dumps({**lab, "id": "twice", "valueQuantity": {**lab["valueQuantity"], "value": 1}}),
        dumps({"id": "typeless"}),
        "",
        "[1, 2]",
        dumps(
            {
                "resourceType": "MedicationStatement",
                "id": "switch-off",
                "status": "active",
                "subject": requests_only["subject"],
                "medicationReference": {"reference": "Medication/late"},
                "effectivePeriod": {"start": "2025-01-01"},
            }
        ),
        stated("covers-rx1-4", "rx1"),
        stated("in-error", "rx5", status="entered-in-error"),
        # ended before rx5-7 were written: they restart it
        stated(
            "ended",
            "rx5",
            status="stopped",
            effectivePeriod={"start": "2010-01-01", "end": "2011-01-01"},
        ),
        dumps({**lab, "id": "no-subject", "subject": None}),
        dumps({**patient, "id": "dead-dated", "deceasedDateTime": "2025-03-01T10:00:00+01:00"}),
        dumps({**patient, "id": "dead-undated", "deceasedBoolean": True}),
        dumps({**patient, "id": "dead-garbled", "deceasedDateTime": "last spring"}),
    ]
    (source / "Extra.ndjson").write_text("\n".join(extra) + "\n", encoding="utf-8")
    late = {
        "resourceType": "Medication",
        "id": "late",
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]},
    }
    (source / "Zeta.ndjson").write_text(
        dumps(late) + "\n" + dumps({**lab, "subject": subject, "id": lab["id"]}) + "\n"
    )
    return source


@pytest.mark.parametrize(("workers", "chunk_bytes"), [(1, 1 << 20), (2, 40_000)])
def test_streaming_ingest_equals_normalise_and_facts_tables(
    noisy: Path, tmp_path: Path, workers: int, chunk_bytes: int
) -> None:
    resources = read_lines(noisy)
    expected = facts_tables(normalise(resources).values())
    summary = ingest(noisy, tmp_path / "store", workers=workers, chunk_bytes=chunk_bytes)
    got = resolved(store_tables(tmp_path / "store"))
    want = resolved(expected)
    for name in FACT_TABLES:
        assert got[name] == want[name], name
    assert store_issues(tmp_path / "store") == expected_issues(resources)
    assert summary.lines == len(resources) + 1  # the JSON array is quarantined
    assert summary.patients == expected["patients"].num_rows
    quarantine = (tmp_path / "store" / QUARANTINE).read_text().splitlines()
    assert len(quarantine) == summary.quarantined
    reasons = [json.loads(q) for q in quarantine]
    assert {"file": "Extra.ndjson", "line": 10, "reason": "not a JSON object"} in reasons
    # the deliberate edge cases are really in the input
    names = {row["resource"] for row in expected["observations"].to_pylist()}
    assert "Observation/twice" in names
    assert any(name.startswith("Observation #") for name in names)
    assert "Observation/ghost" not in names
    medications = {row["resource"] for row in expected["medications"].to_pylist()}
    assert "MedicationStatement/switch-off" in medications  # its Medication came later
    other = first_line(
        noisy / "Extra.ndjson", lambda r: isinstance(r, dict) and r.get("id") == "covers-rx1-4"
    )
    pid = other["subject"]["reference"].removeprefix("Patient/")
    assert not {f"MedicationRequest/{pid}-rx{n}" for n in range(1, 5)} & medications
    assert f"MedicationRequest/{pid}-rx5" in medications  # beside a statement entered in error
    assert "MedicationStatement/ended" in medications  # and one that ended before it was written
    switch_off = first_line(
        noisy / "Extra.ndjson", lambda r: isinstance(r, dict) and r.get("id") == "switch-off"
    )
    pid = switch_off["subject"]["reference"].removeprefix("Patient/")
    assert f"MedicationRequest/{pid}-rx1" in medications  # beside a statement of metformin
    sources = {row["source"] for row in expected["medications"].to_pylist()}
    assert sources == {"statement", "request"}  # the other requests-only patient


def test_chunking_and_workers_do_not_change_the_store(noisy: Path, tmp_path: Path) -> None:
    one = ingest(noisy, tmp_path / "a", workers=1, chunk_bytes=1 << 24)
    two = ingest(noisy, tmp_path / "b", workers=2, chunk_bytes=25_000)
    assert one.snapshot == two.snapshot
    for name in FACT_TABLES:
        assert store_tables(tmp_path / "a")[name].equals(store_tables(tmp_path / "b")[name])


def test_gzipped_files_ingest_as_their_content(noisy: Path, tmp_path: Path) -> None:
    """*.ndjson.gz in a directory, and a gzip file whatever its name, read as the plain files;
    the quarantine names the file as given."""
    plain = ingest(noisy, tmp_path / "plain", workers=2, chunk_bytes=25_000)
    packed = tmp_path / "packed"
    packed.mkdir()
    for path in ndjson_files(noisy):  # the same order: Patient.ndjson keeps its name, gzipped
        name = path.name if path.name == "Patient.ndjson" else f"{path.name}.gz"
        (packed / name).write_bytes(gzip.compress(path.read_bytes()))
    summary = ingest(packed, tmp_path / "store", workers=2, chunk_bytes=25_000)
    assert (summary.snapshot, summary.files, summary.lines) == (
        plain.snapshot,
        plain.files,
        plain.lines,
    )
    quarantine = [json.loads(q) for q in (tmp_path / "store" / QUARANTINE).read_text().splitlines()]
    assert {"file": "Extra.ndjson.gz", "line": 10, "reason": "not a JSON object"} in quarantine
    assert not list(tmp_path.glob(".store.ingest-*")), "the inflated copies are removed"
    assert "inflate" in summary.timings and "inflate" not in plain.timings


def test_a_broken_gzip_file_stops_the_ingest_and_names_it(noisy: Path, tmp_path: Path) -> None:
    ingest(noisy, tmp_path / "store", workers=1)
    before = store_tables(tmp_path / "store")
    broken = tmp_path / "broken"
    broken.mkdir()
    data = gzip.compress((noisy / "Extra.ndjson").read_bytes())
    (broken / "Extra.ndjson.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FhirInputError, match=r"Extra\.ndjson\.gz: not a readable gzip file"):
        ingest(broken, tmp_path / "store", workers=1)
    for name in FACT_TABLES:
        assert store_tables(tmp_path / "store")[name].equals(before[name])


def observation_rows(store: Path) -> list[dict[str, Any]]:
    return pq.read_table(store / "observations.parquet").to_pylist()


def test_a_re_export_never_duplicates(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 40, 2, 1, 3, AS_OF)
    first = ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    tables = store_tables(tmp_path / "store")
    second = ingest(tmp_path / "ndjson", tmp_path / "store", workers=2, chunk_bytes=30_000)
    assert second.snapshot == first.snapshot == snapshot_of(tmp_path / "store")
    assert (first.changed, second.changed) == (True, False)
    assert second.rows == first.rows
    for name in FACT_TABLES:
        assert store_tables(tmp_path / "store")[name].equals(tables[name])


def test_an_incremental_export_replaces_by_id_and_adds(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 40, 2, 1, 3, AS_OF)
    first = ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    before = observation_rows(tmp_path / "store")
    lab = first_line(
        tmp_path / "ndjson" / "Observation.ndjson",
        lambda r: "valueQuantity" in r and r["status"] == "final" and "code" in r,
    )
    update = tmp_path / "update"
    update.mkdir()
    changed = {**lab, "valueQuantity": {**lab["valueQuantity"], "value": 77.5}}
    new = {**lab, "id": "brand-new", "effectiveDateTime": "2026-09-30"}
    # an incremental export (_since): no Patient, no Organization
    (update / "Observation.ndjson").write_text(dumps(changed) + "\n" + dumps(new) + "\n")
    second = ingest(update, tmp_path / "store", workers=2)
    after = observation_rows(tmp_path / "store")
    name = f"Observation/{lab['id']}"
    assert [r["value"] for r in after if r["resource"] == name] == [77.5]
    assert [r["resource"] for r in after if r["resource"] == "Observation/brand-new"] == [
        "Observation/brand-new"
    ]
    assert len(after) == len(before) + 1
    assert second.snapshot != first.snapshot
    assert second.patients == first.patients
    practices = {r["practice"] for r in pq.read_table(tmp_path / "store" / "patients.parquet").to_pylist()}  # fmt: skip
    assert all(p and p.isdigit() for p in practices)  # ydernumre, kept from the first export
    # the same incremental export again changes nothing
    assert ingest(update, tmp_path / "store").snapshot == second.snapshot


def name_of(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def test_deleted_resources_leave_the_store(tmp_path: Path) -> None:
    """A _since export's deletions: the store equals the normalisation of what is left."""
    write_population(tmp_path / "ndjson", 40, 2, 1, 3, AS_OF)
    first = ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    clusters_before = json.loads((tmp_path / "store" / MANIFEST).read_text())["clusters"]
    resources = read_lines(tmp_path / "ndjson")
    observations = [r for r in resources if r["resourceType"] == "Observation" and "id" in r]
    gone, resent = observations[0], observations[1]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    practice = next(r for r in resources if r["resourceType"] == "Organization" and "partOf" in r)
    changed = {**resent, "status": "amended"}
    update = tmp_path / "update"
    update.mkdir()
    (update / "Observation.ndjson").write_text(dumps(changed) + "\n")
    deleted = {name_of(gone), name_of(patient), name_of(practice), name_of(resent)}
    second = ingest(update, tmp_path / "store", workers=2, deleted={*deleted, "Goal/never-was"})

    left = [r for r in resources if "id" not in r or name_of(r) not in deleted]
    expected = facts_tables(normalise([*left, changed]).values())
    got = resolved(store_tables(tmp_path / "store"))
    want = resolved(expected)
    for name in ("observations", "medications", "conditions", "goals"):
        assert got[name] == want[name], name
    # Patients keep the practice resolved when they were ingested (docs/ingest.md, Limits);
    # normalise without the Organization would not find it, so compare them by id.
    assert [r[0] for r in got["patients"]] == [r[0] for r in want["patients"]]
    stored = store_tables(tmp_path / "store")["patients"].column("patient").to_pylist()
    assert patient["id"] not in stored
    assert second.patients == first.patients - 1
    assert (second.deletions, second.deleted) == (5, 3)  # resent is kept; Goal/never-was never was
    assert "deleted on the server: 5 resource(s), 3 of them removed" in second.report()
    ydernummer = next(
        i["value"] for i in practice["identifier"] if i["system"] == "urn:oid:1.2.208.176.1.4"
    )
    assert ydernummer in clusters_before
    assert ydernummer not in json.loads((tmp_path / "store" / MANIFEST).read_text())["clusters"]


def test_what_else_the_store_holds_survives_the_swap(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    (tmp_path / "store" / "export").mkdir()
    (tmp_path / "store" / "export" / "export.json").write_text("{}")
    ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    assert (tmp_path / "store" / "export" / "export.json").read_text() == "{}"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")]
    assert leftovers in ([], [".store.lock"])


def test_a_failed_ingest_leaves_the_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    first = ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").glob("*.parquet")}
    update = tmp_path / "update"
    update.mkdir()
    (update / "Patient.ndjson").write_text(dumps({"resourceType": "Patient", "id": "new"}) + "\n")

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("engine.population.ingest._swap", crash)
    with pytest.raises(OSError, match="disk full"):
        ingest(update, tmp_path / "store", workers=1)
    after = {p.name: p.read_bytes() for p in (tmp_path / "store").glob("*.parquet")}
    assert after == before
    assert snapshot_of(tmp_path / "store") == first.snapshot
    assert not list(tmp_path.glob(".store.ingest-*"))


def test_an_empty_input_gives_an_empty_store(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    summary = ingest(tmp_path / "empty", tmp_path / "store", workers=2)
    assert (summary.lines, summary.patients, summary.issues) == (0, 0, 0)
    assert all(t.num_rows == 0 for t in store_tables(tmp_path / "store").values())


def test_a_second_ingest_into_the_same_store_is_refused(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 5, 1, 1, 3, AS_OF)
    with (tmp_path / ".store.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(IngestInProgressError):
            ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    assert not (tmp_path / "store").exists()


def test_a_file_in_the_stores_place_is_refused_and_kept(tmp_path: Path) -> None:
    """It was swapped for the new store, failed the copy of what else the store held, and was
    removed with the working directory: a user's file lost for a mistyped --store."""
    write_population(tmp_path / "ndjson", 5, 1, 1, 3, AS_OF)
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(StoreError, match="is a file"):
        ingest(tmp_path / "ndjson", tmp_path / "notes.txt", workers=1)
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ndjson", "notes.txt"]


def test_a_store_of_an_older_format_is_never_merged_into(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 20, 1, 1, 3, AS_OF)
    ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    manifest = tmp_path / "store" / MANIFEST
    written = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**written, "format": STORE_FORMAT - 1}))
    with pytest.raises(StoreError, match=r"store format 2.*new directory"):
        ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    assert json.loads(manifest.read_text())["format"] == STORE_FORMAT - 1  # left as it was


def test_a_sweep_refuses_a_store_without_the_columns_it_reads(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 20, 1, 1, 3, AS_OF)
    ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    path = tmp_path / "store" / "patients.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["deceased", "deceased_on"]), path)
    with duckdb.connect() as con, pytest.raises(StoreError, match="deceased, deceased_on"):
        load_store(con, tmp_path / "store", load_guidelines(LIBRARY))


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store, by its path in it: what must not change when an ingest refuses."""
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def test_a_store_reached_through_a_symlink_is_updated_as_itself(tmp_path: Path) -> None:
    """The exchange swapped the symlink, rmtree refused it, the real store kept its old snapshot
    and lost exports/ (and a lock beside the link let the store be ingested under two names)."""
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    real = tmp_path / "real" / "store"
    ingest(tmp_path / "ndjson", real, workers=1)
    (real / "exports").mkdir()
    (real / "exports" / "last.json").write_text("{}")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "store"
    link.symlink_to(real)
    patient = {"resourceType": "Patient", "id": "brand-new", "birthDate": "1950-01-01"}
    (tmp_path / "new.ndjson").write_text(dumps(patient) + "\n")
    summary = ingest(tmp_path / "new.ndjson", link, workers=1)
    assert link.is_symlink() and link.resolve() == real
    assert snapshot_of(real) == summary.snapshot and summary.patients == 11
    assert (real / "exports" / "last.json").read_text() == "{}"
    assert (tmp_path / "real" / ".store.lock").exists()
    assert not list((tmp_path / "links").glob(".store*"))


@pytest.mark.parametrize(
    "files",
    [
        {"results-2025.parquet": b"PAR1", "notes.txt": b"notes"},
        {"manifest.json": b'{"mine": 1}', "notes.txt": b"notes"},  # someone else's manifest
    ],
    ids=["no manifest", "another manifest"],
)
def test_a_directory_that_is_not_a_store_is_refused_and_kept(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    """Its *.parquet files and a manifest.json were deleted by the swap, without a word."""
    write_population(tmp_path / "ndjson", 5, 1, 1, 3, AS_OF)
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    for name, data in files.items():
        (analysis / name).write_bytes(data)
    with pytest.raises(StoreError, match=r"is not a Vejviser store .* new or empty directory"):
        ingest(tmp_path / "ndjson", analysis, workers=1)
    assert store_bytes(analysis) == files


def test_a_new_empty_or_write_store_directory_is_ingested_into(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 5, 1, 1, 3, AS_OF)
    (tmp_path / "empty").mkdir()
    cli = tmp_path / "cli"  # what the CLI writes into a new store before the ingest
    (cli / "exports" / "current").mkdir(parents=True)
    (cli / "bundles").mkdir()
    resources = read_lines(tmp_path / "ndjson")
    write_store(facts_tables(normalise(resources).values()), tmp_path / "written")
    for name in ("new", "empty", "cli", "written"):
        assert ingest(tmp_path / "ndjson", tmp_path / name, workers=1).patients == 5, name
    assert (cli / "exports" / "current").is_dir()


def test_a_store_whose_manifest_cannot_be_read_is_left_as_it_is(tmp_path: Path) -> None:
    """It was taken for no store at all and replaced by the new input: the staging was lost."""
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    store = tmp_path / "store"
    ingest(tmp_path / "ndjson", store, workers=1)
    manifest = store / MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated
    before = store_bytes(store)
    patient = {"resourceType": "Patient", "id": "brand-new", "birthDate": "1950-01-01"}
    (tmp_path / "new.ndjson").write_text(dumps(patient) + "\n")
    with pytest.raises(StoreError, match=r"manifest\.json cannot be read \(.*left as it is"):
        ingest(tmp_path / "new.ndjson", store, workers=1)
    assert store_bytes(store) == before


def test_an_ingest_killed_just_after_the_exchange_loses_no_export_record(tmp_path: Path) -> None:
    """Then the old store, with exports/ (what --since-last reads), sits in the killed ingest's
    work directory; the next ingest removed that directory and exports/ with it."""
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    store = tmp_path / "store"
    ingest(tmp_path / "ndjson", store, workers=1)
    (store / "exports").mkdir()
    (store / "exports" / "last.json").write_text('{"transactionTime": "2026-11-01T00:00:00Z"}')
    killed = tmp_path / ".store.ingest-99999" / "store"  # the old store, after the exchange
    killed.mkdir(parents=True)
    (store / "exports").rename(killed / "exports")
    ingest(tmp_path / "ndjson", store, workers=1)
    assert (store / "exports" / "last.json").read_text().startswith('{"transactionTime"')
    assert not killed.parent.exists()


def test_a_full_disk_is_said_in_one_line_and_the_store_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's part file that did not fit was an OSError traceback; the decompressed copy of
    a gzip input that did not fit blamed the input ("not a readable gzip file")."""
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    store = tmp_path / "store"
    ingest(tmp_path / "ndjson", store, workers=1)
    before = store_bytes(store)

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks.pq, "write_table", full)  # workers=1: chunks are read here
    with pytest.raises(StoreError, match=r"the disk under .* is full \(.*No space left"):
        ingest(tmp_path / "ndjson", store, workers=1)
    assert store_bytes(store) == before
    packed = tmp_path / "Patient.ndjson.gz"
    packed.write_bytes(gzip.compress((tmp_path / "ndjson" / "Patient.ndjson").read_bytes()))
    with pytest.raises(OSError, match="No space left on device"):
        inflated(packed, Path("/dev/full"))  # writing to /dev/full fails with ENOSPC


def test_a_staging_copy_that_fails_beside_the_facts_fails_the_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging files are written on a second connection while the facts are derived: its
    failure must reach the caller as the facts' own would, and the store stay as it was."""
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    store = tmp_path / "store"
    ingest(tmp_path / "ndjson", store, workers=1)
    before = store_bytes(store)

    def full(cursor: duckdb.DuckDBPyConnection, directory: Path) -> None:
        cursor.close()
        raise duckdb.IOException("Could not write file: No space left on device")

    monkeypatch.setattr(ingest_module, "_write_staging", full)
    with pytest.raises(StoreError, match=r"the disk under .* is full \(.*No space left"):
        ingest(tmp_path / "ndjson", store, workers=2)
    assert store_bytes(store) == before


@pytest.mark.parametrize("damaged", ["observations.parquet", "reference.parquet"])
def test_a_store_whose_staging_cannot_be_read_is_left_as_it_is(
    tmp_path: Path, damaged: str
) -> None:
    """It was DuckDB's or pyarrow's traceback."""
    write_population(tmp_path / "ndjson", 10, 1, 1, 3, AS_OF)
    store = tmp_path / "store"
    ingest(tmp_path / "ndjson", store, workers=1)
    part = store / "staging" / damaged
    part.write_bytes(part.read_bytes()[:100])  # a copy cut short
    before = store_bytes(store)
    with pytest.raises(StoreError, match=r"staging cannot be read \(.*left as it is"):
        ingest(tmp_path / "ndjson", store, workers=1)
    assert store_bytes(store) == before


@pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
def test_an_input_that_cannot_be_read_is_named_before_the_store_is_touched(
    tmp_path: Path, kind: str
) -> None:
    """Each raised its OSError (a traceback from the CLI). chmod 000 would not stop root."""
    write_population(tmp_path / "ndjson", 5, 1, 1, 3, AS_OF)
    bad = tmp_path / "ndjson" / "bad.ndjson"
    if kind == "directory":
        bad.mkdir()
    else:
        bad.symlink_to(tmp_path / "nowhere.ndjson")
    with pytest.raises(FhirInputError, match=r"cannot read .*bad\.ndjson: "):
        ingest(tmp_path / "ndjson", tmp_path / "store", workers=1)
    assert not (tmp_path / "store").exists()
