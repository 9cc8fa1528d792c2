"""`vejviser ingest`: options, counts printed, no progress bars in captured output."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from synth.population import write_population

runner = CliRunner()


def test_ingest_prints_counts_and_updates_in_place(tmp_path: Path) -> None:
    write_population(tmp_path / "ndjson", 30, 2, 1, 8, dt.date(2026, 10, 1))
    args = ["ingest", str(tmp_path / "ndjson"), "--store", str(tmp_path / "store")]
    first = runner.invoke(app, [*args, "--workers", "2", "--chunk-mb", "1"])
    assert first.exit_code == 0, first.output
    assert "30 patients" in first.output
    assert "quarantined" in first.output and "resources/s" in first.output
    assert "━" not in first.output  # no progress bar when not on a terminal
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    again = runner.invoke(app, [*args, "--quiet"])
    assert again.exit_code == 0, again.output
    assert f"snapshot {manifest['snapshot']} (unchanged)" in again.output


def test_ingest_of_a_missing_source_fails(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
