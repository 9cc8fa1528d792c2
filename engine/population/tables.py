"""The facts store: normalised records as columnar tables, codes as integers.

The same tables come from bulk ingest (Parquet) or, in tests, straight from per-patient records,
so the SQL engine and the per-patient engine read the same facts. A record with several codings
is one row per coding; ``record`` numbers the records of one resource (a blood-pressure panel's
components), so counting distinct (resource, record) counts what the per-patient engine counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from fhir_adapter.records import Coding, PatientRecord

if TYPE_CHECKING:
    from rules.guideline_set import GuidelineSet

SCHEMAS = {
    "patients": pa.schema(
        [
            ("patient", pa.string()),
            ("birth_date", pa.date32()),
            ("sex", pa.string()),
            ("practice", pa.string()),
            ("deceased", pa.bool_()),
            ("deceased_on", pa.date32()),
        ]
    ),
    "observations": pa.schema(
        [
            ("patient", pa.string()),
            ("resource", pa.string()),
            ("record", pa.int32()),
            ("code", pa.int32()),
            ("date", pa.date32()),
            ("value", pa.float64()),
            ("comparator", pa.string()),
            ("unit", pa.string()),
        ]
    ),
    "medications": pa.schema(
        [
            ("patient", pa.string()),
            ("resource", pa.string()),
            ("code", pa.int32()),
            ("start", pa.date32()),
            ("end", pa.date32()),
            ("status", pa.string()),
            ("source", pa.string()),
        ]
    ),
    "conditions": pa.schema(
        [
            ("patient", pa.string()),
            ("resource", pa.string()),
            ("code", pa.int32()),
            ("onset", pa.date32()),
            ("abatement", pa.date32()),
            ("clinical_status", pa.string()),
            ("recorded", pa.date32()),
        ]
    ),
    "goals": pa.schema(
        [
            ("patient", pa.string()),
            ("resource", pa.string()),
            ("code", pa.int32()),
            ("value", pa.float64()),
            ("start", pa.date32()),
        ]
    ),
    "codes": pa.schema([("code", pa.int32()), ("system", pa.string()), ("value", pa.string())]),
    "valueset_codes": pa.schema([("valueset", pa.string()), ("code", pa.int32())]),
}


@dataclass(slots=True)
class CodeDictionary:
    """(system, code) -> a small integer, assigned in order of first appearance."""

    ids: dict[Coding, int] = field(default_factory=dict)

    def id(self, coding: Coding) -> int:
        found = self.ids.get(coding)
        if found is None:
            found = self.ids[coding] = len(self.ids)
        return found

    def table(self) -> pa.Table:
        rows = sorted(self.ids.items(), key=lambda item: item[1])
        return pa.Table.from_pylist(
            [{"code": i, "system": s, "value": c} for (s, c), i in rows], schema=SCHEMAS["codes"]
        )


def facts_tables(patients: Iterable[PatientRecord]) -> dict[str, pa.Table]:
    """Per-patient records as the store's tables (for tests and the engine-agreement suite)."""
    codes = CodeDictionary()
    rows: dict[str, list[dict[str, object]]] = {
        name: [] for name in SCHEMAS if name not in ("codes", "valueset_codes")
    }
    for p in patients:
        rows["patients"].append(
            {
                "patient": p.id,
                "birth_date": p.birth_date,
                "sex": p.sex,
                "practice": p.practice,
                "deceased": p.deceased,
                "deceased_on": p.deceased_on,
            }
        )
        records_of: dict[str, int] = {}
        for o in p.observations:
            record = records_of[o.resource] = records_of.get(o.resource, -1) + 1
            for coding in o.codings:
                rows["observations"].append(
                    {
                        "patient": p.id,
                        "resource": o.resource,
                        "record": record,
                        "code": codes.id(coding),
                        "date": o.date,
                        "value": o.value,
                        "comparator": o.comparator,
                        "unit": o.unit,
                    }
                )
        for m in p.medications:
            source = "request" if m.resource.startswith("MedicationRequest/") else "statement"
            for coding in m.codings:
                rows["medications"].append(
                    {
                        "patient": p.id,
                        "resource": m.resource,
                        "code": codes.id(coding),
                        "start": m.start,
                        "end": m.end,
                        "status": m.status,
                        "source": source,
                    }
                )
        for c in p.conditions:
            for coding in c.codings:
                rows["conditions"].append(
                    {
                        "patient": p.id,
                        "resource": c.resource,
                        "code": codes.id(coding),
                        "onset": c.onset,
                        "abatement": c.abatement,
                        "clinical_status": c.clinical_status,
                        "recorded": c.recorded,
                    }
                )
        for g in p.goals:
            for coding in g.measure:
                rows["goals"].append(
                    {
                        "patient": p.id,
                        "resource": g.resource,
                        "code": codes.id(coding),
                        "value": g.value,
                        "start": g.start,
                    }
                )
    tables = {name: pa.Table.from_pylist(data, schema=SCHEMAS[name]) for name, data in rows.items()}
    tables["codes"] = codes.table()
    return tables


def valueset_codes(guidelines: GuidelineSet, codes: pa.Table) -> pa.Table:
    """Which stored codes each value set contains (hierarchies and aliases resolved in Python)."""
    rows = []
    for code, system, value in zip(
        codes.column("code").to_pylist(),
        codes.column("system").to_pylist(),
        codes.column("value").to_pylist(),
        strict=True,
    ):
        for valueset in guidelines.index.of((system, value)):
            rows.append({"valueset": valueset, "code": code})
    return pa.Table.from_pylist(rows, schema=SCHEMAS["valueset_codes"])
