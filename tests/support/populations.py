"""Small synthetic populations for tests that load a FHIR server: a few patients of one practice."""

from __future__ import annotations

import random
from datetime import date
from typing import Any

from synth.patients import generate_patient, make_practice

AS_OF = date(2025, 1, 1)


def population(
    prefix: str, seeds: list[int], practice: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The practice, then patients ``<prefix>p1``... (fixed seeds, 6 resources each); ids start
    with ``prefix`` so that tests sharing a server do not overwrite each other's resources."""
    practice = practice or {**make_practice(random.Random(0)), "id": f"{prefix}org"}
    resources = [practice]
    for n, seed in enumerate(seeds, 1):
        resources += generate_patient(
            random.Random(seed), f"{prefix}p{n}", 6, AS_OF, practice=practice
        )
    return resources
