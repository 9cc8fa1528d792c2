"""The facts store on disk: one Parquet file per table of :mod:`engine.population.tables`.

Written by ingest (or, for the demo and tests, from per-patient records), read by a sweep. A
``manifest.json`` names the snapshot, so a sweep's run id changes when the data change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot.expressions as exp

from engine.population.duckdb_engine import DIALECT, create_table
from engine.population.tables import SCHEMAS, valueset_codes
from rules.guideline_set import GuidelineSet

FACT_TABLES = ("patients", "observations", "medications", "conditions", "goals", "codes")
MANIFEST = "manifest.json"


class StoreError(ValueError):
    """The directory is not a complete facts store."""


def write_store(
    tables: dict[str, pa.Table], directory: Path, clusters: dict[str, str] | None = None
) -> str:
    """Write the tables, the practice -> cluster map and a manifest; returns the snapshot id."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    counts = {}
    for name in FACT_TABLES:
        table = tables[name].cast(SCHEMAS[name])
        pq.write_table(table, directory / f"{name}.parquet")
        digest.update((directory / f"{name}.parquet").read_bytes())
        counts[name] = table.num_rows
    mapping = dict(sorted((clusters or {}).items()))
    digest.update(json.dumps(mapping).encode())
    snapshot = digest.hexdigest()[:16]
    manifest = {"snapshot": snapshot, "rows": counts, "clusters": mapping}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return snapshot


def snapshot_of(directory: Path) -> str:
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a facts store: there is no such directory")
    if not (directory / MANIFEST).exists():
        raise StoreError(
            f"{directory} is not a facts store (it has no {MANIFEST}): make one with "
            f"vejviser ingest NDJSON --store {directory}"
        )
    try:
        return str(json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["snapshot"])
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(f"{directory} has no readable {MANIFEST}: {exc}") from None


def clusters_of(directory: Path) -> dict[str, str]:
    """The practice -> cluster map recorded at ingest (Organization.partOf)."""
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    return dict(manifest.get("clusters", {}))


def load_store(con: duckdb.DuckDBPyConnection, directory: Path, guidelines: GuidelineSet) -> str:
    """Load a store into DuckDB with this guideline set's value sets; returns the snapshot id."""
    snapshot = snapshot_of(directory)
    for name in FACT_TABLES:
        path = directory / f"{name}.parquet"
        if not path.exists():
            raise StoreError(f"{directory} has no {name}.parquet")
        missing = set(SCHEMAS[name].names) - set(pq.read_schema(path).names)
        if missing:
            raise StoreError(
                f"{path} lacks column(s) {', '.join(sorted(missing))}: the store was written by "
                "an older version of Vejviser. Ingest the data again into a new directory."
            )
        query = exp.select("*").from_(exp.func("read_parquet", exp.Literal.string(str(path))))
        con.execute(create_table(name, query).sql(DIALECT))
    codes = pq.read_table(directory / "codes.parquet")
    con.register("arrow_valueset_codes", valueset_codes(guidelines, codes))
    con.execute(
        create_table("valueset_codes", exp.select("*").from_("arrow_valueset_codes")).sql(DIALECT)
    )
    con.unregister("arrow_valueset_codes")
    return snapshot
