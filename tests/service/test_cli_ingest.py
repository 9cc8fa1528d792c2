"""`vejviser ingest`: options, counts printed, no progress bars in captured output."""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from engine.population.ingest import IngestSettingError
from fhir_adapter.backend_auth import BackendServicesAuth, public_jwks
from fhir_adapter.bulk import ExportResult, Manifest
from service.cli import _outcome_report, app
from synth.population import write_population
from tests.support.populations import population
from tests.support.sekmet import FastSekmet, SekmetServer, running

runner = CliRunner()


def test_ingest_prints_counts_and_updates_in_place(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 30, 2, 1, 8, dt.date(2026, 10, 1))
    args = ["ingest", str(tmp_path / "ndjson"), "--store", str(tmp_path / "store")]
    first = runner.invoke(app, [*args, "--workers", "2", "--chunk-mb", "1"])
    assert first.exit_code == 0, first.output
    assert "30 patients" in first.output
    assert "quarantined" in first.output and "resources/s" in first.output
    assert "quarantined lines, each" not in first.output  # none: no pointer to an empty file
    assert "━" not in first.output  # no progress bar when not on a terminal
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    again = runner.invoke(app, [*args, "--quiet"])
    assert again.exit_code == 0, again.output
    assert f"snapshot {manifest['snapshot']} (unchanged)" in again.output


