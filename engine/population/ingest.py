"""NDJSON (a bulk export, a synthetic population) into the facts store, by the one normalisation.

Every line is accounted for: a line that is not a JSON object goes to ``quarantine.ndjson`` with
its file, line number and reason; a resource normalisation skips is an Issue in ``issues.ndjson``.
This first version holds one export in memory; streaming in bounded memory is the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.population.store import write_store
from engine.population.tables import facts_tables
from fhir_adapter.normalise import YDERNUMMER, normalise

QUARANTINE = "quarantine.ndjson"
ISSUES = "issues.ndjson"


@dataclass(frozen=True, slots=True)
class IngestSummary:
    files: int
    lines: int
    quarantined: int
    patients: int
    issues: int
    snapshot: str

    def report(self) -> str:
        return (
            f"{self.files} file(s), {self.lines} line(s): {self.patients} patients, "
            f"{self.quarantined} line(s) quarantined, {self.issues} resource issue(s); "
            f"snapshot {self.snapshot}"
        )


def ndjson_files(source: Path) -> list[Path]:
    return sorted(source.glob("*.ndjson")) if source.is_dir() else [source]


def ingest(source: Path, store: Path) -> IngestSummary:
    """Read every NDJSON file of ``source`` (a file or a directory) into the store at ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    resources: list[Any] = []
    lines = quarantined = 0
    files = ndjson_files(source)
    with (store / QUARANTINE).open("wb") as quarantine:
        for path in files:
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    lines += 1
                    reason = None
                    try:
                        resource = orjson.loads(line)
                        if not isinstance(resource, dict):
                            reason = "not a JSON object"
                    except orjson.JSONDecodeError as exc:
                        reason = f"not JSON: {exc.msg}"
                    if reason is not None:
                        quarantined += 1
                        record = {"file": path.name, "line": number, "reason": reason}
                        quarantine.write(orjson.dumps(record) + b"\n")
                        continue
                    resources.append(resource)
    clusters = practice_clusters(resources)
    patients = normalise(resources)
    issues = [*patients.issues, *(i for p in patients.values() for i in p.issues)]
    with (store / ISSUES).open("wb") as handle:
        for issue in issues:
            handle.write(orjson.dumps({"resource": issue.resource, "reason": issue.reason}) + b"\n")
    tables = facts_tables(patients.values())
    snapshot = write_store(tables, store, clusters)
    return IngestSummary(len(files), lines, quarantined, len(patients), len(issues), snapshot)


def practice_clusters(resources: list[Any]) -> dict[str, str]:
    """ydernummer -> cluster, through the practice Organization's ``partOf`` (DK Core)."""
    clusters = {}
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != "Organization":
            continue
        part_of = resource.get("partOf")
        reference = part_of.get("reference") if isinstance(part_of, dict) else None
        identifiers = resource.get("identifier")
        if not isinstance(reference, str) or not isinstance(identifiers, list):
            continue
        for identifier in identifiers:
            if (
                isinstance(identifier, dict)
                and identifier.get("system") == YDERNUMMER
                and isinstance(identifier.get("value"), str)
            ):
                clusters[identifier["value"]] = reference.removeprefix("Organization/")
    return clusters
