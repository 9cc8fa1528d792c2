"""The demo on the embedded defaults: the guideline library, a synthetic population, the service.

It shows in a minute what Vejviser is for: the library passes its own test cases; a seeded
synthetic population is swept (patient lists per practice, indicator rates, a comparison over half
a year); and a real uvicorn process answers a CDS Hooks patient-view call for an example patient.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
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

from engine.population.outputs import indicator_row_from_csv
from engine.population.run import run_sweep
from engine.population.store import load_store, write_store
from engine.population.tables import facts_tables
from fhir_adapter.normalise import normalise_patient
from rules.guideline_set import GuidelineSet
from service.cds_hooks.prefetch import prefetch_from
from synth.patients import generate_patient, make_practice

DATE = re.compile(r'"(\d{4}-\d{2}-\d{2})')


def population_sweep(
    guidelines: GuidelineSet,
    patients: int,
    practices: int,
    seed: int,
    as_of: dt.date,
    out_dir: Path,
) -> str:
    """A seeded synthetic population into a facts store, swept at two dates half a year apart."""
    rng = random.Random(seed)
    offices = [make_practice(rng) for _ in range(practices)]
    records = []
    for number in range(patients):
        office = offices[number % practices]
        resources = generate_patient(
            random.Random(f"{seed}-{number}"), f"demo-{number}", 40, as_of, practice=office
        )
        records.append(normalise_patient([*resources, office]))
    clusters = {o["identifier"][0]["value"]: f"klynge-{n % 2 + 1}" for n, o in enumerate(offices)}
    store = out_dir / "store"
    snapshot = write_store(facts_tables(records), store)
    dates = [as_of - dt.timedelta(days=182), as_of]
    with duckdb.connect() as con:
        load_store(con, store, guidelines)
        manifest = run_sweep(
            con, guidelines, dates, out_dir / "sweeps", clusters, snapshot=snapshot
        )
    directory = manifest.directory / dates[-1].isoformat()
    return _summary(directory, patients, practices, manifest.suppress_below)


def _summary(directory: Path, patients: int, practices: int, suppress_below: int) -> str:
    """Indicator rates for everyone and the size of each practice's list, from the published files."""
    with (directory / "indicators.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = [indicator_row_from_csv(r) for r in csv.DictReader(handle)]
    lines = [f"{patients} synthetic patients, {practices} practices, published in {directory}:", ""]
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
            " few enough to be recognised)"
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
