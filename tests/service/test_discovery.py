"""Prefetch templates: every code the guidelines read, split so no URL grows too long."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import unquote

from rules.guideline_set import load_guidelines
from service.cds_hooks.discovery import PATIENT_TOKEN, prefetch_templates

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"


def test_long_code_lists_are_split_without_losing_a_code() -> None:
    guidelines = load_guidelines(LIBRARY)
    whole = prefetch_templates(guidelines, dt.date(2026, 6, 1), 100_000)
    split = prefetch_templates(guidelines, dt.date(2026, 6, 1), 600)
    (single,) = [q for k, q in whole.items() if k.startswith("observations")]
    parts = [q for k, q in split.items() if k.startswith("observations")]
    assert len(parts) > 1
    assert all(len(q) <= 600 for q in parts)

    def codes(query: str) -> list[str]:
        return unquote(query.split("combo-code=")[1]).split(",")

    assert sorted(c for q in parts for c in codes(q)) == sorted(codes(single))
    assert all(q.startswith(f"Observation?patient={PATIENT_TOKEN}&date=ge") for q in parts)


def test_templates_are_computed_once_per_set_and_day() -> None:
    guidelines = load_guidelines(LIBRARY)
    day = dt.date(2026, 6, 1)
    assert prefetch_templates(guidelines, day, 2000) is prefetch_templates(guidelines, day, 2000)


def test_every_uri_of_a_code_system_is_asked_for() -> None:
    """Found by QA: only the preferred URI was in the query, so a FHIR server's token search
    left out an HbA1c coded with the older NPU URI, which the normaliser reads as NPU: the
    card said "no HbA1c" for a chart that has one."""
    guidelines = load_guidelines(LIBRARY)
    templates = prefetch_templates(guidelines, dt.date(2026, 6, 1), 100_000)
    (query,) = [q for k, q in templates.items() if k.startswith("observations")]
    codes = unquote(query.split("combo-code=")[1]).split(",")
    assert "http://npu-terminology.org|NPU27300" in codes
    assert "urn:oid:1.2.208.176.2.1|NPU27300" in codes
    assert "urn:oid:2.16.840.1.113883.6.1|59261-8" in codes
