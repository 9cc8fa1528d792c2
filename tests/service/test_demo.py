"""The README's first command ends in `vejviser demo`: it must show every part working."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

from typer.testing import CliRunner

from rules.guideline_set import load_guidelines
from service.cli import app, default_guidelines
from service.demo import population_sweep


def test_demo_shows_library_sweep_examples_and_a_service_call(tmp_path: Path) -> None:
    args = ["demo", "--patients", "30", "--language", "en", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "== 1. Guideline library:" in result.output and " 0 failed." in result.output
    population = result.output.split("== 2.")[1].split("== 3.")[0]
    commands = [line for line in population.splitlines() if line.startswith("$ vejviser ")]
    assert [shlex.split(c)[2] for c in commands] == ["synth", "ingest", "sweep"]
    assert "30 patients in 3 practice(s) and 2 cluster(s)" in population
    assert "line(s) quarantined" in population  # ingest says what it did not take
    assert "30 synthetic patients, 3 practices" in population
    assert "patients on its list" in population
    assert "None" not in population and "(suppressed: fewer than 5 patients" in population
    assert list(tmp_path.glob("sweeps/*/manifest.json"))
    assert "== 3. ihd-diabetes.json: Patient/inge" in result.output
    section = result.output.split("== 4.")[1]
    assert "[warning] HbA1c 67 mmol/mol" in section

    # The synth command shown writes the very files the demo ingested.
    synth = shlex.split(commands[0])[2:]
    shown = Path(synth[synth.index("--out") + 1])
    again = tmp_path / "again"
    synth[synth.index("--out") + 1] = str(again)
    assert CliRunner().invoke(app, synth).exit_code == 0
    files = sorted(p.name for p in shown.glob("*.ndjson"))
    assert files and files == sorted(p.name for p in again.glob("*.ndjson"))
    assert all((shown / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_a_demo_population_smaller_than_its_practices(tmp_path: Path) -> None:
    guidelines = load_guidelines(default_guidelines())
    shown = population_sweep(guidelines, 2, 2026, dt.date(2026, 7, 2), tmp_path)
    assert "--patients 2 --practices 2 --clusters 2" in shown
    assert "2 synthetic patients, 2 practices" in shown