def test_ingest_names_the_files_of_a_directory_it_does_not_read(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    (source / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    (source / "stray-bundle.json").write_text(json.dumps(bundle))
    (source / "README.txt").write_text("the export of 2026-11-01\n")
    (source / ".DS_Store").write_bytes(b"\0")
    result = runner.invoke(app, ["ingest", str(source), "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "1 file(s), 1 line(s): 1 patients" in result.output
    assert "not read, since not NDJSON: README.txt, stray-bundle.json" in result.output
    only = runner.invoke(
        app, ["ingest", str(source / "Patient.ndjson"), "--store", str(tmp_path / "s2")]
    )
    assert only.exit_code == 0 and "not read" not in only.output


def test_ingest_takes_a_memory_limit_and_refuses_one_duckdb_does_not(tmp_path: Path) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    (tmp_path / "in.ndjson").write_text(json.dumps(patient) + "\n")
    args = ["ingest", str(tmp_path / "in.ndjson"), "--store", str(tmp_path / "store")]
    bad = runner.invoke(app, [*args, "--memory-limit", "lots"])
    assert bad.exit_code == 2 and "bad DuckDB memory limit 'lots'" in bad.output, bad.output
    assert not (tmp_path / "store").exists()
    small = runner.invoke(app, [*args, "--memory-limit", "1KB"])
    assert small.exit_code == 2 and "does not fit in the memory limit '1KB'" in small.output
    assert "Traceback" not in small.output and not (tmp_path / "store").exists()
    good = runner.invoke(app, [*args, "--memory-limit", "512MB"])
    assert good.exit_code == 0 and "1 patients" in good.output, good.output


def test_ingest_says_where_the_quarantine_and_the_issues_are(tmp_path: Path) -> None:
    orphan = {"resourceType": "Observation", "id": "o1", "status": "final"}  # no subject
    (tmp_path / "in.ndjson").write_text("{not json\n" + json.dumps(orphan) + "\n")
    store = tmp_path / "store"
    result = runner.invoke(app, ["ingest", str(tmp_path / "in.ndjson"), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "1 line(s) quarantined, 1 resource issue(s)" in result.output
    quarantine, issues = store / "quarantine.ndjson", store / "issues.ndjson"
    assert f"quarantined lines, each with its file, line and reason: {quarantine}" in result.output
    assert f"resource issues, each with its resource and reason: {issues}" in result.output
    assert json.loads(quarantine.read_text())["line"] == 1
    assert json.loads(issues.read_text())["resource"] == "Observation/o1"


def test_ingest_removes_the_resources_of_deleted_files(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 30, 2, 1, 8, dt.date(2026, 10, 1))
    store = tmp_path / "store"
    first = runner.invoke(app, ["ingest", str(tmp_path / "ndjson"), "--store", str(store)])
    assert first.exit_code == 0, first.output
    patient = sorted(store_patients(store))[0]
    entries = [
        {"request": {"method": "DELETE", "url": f"Patient/{patient}"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=x"}},
    ]
    deleted = tmp_path / "deleted"
    deleted.mkdir()
    (deleted / "Bundle.ndjson").write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}) + "\n"
    )
    (tmp_path / "empty").mkdir()
    args = ["ingest", str(tmp_path / "empty"), "--store", str(store), "--deleted", str(deleted)]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "deleted on the server: 1 resource(s), 1 of them removed from the store" in result.output
    assert f"{tmp_path / 'empty'} holds no NDJSON files (*.ndjson, *.ndjson.gz)" in result.output
    assert "1 line(s) of the deleted files have an entry that names no resource" in result.output
    assert patient not in store_patients(store) and len(store_patients(store)) == 29
    missing = runner.invoke(app, [*args[:4], "--deleted", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_a_gzipped_deleted_file_in_a_directory_is_applied(tmp_path: Path) -> None:
    """Only *.ndjson was looked for: a server's Bundle.ndjson.gz deleted nothing, silently."""
    write_population(tmp_path / "ndjson", 5, 1, 1, 8, dt.date(2026, 10, 1))
    store = tmp_path / "store"
    assert (
        runner.invoke(app, ["ingest", str(tmp_path / "ndjson"), "--store", str(store)]).exit_code
        == 0
    )
    patient = sorted(store_patients(store))[0]
    entry = {"request": {"method": "DELETE", "url": f"Patient/{patient}"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    (tmp_path / "deleted").mkdir()
    (tmp_path / "deleted" / "Bundle.ndjson.gz").write_bytes(
        gzip.compress(json.dumps(bundle).encode())
    )
    (tmp_path / "empty").mkdir()
    args = ["ingest", str(tmp_path / "empty"), "--store", str(store)]
    result = runner.invoke(app, [*args, "--deleted", str(tmp_path / "deleted")])
    assert result.exit_code == 0, result.output
    assert "1 of them removed from the store" in result.output
    assert patient not in store_patients(store)


def files(directory: Path) -> set[str]:
    """The paths under a directory, but for lock files (one is made beside any store given)."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.suffix != ".lock"}


def test_a_store_ingest_cannot_use_is_refused_in_one_line(tmp_path: Path) -> None:
    """A directory that is not a store, a damaged manifest, a file for the store's parent: exit
    2 and the store as it was (they deleted files, replaced the store, or raised a traceback)."""
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    (tmp_path / "in.ndjson").write_text(json.dumps(patient) + "\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "results.parquet").write_bytes(b"PAR1")
    store = tmp_path / "store"
    assert (
        runner.invoke(app, ["ingest", str(tmp_path / "in.ndjson"), "--store", str(store)]).exit_code
        == 0
    )
    (store / "manifest.json").write_text('{"format": 3, "snap')
    (tmp_path / "afile").write_text("")
    cases = {
        "analysis": "is not a Vejviser store (no manifest.json of an ingest) and not empty",
        "store": "manifest.json cannot be read (",
        "afile/store": "afile is a file: it cannot hold the store",
    }
    for name, message in cases.items():
        before = files(tmp_path)
        args = ["ingest", str(tmp_path / "in.ndjson"), "--store", str(tmp_path / name)]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (name, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert files(tmp_path) == before, name
    assert (store / "manifest.json").read_text() == '{"format": 3, "snap'


def test_an_input_that_cannot_be_read_is_named_in_one_line(tmp_path: Path) -> None:
    """A dangling *.ndjson symlink in the source raised FileNotFoundError, a traceback."""
    write_population(tmp_path / "ndjson", 5, 1, 1, 8, dt.date(2026, 10, 1))
    (tmp_path / "ndjson" / "broken.ndjson").symlink_to(tmp_path / "gone.ndjson")
    args = ["ingest", str(tmp_path / "ndjson"), "--store", str(tmp_path / "store")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"cannot read {tmp_path / 'ndjson' / 'broken.ndjson'}: No such file" in result.output
    assert not (tmp_path / "store").exists()


def test_the_store_given_as_dot_from_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'.' has no name: a ValueError traceback, and a '..lock' left inside the store."""
    write_population(tmp_path / "ndjson", 5, 1, 1, 8, dt.date(2026, 10, 1))
    store = tmp_path / "store"
    assert (
        runner.invoke(app, ["ingest", str(tmp_path / "ndjson"), "--store", str(store)]).exit_code
        == 0
    )
    monkeypatch.chdir(store)
    again = runner.invoke(app, ["ingest", str(tmp_path / "ndjson"), "--store", "."])
    assert again.exit_code == 0, again.output
    assert "(unchanged)" in again.output
    assert not [p.name for p in store.iterdir() if p.name.startswith(".")]


def test_ingest_of_a_missing_source_fails(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2


# --- straight from a FHIR server ----------------------------------------------------------------

AS_OF = dt.date(2026, 10, 1)


def store_patients(store: Path) -> set[str]:
    return set(pq.read_table(store / "patients.parquet").column("patient").to_pylist())


def observation_values(store: Path) -> dict[str, float]:
    rows = pq.read_table(store / "observations.parquet").to_pylist()
    return {r["resource"]: r["value"] for r in rows}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SekmetServer]:
    """A server of its own: each test counts exactly what it exported."""
    with running(FastSekmet(tmp_path / "sekmet")) as started:
        yield started


def test_each_ingest_from_a_server_asks_it_again(server: SekmetServer, tmp_path: Path) -> None:
    first = population("x-", [1, 2])
    server.load(first)
    store = tmp_path / "store"
    args = ["ingest", server.base_url, "--store", str(store), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert store_patients(store) == {"x-p1", "x-p2"}
    assert not {"queued", "collecting", "writing"} & set(result.output.split())  # --quiet
    assert not (store / "exports" / "current").exists()  # ingested: the files are gone
    recorded = json.loads((store / "exports" / "last.json").read_text())
    assert list(recorded) == [server.base_url]

    lab = next(r for r in first if r["resourceType"] == "Observation" and "valueQuantity" in r)
    changed = {**lab, "valueQuantity": {**lab["valueQuantity"], "value": 123.0}}
    server.load([changed, *population("y-", [3], first[0])[1:]])
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert observation_values(store)[f"Observation/{lab['id']}"] == 123.0  # not last time's file
    assert store_patients(store) == {"x-p1", "x-p2", "y-p1"}
    assert json.loads((store / "exports" / "last.json").read_text()) != recorded


def test_since_last_exports_only_what_changed(server: SekmetServer, tmp_path: Path) -> None:
    server.load(population("s-", [4, 5]))
    store = tmp_path / "store"
    args = ["ingest", server.base_url, "--store", str(store), "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    before = observation_values(store)
    later = population("t-", [6])
    server.load(later)
    result = runner.invoke(app, [*args, "--since-last"])
    assert result.exit_code == 0, result.output
    assert f"{len(later)} line(s)" in result.output  # the new patient, nothing older came along
    assert store_patients(store) == {"s-p1", "s-p2", "t-p1"}
    assert set(before) < set(observation_values(store))  # the earlier export's data stay
    unchanged = runner.invoke(app, [*args, "--since-last"])
    assert unchanged.exit_code == 0, unchanged.output
    assert f"the export from {server.base_url} has no output files" in unchanged.output
    assert "exports/current" not in unchanged.output  # a directory deleted by then was named


def test_a_group_export_takes_the_groups_patients(server: SekmetServer, tmp_path: Path) -> None:
    resources = population("g-", [7, 8])
    group = {
        "resourceType": "Group",
        "id": "g-list",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": "Patient/g-p2"}}],
    }
    server.load([*resources, group])
    store = tmp_path / "store"
    args = ["ingest", server.base_url, "--store", str(store), "--level", "group", "--group"]
    result = runner.invoke(app, [*args, "g-list", "--quiet"])
    assert result.exit_code == 0, result.output
    assert store_patients(store) == {"g-p2"}


def test_an_ingest_into_a_store_in_use_touches_nothing(
    server: SekmetServer, tmp_path: Path
) -> None:
    """The export ran before the store was locked: two runs shared STORE/exports/current (the
    same .part files) and one ended in a FileNotFoundError traceback."""
    server.load(population("u-", [9]))
    store = tmp_path / "store"
    args = ["ingest", server.base_url, "--store", str(store), "--quiet"]
    with (tmp_path / ".store.lock").open("w") as held:  # another ingest holds the store
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert refused.output.strip() == f"another ingest into {store} is running"
    assert not store.exists()  # no export was made, nothing of the other run's touched


def test_an_interrupted_ingest_is_finished_by_the_next_run(
    server: SekmetServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.load(population("i-", [9]))
    store = tmp_path / "store"
    args = ["ingest", server.base_url, "--store", str(store), "--quiet"]

    def stopped(*args: object, **kwargs: object) -> None:
        raise IngestSettingError("stopped half-way")

    monkeypatch.setattr("engine.population.ingest.ingest", stopped)
    first = runner.invoke(app, args)
    assert first.exit_code == 2 and "stopped half-way" in first.output
    assert (store / "exports" / "current" / "export.json").is_file()  # the export is kept
    assert not (store / "exports" / "last.json").exists()  # ... and not counted as ingested
    monkeypatch.undo()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert store_patients(store) == {"i-p1"}
    assert not (store / "exports" / "current").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--level", "group"], "--level group needs --group"),
        (["--group", "g1"], "--group goes with --level group"),
        (["--since", "2026-01-01T00:00:00Z", "--since-last"], "not both"),
        (["--since-last"], "run without --since-last"),
        (["--client-id", "me"], "--client-id and --private-key go together"),
    ],
)
def test_export_options_are_checked_before_anything_is_asked(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    url = "http://127.0.0.1:9/fhir"  # nothing listens: a request would fail differently
    result = runner.invoke(app, ["ingest", url, "--store", str(tmp_path / "s"), *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_export_options_need_a_server(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 5, 1, 1, 8, AS_OF)
    args = ["ingest", str(tmp_path / "ndjson"), "--store", str(tmp_path / "s"), "--type", "Patient"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "need a server URL" in result.output


def test_backend_services_credentials_from_the_command_line(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "client.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    smart = FastSekmet(
        tmp_path / "sekmet",
        server_auth={
            "types": ["smart"],
            "smart_clients": [
                {"client_id": "cli", "jwks": public_jwks(key), "scopes": "system/*.cruds"}
            ],
        },
    )
    with running(smart), httpx2.Client() as http:
        writer = BackendServicesAuth(
            http,
            fhir_base_url=smart.base_url,
            client_id="cli",
            private_key=key,
            scope="system/*.cruds",
        )
        smart.load(population("a-", [10]), access_token=writer.access_token())
        store = tmp_path / "store"
        args = ["ingest", smart.base_url, "--store", str(store), "--quiet"]
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2
        assert f"the export from {smart.base_url} failed" in refused.output
        result = runner.invoke(app, [*args, "--client-id", "cli", "--private-key", str(pem)])
        assert result.exit_code == 0, result.output
        assert store_patients(store) == {"a-p1"}
        assert writer.access_token() not in result.output


def test_the_servers_remarks_are_not_called_errors() -> None:
    """An information OperationOutcome in the error files was reported as a resource the
    server could not export."""
    manifest = {"transactionTime": "2026-11-27T10:00:00Z", "request": "x", "output": []}
    result = ExportResult(Manifest.parse(manifest), Path("e"), {}, [], 0, information_count=1)
    assert _outcome_report(result) == [
        "the server reported 0 warning(s) and 1 information message(s) about the export "
        "(not errors)"
    ]
    errors = _outcome_report(replace(result, error_count=2, information_count=0))
    assert errors == ["the server reported 2 error(s): resources it could not export"]
