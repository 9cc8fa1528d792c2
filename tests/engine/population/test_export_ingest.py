"""An export from a FHIR server ingests and sweeps to the same results as the NDJSON files."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from synth.population import write_population
from tests.support.sekmet import SekmetServer, running

runner = CliRunner()


def resources_in(directory: Path) -> list[dict]:
    found = []
    for path in sorted(directory.glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                resource = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (isinstance(resource, dict) and "id" in resource and "code" in resource) or (
                isinstance(resource, dict)
                and resource.get("resourceType") in ("Patient", "Organization")
            ):
                found.append(resource)
    return found


def indicators(out: Path) -> str:
    (path,) = out.glob("*/2026-10-01/indicators.csv")
    return path.read_text(encoding="utf-8-sig")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[SekmetServer]:
    """A server of its own: a system-level export of the shared one would bring along the patients
    other tests loaded, and the rates would depend on which tests ran first."""
    with running(SekmetServer(tmp_path / "sekmet")) as server:
        yield server


def test_export_then_sweep_equals_files_then_sweep(
    tmp_path: Path, own_server: SekmetServer
) -> None:
    write_population(tmp_path / "files", 40, 2, 1, 5, dt.date(2026, 10, 1))
    clean = tmp_path / "clean"
    clean.mkdir()
    kept = resources_in(tmp_path / "files")
    by_type: dict[str, list[str]] = {}
    for resource in kept:
        by_type.setdefault(resource["resourceType"], []).append(json.dumps(resource))
    for resource_type, lines in by_type.items():
        (clean / f"{resource_type}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    own_server.load(kept)
    as_of = ["--as-of", "2026-10-01"]
    assert (
        runner.invoke(app, ["ingest", str(clean), "--store", str(tmp_path / "s1")]).exit_code == 0
    )
    exported = runner.invoke(app, ["ingest", own_server.base_url, "--store", str(tmp_path / "s2")])
    assert exported.exit_code == 0, exported.output
    for store, out in (("s1", "o1"), ("s2", "o2")):
        result = runner.invoke(
            app, ["sweep", "--store", str(tmp_path / store), *as_of, "--out", str(tmp_path / out)]
        )
        assert result.exit_code == 0, result.output
    assert indicators(tmp_path / "o1") == indicators(tmp_path / "o2")
