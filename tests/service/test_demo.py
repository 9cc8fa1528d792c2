"""The README's first command ends in `vejviser demo`: it must show every part working."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from service.cli import app


def test_demo_shows_library_sweep_examples_and_a_service_call(tmp_path: Path) -> None:
    args = ["demo", "--patients", "30", "--language", "en", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "== 1. Guideline library:" in result.output and " 0 failed." in result.output
    assert "30 synthetic patients, 3 practices" in result.output
    assert "patients on its list" in result.output
    sweep = result.output.split("== 2.")[1].split("== 3.")[0]
    assert "None" not in sweep and "(suppressed: fewer than 5 patients" in sweep
    assert list(tmp_path.glob("sweeps/*/manifest.json"))
    assert "== 3. ihd-diabetes.json: Patient/inge" in result.output
    section = result.output.split("== 4.")[1]
    assert "[warning] HbA1c 67 mmol/mol" in section
