"""The store's record of exports from servers: what --since-last starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.population.server_export import (
    current_export,
    last_transaction_time,
    record_ingested,
)

URL = "https://fhir.example.dk/fhir"


def test_the_time_is_recorded_per_server_and_the_files_removed(tmp_path: Path) -> None:
    assert last_transaction_time(tmp_path, URL) is None
    current_export(tmp_path).mkdir(parents=True)
    (current_export(tmp_path) / "Patient.ndjson").write_text("{}\n")
    assert record_ingested(tmp_path, URL + "/", "2026-11-01T10:00:00.000Z") is None
    record_ingested(tmp_path, "https://other.example.dk/fhir", "2026-11-02T10:00:00.000Z")
    assert last_transaction_time(tmp_path, URL) == "2026-11-01T10:00:00.000Z"
    assert not current_export(tmp_path).exists()


def test_an_unreadable_record_is_an_error_not_a_full_export(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "last.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="cannot be read"):
        last_transaction_time(tmp_path, URL)


def test_the_servers_error_files_are_kept(tmp_path: Path) -> None:
    errors = current_export(tmp_path) / "errors"
    errors.mkdir(parents=True)
    (errors / "OperationOutcome.ndjson").write_text('{"resourceType": "OperationOutcome"}\n')
    kept = record_ingested(tmp_path, URL, "2026-11-01T10:00:00.000Z")
    assert kept == tmp_path / "exports" / "errors-2026-11-01T100000.000Z"
    assert (kept / "OperationOutcome.ndjson").is_file()
    assert not current_export(tmp_path).exists()
