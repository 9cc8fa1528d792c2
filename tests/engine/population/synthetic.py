"""The sweep-output tests' synthetic population: seeded, small, three practices, two clusters.

150 patients from the same generator as the engine-agreement suite, dealt round-robin to three
practices in two clusters, plus one patient with no practice (counted nationally, on no list).
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from fhir_adapter.normalise import normalise_patient
from fhir_adapter.records import PatientRecord
from synth.patients import generate_patient

LIBRARY = Path(__file__).resolve().parents[3] / "guidelines"
AS_OF = dt.date(2026, 10, 1)
PRACTICES = ("100001", "100002", "100003")
CLUSTERS = {"100001": "klynge-nord", "100002": "klynge-nord", "100003": "klynge-syd"}
SIZE = 150


def population(size: int = SIZE) -> list[PatientRecord]:
    found = []
    for number in range(size):
        rng = random.Random(f"sweep-outputs-{number}")
        resources = generate_patient(rng, f"p{number}", rng.randint(5, 150), AS_OF)
        practice = PRACTICES[number % len(PRACTICES)] if number < size - 1 else None
        found.append(normalise_patient(resources)._replace(practice=practice))
    return found
