"""Ingest: NDJSON into the facts store with nothing dropped silently."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq

from engine.population.ingest import _NEEDLES, ingest
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


def test_each_reference_needle_holds_the_byte_searched_first() -> None:
    """A block without the byte is passed over: the byte must be part of the type name."""
    assert all(byte in needle for byte, needle in _NEEDLES)
