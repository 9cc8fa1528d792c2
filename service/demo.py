"""The demo on the embedded defaults: the guideline library, a synthetic population, the service.

It shows in a minute what Vejviser is for: the library passes its own test cases; a seeded
synthetic population goes through ``vejviser synth``, ``ingest`` and ``sweep`` (patient lists per
practice, indicator rates, a comparison over half a year); and a real uvicorn process answers a CDS
Hooks patient-view call for an example patient.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import httpx2

from engine.population.ingest import ingest
from engine.population.outputs import indicator_row_from_csv
from engine.population.run import run_sweep
from engine.population.store import clusters_of, load_store
from rules.guideline_set import GuidelineSet
from service.cds_hooks.prefetch import prefetch_from
from synth.population import write_population

DATE = re.compile(r'"(\d{4}-\d{2}-\d{2})')
PRACTICES = 3  # the demo population's practices and clusters (fewer when it has fewer patients)
CLUSTERS = 2


def population_sweep(
    guidelines: GuidelineSet, patients: int, seed: int, as_of: dt.date, out_dir: Path
) -> str:
    """What a quality unit runs, shown with the commands that do it: ``vejviser synth`` (a seeded
    population as NDJSON, noise included), ``vejviser ingest`` (into a facts store) and
    ``vejviser sweep`` at two dates half a year apart (so the run also compares them).

    Each population gets its own folder, named by its arguments: the same arguments write the same
    files, and an ingest never mixes the patients of two demo populations in one store.
    """
    practices = min(PRACTICES, patients)
    clusters = min(CLUSTERS, practices)
    folder = out_dir / f"population-{patients}-seed{seed}-{as_of.isoformat()}"
    ndjson, store, sweeps = folder / "ndjson", folder / "store", out_dir / "sweeps"
    dates = [as_of - dt.timedelta(days=182), as_of]
    synthesised = write_population(ndjson, patients, practices, clusters, seed, as_of)
    ingested = ingest(ndjson, store)
    with duckdb.connect() as con:
        snapshot = load_store(con, store, guidelines)
        mapping = clusters_of(store) or None
        manifest = run_sweep(con, guidelines, dates, sweeps, mapping, snapshot=snapshot)
    directory = manifest.directory / dates[-1].isoformat()
    return "\n".join(
        [
            f"$ vejviser synth --patients {patients} --practices {practices} "
            f"--clusters {clusters} --seed {seed} --out {ndjson}",
            synthesised.report(),
            "",
            f"$ vejviser ingest {ndjson} --store {store}",
            ingested.report(),
            "",
            f"$ vejviser sweep --store {store} --as-of {dates[0]} --as-of {dates[1]} "
            f"--out {sweeps}",
            _summary(directory, patients, practices, manifest.suppress_below),
        ]
    )


def _summary(directory: Path, patients: int, practices: int, suppress_below: int) -> str:
    """Indicator rates for everyone and the size of each practice's list, from the published files."""
    with (directory / "indicators.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = [indicator_row_from_csv(r) for r in csv.DictReader(handle)]
    lines = [
        f"{patients:,} synthetic patients, {practices} practices, published in {directory}:",
        "",
    ]
    everyone = [row for row in rows if row.level == "all"]
    for row in everyone:
        rate = (
            "suppressed"
            if row.rate is None
            else f"{100 * row.rate:.0f} % ({row.numerator}/{row.denominator})"
        )
        lines.append(f"  {row.guideline} / {row.indicator}: {rate}")
    if any(row.rate is None for row in everyone):
        lines.append(
            f"  (suppressed: fewer than {suppress_below} patients in the numerator or outside it,"
            " few enough to be recognised, or so few left when the clusters are subtracted)"
        )
    for path in sorted((directory / "lists").glob("*.csv")):
        with path.open(encoding="utf-8-sig", newline="") as handle:
            listed = {r["patient"] for r in csv.DictReader(handle)}
        lines.append(f"  practice {path.stem}: {len(listed)} patients on its list")
    return "\n".join(lines)


def shifted(bundle_text: str, days: int) -> Any:
    """An example bundle with every date moved by ``days``, so it stays recent as time passes."""

    def move(match: re.Match[str]) -> str:
        return '"' + (dt.date.fromisoformat(match.group(1)) + dt.timedelta(days=days)).isoformat()

    return json.loads(DATE.sub(move, bundle_text))


def service_call(bundle: dict[str, Any], patient_id: str, language: str) -> list[dict[str, Any]]:
    """Start `vejviser serve --no-auth` on a free port, call patient-view, stop it."""
    with tempfile.TemporaryDirectory() as workdir:
        port = _free_port()
        env = {**os.environ, "VEJVISER_FEEDBACK_DATABASE": str(Path(workdir) / "feedback.sqlite")}
        command = [sys.executable, "-m", "service", "serve", "--no-auth", "--port", str(port)]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(base)
            with httpx2.Client(base_url=base, timeout=10) as client:
                keys = client.get("/cds-services").json()["services"][0]["prefetch"]
                body = {
                    "hook": "patient-view",
                    "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/demo", "patientId": patient_id},
                    "prefetch": prefetch_from(keys, [e["resource"] for e in bundle["entry"]]),
                }
                response = client.post(
                    "/cds-services/vejviser-patient-view",
                    json=body,
                    headers={"Accept-Language": language},
                )
                response.raise_for_status()
                return response.json()["cards"]
        finally:
            process.terminate()
            process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(base: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the service did not start")
