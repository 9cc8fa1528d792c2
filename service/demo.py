"""The demo on the embedded defaults: the guideline library, a synthetic population, the service.

It shows in a minute what Vejviser is for: the library passes its own test cases; a seeded
synthetic population gives register sizes, cards and indicator rates per practice; and a real
uvicorn process answers a CDS Hooks patient-view call for an example patient.
"""

from __future__ import annotations

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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

from engine.patient import PatientEngine
from fhir_adapter.normalise import normalise_patient
from rules.guideline_set import GuidelineSet
from service.cds_hooks.prefetch import prefetch_from
from synth.patients import generate_patient, make_practice

DATE = re.compile(r'"(\d{4}-\d{2}-\d{2})')


def population_report(
    guidelines: GuidelineSet, patients: int, practices: int, seed: int, as_of: dt.date
) -> str:
    """Per guideline: register size, cards fired, and indicator rates per practice."""
    engine = PatientEngine(guidelines)
    rng = random.Random(seed)
    offices = [make_practice(rng) for _ in range(practices)]
    register: Counter[str] = Counter()
    cards: Counter[tuple[str, str]] = Counter()
    rates: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for number in range(patients):
        office = offices[number % practices]
        ydernummer = office["identifier"][0]["value"]
        resources = generate_patient(
            random.Random(f"{seed}-{number}"), f"demo-{number}", 40, as_of, practice=office
        )
        for outcome in engine.evaluate(normalise_patient([*resources, office]), as_of):
            register[outcome.guideline] += outcome.in_register
            for rec in outcome.recommendations:
                cards[(outcome.guideline, rec.id)] += 1
            for indicator in outcome.indicators:
                counts = rates[(outcome.guideline, indicator.id, ydernummer)]
                counts[0] += indicator.numerator
                counts[1] += indicator.denominator
    lines = [f"{patients} synthetic patients in {practices} practices, reference date {as_of}:", ""]
    for guideline in sorted(g.id for g in guidelines.in_force(as_of)):
        lines.append(f"{guideline}: {register[guideline]} in the register")
        for (gid, rec), count in sorted(cards.items()):
            if gid == guideline:
                lines.append(f"    card {rec}: {count}")
        for (gid, indicator, practice), (numerator, denominator) in sorted(rates.items()):
            if gid == guideline and denominator:
                rate = 100 * numerator / denominator
                lines.append(
                    f"    {indicator} at practice {practice}: {numerator}/{denominator} = {rate:.0f} %"
                )
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
            with httpx.Client(base_url=base, timeout=10) as client:
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
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the service did not start")
