"""Step 2 of ingest: one chunk of NDJSON lines -> Parquet part files, in a worker process.

Kept apart from :mod:`engine.population.ingest` so that a worker imports only what reading a
chunk needs (orjson, pyarrow, the normalisation): the ingest module pulls in DuckDB and the rule
compiler, which took a second per worker before the first chunk was read.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import resource as rusage
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from engine.population.tables import SCHEMAS
from fhir_adapter.normalise import OrganizationRecord, ResourceRecords, resource_records

# Final: compiled, a Final constant is read from a C static, not looked up by name (0010).
BOM: Final = b"\xef\xbb\xbf"

# --- part files -----------------------------------------------------------------------------------


def _record_part(table: str) -> pa.Schema:
    """A fact table's columns after the resource's position in the chunk, with ``resource``
    named ``name`` (the SQL step fixes the names of resources without an id from it)."""
    fields = [pa.field("name" if f.name == "resource" else f.name, f.type) for f in SCHEMAS[table]]
    return pa.schema([pa.field("ordinal", pa.int64()), *fields])


_MEDICATIONS: Final = _record_part("medications")

PART_SCHEMAS: Final = {
    "resources": pa.schema(
        [
            ("ordinal", pa.int64()),
            ("name", pa.string()),
            ("patient", pa.string()),
            ("kind", pa.string()),
            ("has_records", pa.bool_()),
        ]
    ),
    "issues": pa.schema(
        [
            ("ordinal", pa.int64()),
            ("name", pa.string()),
            ("patient", pa.string()),
            ("kind", pa.string()),
            ("reason", pa.string()),
        ]
    ),
    "patients": pa.schema([("ordinal", pa.int64()), *SCHEMAS["patients"]]),
    "observations": _record_part("observations"),
    # a flag in place of the facts' source: a request's records count unless a statement of
    # the patient shares a coding with them, which the SQL step decides across resources
    "medications": _MEDICATIONS.set(
        _MEDICATIONS.get_field_index("source"), pa.field("request", pa.bool_())
    ),
    "conditions": _record_part("conditions"),
    "goals": _record_part("goals"),
    "codes": SCHEMAS["codes"],
}


def part_schema(table: str) -> pa.Schema:
    """A part file's schema: the table's, plus the chunk (codes and ordinals are per chunk)."""
    return PART_SCHEMAS[table].append(pa.field("chunk", pa.int32()))


_WORKER: Final[dict[str, Any]] = {}  # this process's reference resources


def init_worker(
    medications: dict[str, dict[str, Any]], organizations: dict[str, OrganizationRecord]
) -> None:
    """The pool's initializer: sent once per worker, not with every chunk."""
    _WORKER["medications"] = medications
    _WORKER["organizations"] = organizations
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    """Why: a worker outlived an ingest killed by SIGKILL or SIGTERM, reading on (and the
    forkserver beside it) for minutes. The sentinel is readable once the ingest has gone."""
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(1)


class Task(NamedTuple):
    """One chunk: a byte range of one file, and the directory of the part files.

    A NamedTuple, not a frozen dataclass: compiled by mypyc, a frozen dataclass cannot be
    unpickled in the worker (docs/decisions/0010)."""

    chunk: int
    file: int
    path: str
    start: int
    end: int
    parts: str


@dataclass(slots=True)
class ChunkResult:
    """What the main process needs of a chunk besides its part files."""

    chunk: int
    file: int
    line_breaks: int  # lines in the byte range, blank ones included (for line numbers)
    lines: int  # non-blank lines
    objects: int  # JSON objects (the resources normalise would see)
    quarantine: list[tuple[int, str]]  # (line in the chunk, from 0; reason)
    types: Counter[str]
    pid: int = 0  # the process that read it, with its CPU seconds for it and its peak memory
    cpu_seconds: float = 0.0
    peak_kb: int = 0


def tasks_of(files: list[Path], chunk_bytes: int, parts: Path) -> list[Task]:
    """Byte ranges of about ``chunk_bytes``, each ending at a line end."""
    tasks: list[Task] = []
    for number, path in enumerate(files):
        size = path.stat().st_size
        start = 0
        with path.open("rb") as handle:
            while start < size:
                handle.seek(min(start + chunk_bytes, size))
                if handle.tell() < size:
                    handle.readline()
                end = handle.tell()
                tasks.append(Task(len(tasks), number, str(path), start, end, str(parts)))
                start = end
    return tasks


def read_chunk(task: Task) -> ChunkResult:
    """Parse and normalise one chunk; write its rows as one Parquet part per table.

    The garbage collector is off meanwhile: the chunk's rows are tens of thousands of tuples
    that live until the chunk is written, and collections that traverse them again and again
    cost more than half the parsing time. Nothing here makes reference cycles that need it.
    """
    enabled = gc.isenabled()
    gc.disable()
    started = time.process_time()
    try:
        result = _read_chunk_uncollected(task)
    finally:
        if enabled:
            gc.enable()
    result.pid = os.getpid()
    result.cpu_seconds = time.process_time() - started
    result.peak_kb = rusage.getrusage(rusage.RUSAGE_SELF).ru_maxrss
    return result


