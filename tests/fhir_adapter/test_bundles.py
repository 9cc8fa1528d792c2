"""Bundle files (Synthea: one per patient) as NDJSON for ingest, references resolved."""

from __future__ import annotations

import fcntl
import gzip
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fhir_adapter.bundles import bundle_files, file_bytes, is_bundle_source, write_ndjson
from fhir_adapter.normalise import FhirInputError, normalise, read_resources
from service.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "transaction_urn_uuid.json"
PATIENT = "6c8e8a3e-0000-4000-8000-000000000001"
runner = CliRunner()


def lines(directory: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.ndjson"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_references_to_full_urls_become_type_and_id(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(FIXTURE, tmp_path / "in" / "patient.json")
    conversion = write_ndjson(tmp_path / "in", tmp_path / "out")
    assert (conversion.files, dict(conversion.resources)) == (
        1,
        {
            "Patient": 1,
            "Organization": 1,
            "Observation": 3,
            "Medication": 1,
            "MedicationRequest": 4,
            "Condition": 1,
        },
    )
    written = lines(tmp_path / "out")
    subjects = {r["subject"]["reference"] for r in written if "subject" in r}
    assert subjects == {f"Patient/{PATIENT}"}
    assert "urn:uuid:" not in json.dumps(written)
    # What ingest makes of the lines is what normalise makes of the Bundle itself.
    assert normalise(written) == normalise(read_resources(FIXTURE.read_bytes()))


def test_references_outside_the_bundle_and_malformed_entries_are_kept(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
            {
                "fullUrl": "urn:uuid:o",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o",
                    "subject": {"reference": "urn:uuid:p"},
                    "encounter": {"reference": "urn:uuid:not-in-the-bundle"},
                },
            },
            "not an entry",
        ],
    }
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(bundle).encode()))
    write_ndjson(tmp_path / "b.json.gz", tmp_path / "out")
    observation = json.loads((tmp_path / "out" / "Observation.ndjson").read_text())
    assert observation["subject"] == {"reference": "Patient/p"}
    assert observation["encounter"] == {"reference": "urn:uuid:not-in-the-bundle"}
    assert (tmp_path / "out" / "unknown.ndjson").read_text() == '"not an entry"\n'


def test_a_gzip_file_is_read_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    plain = FIXTURE.read_bytes()
    (tmp_path / "renamed.json").write_bytes(gzip.compress(plain))
    assert file_bytes(tmp_path / "renamed.json") == plain
    assert file_bytes(FIXTURE) == plain
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(plain)[:40])
    with pytest.raises(FhirInputError, match="not a readable gzip file"):
        file_bytes(tmp_path / "cut.json.gz")


def test_which_sources_are_bundles(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(b"{}"))
    (tmp_path / "notes.txt").write_text("")
    assert [p.name for p in bundle_files(tmp_path)] == ["a.json", "b.json.gz"]
    assert is_bundle_source(tmp_path) and is_bundle_source(tmp_path / "a.json")
    (tmp_path / "Patient.ndjson").write_text("")
    assert not is_bundle_source(tmp_path)  # NDJSON wins: a bulk export with its export.json
    assert not is_bundle_source(tmp_path / "Patient.ndjson")
    (tmp_path / "Patient.ndjson").unlink()
    (tmp_path / "export.json").write_text("{}")
    assert not is_bundle_source(tmp_path)  # an empty bulk export


def test_ingest_command_takes_a_directory_of_bundles(tmp_path: Path) -> None:
    source = tmp_path / "synthea"
    source.mkdir()
    (source / "one.json.gz").write_bytes(gzip.compress(FIXTURE.read_bytes()))
    store = tmp_path / "store"
    (store / "bundles").mkdir(parents=True)
    (store / "bundles" / "Stale.ndjson").write_text('{"resourceType": "Patient", "id": "old"}\n')
    result = runner.invoke(app, ["ingest", str(source), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "1 Bundle file(s), 11 resource(s)" in result.output
    assert "1 patients, 0 line(s) quarantined, 0 resource issue(s)" in result.output
    assert not (store / "bundles" / "Stale.ndjson").exists()
    assert pq.read_table(store / "patients.parquet").column("patient").to_pylist() == [PATIENT]
    assert pq.read_table(store / "observations.parquet").num_rows == 4  # BP panel: 2 rows


def test_ingest_command_names_a_bundle_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.json").write_text("{not json")
    result = runner.invoke(app, ["ingest", str(tmp_path / "in"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "broken.json" in result.output and "not valid JSON" in result.output


def test_a_second_ingest_of_bundles_leaves_the_running_ones_input_alone(tmp_path: Path) -> None:
    """The conversion rewrote STORE/bundles, the input of the ingest already running, before
    the ingest's lock refused the second one: the first then built a store of mixed input."""
    (tmp_path / "in").mkdir()
    shutil.copy(FIXTURE, tmp_path / "in" / "one.json")
    store = tmp_path / "store"
    args = ["ingest", str(tmp_path / "in"), "--store", str(store)]
    assert runner.invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in (store / "bundles").iterdir()}
    (tmp_path / "other").mkdir()
    other = {"resourceType": "Patient", "id": "other"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": other}]}
    (tmp_path / "other" / "two.json").write_text(json.dumps(bundle))
    with (tmp_path / ".store.lock").open("w") as held:  # the first ingest is running
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = runner.invoke(app, ["ingest", str(tmp_path / "other"), "--store", str(store)])
    assert refused.exit_code == 2 and "another ingest" in refused.output, refused.output
    assert {p.name: p.read_bytes() for p in (store / "bundles").iterdir()} == before
