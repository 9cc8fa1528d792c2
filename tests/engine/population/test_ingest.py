"""Ingest: NDJSON into the facts store with nothing dropped silently."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq

from engine.population.ingest import ingest
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