def _read_chunk_uncollected(task: Task) -> ChunkResult:
    with open(task.path, "rb") as handle:  # noqa: PTH123 - hot path, a plain open
        handle.seek(task.start)
        data = handle.read(task.end - task.start)
    if task.start == 0:
        data = data.removeprefix(BOM)
    pieces = data.split(b"\n")
    if pieces and not pieces[-1]:
        pieces.pop()
    rows = _Rows()
    quarantine: list[tuple[int, str]] = []
    types: Counter[str] = Counter()
    medications = _WORKER["medications"]
    organizations = _WORKER["organizations"]
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    lines = index = 0
    for number, line in enumerate(pieces):
        if not line or line.isspace():  # isspace() copies nothing, strip() copied every line
            continue
        lines += 1
        try:
            resource = loads(line)
        except decode_error as exc:
            quarantine.append((number, f"not JSON: {exc.msg}"))
            continue
        if type(resource) is not dict:
            quarantine.append((number, "not a JSON object"))
            continue
        rtype = resource.get("resourceType")
        types[rtype if type(rtype) is str else "(no type)"] += 1
        if rtype == "Organization" or rtype == "Medication":
            index += 1
            continue
        found = resource_records(resource, {}, medications, organizations, index)
        rows.add(index, rtype, found)
        index += 1
    rows.write(Path(task.parts), task.chunk)
    return ChunkResult(task.chunk, task.file, len(pieces), lines, index, quarantine, types)


class _Rows:
    """Rows of one chunk's part files (tuples in the part schema's order), resource by resource."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in PART_SCHEMAS}
        self.codes: dict[tuple[str, str], int] = {}

    def add(self, index: int, rtype: Any, found: ResourceRecords) -> None:
        (name, patient, observations, medications, source, conditions, goals, person, _, issues) = (
            found
        )
        rows = self.rows
        kind = rtype if type(rtype) is str else None
        if issues:
            rows["issues"] += [(index, i.resource, patient, kind, i.reason) for i in issues]
        if kind not in _KINDS:
            return
        has_records = bool(observations or medications or conditions or goals)
        rows["resources"].append((index, name, patient, kind, has_records))
        if patient is None:
            return
        if person is not None:
            rows["patients"].append(
                (
                    index,
                    person.id,
                    person.birth_date,
                    person.sex,
                    person.practice,
                    person.deceased,
                    person.deceased_on,
                )
            )
        if not has_records:
            return
        codes = self.codes
        if observations:
            out = rows["observations"]
            # facts_tables numbers a resource's records in this order
            ordered = sorted(observations, key=_CODINGS) if len(observations) > 1 else observations
            for record, (resource, codings, day, value, comparator, unit, _) in enumerate(ordered):
                for coding in codings:
                    code = codes.get(coding)
                    if code is None:
                        code = codes[coding] = len(codes)
                    out.append(
                        (index, patient, resource, record, code, day, value, comparator, unit)
                    )
            return
        for m in medications:
            rows["medications"] += [
                (
                    index,
                    patient,
                    m.resource,
                    self.code(c),
                    m.start,
                    m.end,
                    m.status,
                    source == "request",
                )
                for c in m.codings
            ]
        for r in conditions:
            rows["conditions"] += [
                (
                    index,
                    patient,
                    r.resource,
                    self.code(c),
                    r.onset,
                    r.abatement,
                    r.clinical_status,
                    r.recorded,
                )
                for c in r.codings
            ]
        for g in goals:
            rows["goals"] += [
                (index, patient, g.resource, self.code(c), g.value, g.start) for c in g.measure
            ]

    def code(self, coding: tuple[str, str]) -> int:
        found = self.codes.get(coding)
        if found is None:
            found = self.codes[coding] = len(self.codes)
        return found

    def write(self, parts: Path, chunk: int) -> None:
        self.rows["codes"] = [(number, s, v) for (s, v), number in self.codes.items()]
        for table, rows in self.rows.items():
            if not rows:
                continue
            schema = PART_SCHEMAS[table]
            columns = list(zip(*rows, strict=True))
            arrays = [pa.array(column, f.type) for column, f in zip(columns, schema, strict=True)]
            arrays.append(pa.array([chunk] * len(rows), pa.int32()))
            batch = pa.Table.from_arrays(arrays, schema=part_schema(table))
            # No min/max statistics: the SQL step reads every part whole. Dictionaries stay:
            # without them a part is written faster but DuckDB reads it back slower.
            pq.write_table(
                batch, parts / table / f"{chunk}.parquet", compression="lz4", write_statistics=False
            )


_KINDS: Final = frozenset(
    {"Observation", "Condition", "MedicationStatement", "MedicationRequest", "Goal", "Patient"}
)


def _CODINGS(record: Any) -> Any:  # noqa: N802 - a key function, named like a constant
    return record.codings
