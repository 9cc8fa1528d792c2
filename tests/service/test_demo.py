"""The README's first command ends in `vejviser demo`: it must show every part working."""

from __future__ import annotations

from typer.testing import CliRunner

from service.cli import app


def test_demo_shows_library_population_examples_and_a_service_call() -> None:
    result = CliRunner().invoke(app, ["demo", "--patients", "20", "--language", "en"])
    assert result.exit_code == 0, result.output
    assert "== 1. Guideline library:" in result.output and " 0 failed." in result.output
    assert "20 synthetic patients in 3 practices" in result.output
    assert "== 3. ihd-diabetes.json: Patient/inge" in result.output
    section = result.output.split("== 4.")[1]
    assert "[warning] HbA1c 67 mmol/mol" in section
