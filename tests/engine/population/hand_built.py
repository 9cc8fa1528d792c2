"""A hand-built two-date sweep output written without DuckDB, for checks across processes.

``python -m tests.engine.population.hand_built <dir>`` writes it; the determinism test runs that
under two hash seeds, as a restarted run would, and requires the same bytes.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
from pathlib import Path

from engine.population.outcomes import PopulationOutcome
from engine.population.run import compare, write_comparison, write_outputs
from rules.guideline_set import load_guidelines

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "guidelines"
DATES = (dt.date(2026, 1, 1), dt.date(2026, 4, 1))
MEMBERSHIPS = ("numerator", "denominator", "excepted", "outside")


def outcomes(seed: int) -> list[PopulationOutcome]:
    """400 patients over 20 practices, memberships drawn from a seeded generator."""
    rng = random.Random(seed)
    found = []
    for number in range(400):
        recommendations = tuple(r for r in ("above-target", "missing") if rng.random() < 0.3)
        found.append(
            PopulationOutcome(
                f"p{number}",
                f"{100000 + number % 20}",
                "example-hba1c",
                "1.0.0",
                True,
                recommendations,
                (("above-58", rng.choice(MEMBERSHIPS)),),
                (),
            )
        )
    rng.shuffle(found)  # the engine promises no order
    return found


def write(directory: Path) -> None:
    guidelines = load_guidelines(FIXTURES)
    clusters = {f"{100000 + n}": f"k{n % 5}" for n in range(20)}
    for seed, day in enumerate(DATES):
        write_outputs(
            directory / str(day), guidelines, day, outcomes(seed), {}, clusters, 5, [], "da"
        )
    report = compare(directory / str(DATES[0]), directory / str(DATES[1]))
    write_comparison(report, directory / "comparison")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
