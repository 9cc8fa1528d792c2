"""What a sweep concludes per patient and guideline, in the same terms as the per-patient engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PopulationOutcome:
    patient: str
    practice: str | None
    guideline: str
    version: str
    in_register: bool
    recommendations: tuple[str, ...]
    indicators: tuple[
        tuple[str, str], ...
    ]  # (indicator id, numerator|denominator|excepted|outside)
    targets: tuple[tuple[str, float, str, str], ...]  # (name, value, source, set by)
