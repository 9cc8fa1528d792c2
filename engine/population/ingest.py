"""NDJSON (a bulk export, a synthetic population) into the facts store, streaming, in parallel.

Every line is accounted for: a line that is not a JSON object goes to ``quarantine.ndjson`` with
its file, line number and reason; a resource normalisation skips is an Issue in ``issues.ndjson``.
See docs/ingest.md for the whole design; in short:

1. **Reference resources first.** Organization and Medication resources are looked up by other
   resources, so every file is scanned for them first (a byte search: files without them cost
   little) and they are kept in two small dicts, merged with those of the existing store.
2. **Chunks in parallel** (:mod:`engine.population.chunks`). The files are cut into byte ranges
   at line ends; a process pool (one worker per core by default) parses each chunk with orjson,
   runs :func:`fhir_adapter.normalise.resource_records` per resource (the per-patient path's
   own code) and writes the chunk's rows as Parquet part files. Memory is bounded by the chunk size
   and the number of workers, never by the population.
3. **Across resources, in SQL.** What :func:`~fhir_adapter.normalise.normalise` applies across
   resources (duplicates: the first one in the input is used; a MedicationRequest only when no
   MedicationStatement of its patient shares a coding with it; clinical resources of a patient without a Patient
   resource; codes as integers) is applied by one DuckDB step over the parts, which spills to
   disk. Its result equals ``facts_tables(normalise(resources))`` row for row (tested).
4. **Upsert.** Beside the fact tables the store keeps its *staging* tables (every resource's
   records before the cross-resource rules). A new ingest replaces the staged resources with the
   same name (``Type/id``; Patients by id) and keeps the others, and the fact tables are derived
   again from the merged staging: a re-export never duplicates, an incremental export updates.
5. **Atomic.** The new store is built in a temporary directory next to the old one and swapped
   in with one rename, so a crash never leaves a half store. The snapshot id hashes the content
   (rows, clusters), so it changes exactly when the facts do.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import glob
import gzip
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.context
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import forkserver
from pathlib import Path
from typing import IO, Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from engine.population.chunks import (
    BOM,
    PART_SCHEMAS,
    ChunkResult,
    Task,
    init_worker,
    part_schema,
    read_chunk,
    tasks_of,
)
from engine.population.duckdb_engine import configure
from engine.population.store import FACT_TABLES, MANIFEST, StoreError
from engine.population.tables import SCHEMAS
from fhir_adapter.bundles import GZIP_ERRORS, GZIP_MAGIC, unreadable_gzip
from fhir_adapter.normalise import (
    DUPLICATE,
    YDERNUMMER,
    FhirInputError,
    OrganizationRecord,
    resource_records,
)

log = logging.getLogger(__name__)

QUARANTINE = "quarantine.ndjson"
ISSUES = "issues.ndjson"
STAGING = "staging"
STORE_FORMAT = 3
CHUNK_BYTES = 8 << 20
"""Default chunk: 8 MB of NDJSON, about 14,000 resources of a synthetic export."""
MEMORY_LIMIT = "2GB"
"""DuckDB's memory for the SQL step; it spills to disk beyond it. At 5.5 million resources the
step took 14.3 s with 1 GB (spilling) and 11.1 s with 2 GB (3 GB: 11.6 s; 2026-11-27)."""
_STORE_FILES = frozenset(
    {*(f"{name}.parquet" for name in FACT_TABLES), MANIFEST, QUARANTINE, ISSUES, STAGING}
)
_CLI_DIRECTORIES = frozenset({"exports", "bundles"})
"""What the CLI writes into a store before the ingest: they do not make a new store foreign."""

_RECORD_TABLES = ("observations", "medications", "conditions", "goals")
_REFERENCE_SCHEMA = pa.schema(
    [("name", pa.string()), ("kind", pa.string()), ("resource", pa.binary())]
)


@dataclass(frozen=True, slots=True)
class IngestSummary:
    files: int
    lines: int
    quarantined: int
    patients: int
    issues: int
    snapshot: str
    resources: Mapping[str, int] = field(default_factory=dict)
    """Resource type -> lines of this ingest (``(no type)`` for objects without one)."""
    rows: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 1
    changed: bool = True
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per step: inflate (gzip files only), reference, read (parse + normalise),
    resolve (SQL + write), swap."""
    worker_cpu_seconds: float = 0.0
    """CPU seconds the worker processes spent on chunks (0 with one process: it reads itself)."""
    worker_peak_mb: float = 0.0
    """The largest worker's peak resident memory."""
    deletions: int = 0
    """Resources named as deleted (a ``_since`` export's deleted files)."""
    deleted: int = 0
    """Of those, how many the store held and no longer holds."""
    without_practice: int = 0
    """Patients of the store without a practice (no Patient.generalPractitioner)."""
    practice_references: tuple[int, str | None] = (0, None)
    """Patients of the store whose practice has no ydernummer, so that their practice is the
    reference as written (no Organization with one, none on the reference), and one such."""
    cluster_conflicts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Ydernumre that Organizations place in more than one cluster -> those clusters (the last
    is the one used)."""

    @property
    def resources_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        types = ", ".join(f"{t} {n:,}" for t, n in sorted(self.resources.items()))
        return "\n".join(
            [
                f"{self.files} file(s), {self.lines:,} line(s): {self.patients:,} patients, "
                f"{self.quarantined:,} line(s) quarantined, {self.issues:,} resource issue(s); "
                f"snapshot {self.snapshot}" + ("" if self.changed else " (unchanged)"),
                f"resources: {types or 'none'}",
                *(
                    [
                        f"deleted on the server: {self.deletions:,} resource(s), "
                        f"{self.deleted:,} of them removed from the store"
                    ]
                    if self.deletions
                    else []
                ),
                *self._practice_warnings(),
                f"{self.lines:,} lines in {self.seconds:.1f} s with {self.workers} "
                f"process(es): {self.resources_per_second:,.0f} resources/s",
            ]
        )

    def _practice_warnings(self) -> list[str]:
        """Patients a sweep cannot place on a practice's list by ydernummer, said at once."""
        lines = []
        if self.without_practice:
            lines.append(
                f"note: {self.without_practice:,} patient(s) without a practice "
                "(no usable Patient.generalPractitioner): in the country's rates, on no "
                "practice's list"
            )
        count, example = self.practice_references
        if count:
            lines.append(
                f"warning: {count:,} patient(s) name a practice without a ydernummer (no "
                f"Organization with one in this input or the store, none on the reference), e.g. "
                f"{example}: that reference stands for their practice. Export the Organizations "
                "with the Patients, or into a new store"
            )
        if self.cluster_conflicts:
            number, clusters = next(iter(sorted(self.cluster_conflicts.items())))
            lines.append(
                f"warning: {len(self.cluster_conflicts):,} ydernummer(s) in more than one cluster "
                f"by their Organizations' partOf, e.g. {number} in {', '.join(clusters)}: the "
                f"last ({clusters[-1]}) is used. Correct the Organizations, or give the sweep a "
                "clusters file"
            )
        return lines


class IngestInProgressError(RuntimeError):
    """Another process is ingesting into the same store."""


class IngestSettingError(ValueError):
    """A DuckDB memory limit that does not work: one DuckDB refuses (told before anything is
    read), or one the SQL step cannot work in even when it spills (the store is unchanged)."""


class Progress:
    """What the ingest tells about its steps; the default says nothing (tests, --quiet)."""

    def start(self, step: str, total: int | None = None) -> None:
        """A step begins; ``total`` units (bytes) if it reports any."""

    def advance(self, amount: int) -> None:
        """Units of the current step done."""

    def finish(self) -> None:
        """The ingest is over."""


def ndjson_files(source: Path) -> list[Path]:
    """The NDJSON files of a source: the file itself, or a directory's ``*.ndjson`` and
    ``*.ndjson.gz`` in name order."""
    if not source.is_dir():
        return [source]
    return sorted([*source.glob("*.ndjson"), *source.glob("*.ndjson.gz")])


def inflated(path: Path, target: Path) -> Path:
    """``path`` itself, or for a gzip file (told by its first bytes, not its name) its content
    streamed to ``target``: chunks are byte ranges, which a compressed file does not have.
    Raises FhirInputError naming the file when it cannot be decompressed to the end."""
    with path.open("rb") as handle:
        if handle.read(len(GZIP_MAGIC)) != GZIP_MAGIC:
            return path
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "rb") as packed, target.open("wb") as out:
        while True:
            try:
                block = packed.read(1 << 20)
            except GZIP_ERRORS as exc:
                raise FhirInputError(f"{path.name}: {unreadable_gzip(exc)}") from None
            if not block:
                return target
            out.write(block)  # an OSError here is the disk's (full), not the input's


# --- the public entry ----------------------------------------------------------------------------


def ingest(
    source: Path,
    store: Path,
    *,
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Progress | None = None,
    deleted: Iterable[str] = (),
    memory_limit: str = MEMORY_LIMIT,
) -> IngestSummary:
    """Read every NDJSON file of ``source`` (a file or a directory) into the store at ``store``.

    An existing store is updated (resources replaced by name, the others kept); a new one is
    created. ``deleted`` names resources (``Type/id``) to remove from the store, as an
    incremental export's deleted files list them (:func:`fhir_adapter.bulk.deleted_resources`);
    one that ``source`` holds too is kept, as ``source`` has it. ``workers`` processes
    (default: the available cores) parse and normalise chunks of ``chunk_bytes``; with one
    worker everything runs in this process. ``memory_limit`` bounds DuckDB in the SQL step
    (DuckDB's notation: ``2GB``, ``500MB``, ``50%``); past it DuckDB spills to disk.
    """
    started = time.perf_counter()
    check_memory_limit(memory_limit)
    progress = progress or Progress()
    workers = max(1, workers or _cores())
    chunk_bytes = max(1, chunk_bytes)
    deletions = frozenset(deleted)
    sources = ndjson_files(source)
    _check_readable(sources)
    with store_lock(store) as store:
        work = store.parent / f".{store.name}.ingest-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "parts").mkdir(parents=True)
        try:
            timings: dict[str, float] = {}
            clock = time.perf_counter()
            inflate = work / "inflated"
            files = [inflated(p, inflate / f"{n}.ndjson") for n, p in enumerate(sources)]
            if files != sources:
                timings["inflate"], clock = time.perf_counter() - clock, time.perf_counter()
            previous = _previous(store)
            if workers > 1:
                _forkserver()  # it imports while this process scans
            progress.start("reference resources")
            try:
                reference = _reference_resources(files, previous, deletions)
            except pa.ArrowInvalid as exc:
                raise _damaged_staging(store, exc) from None
            timings["reference"], clock = time.perf_counter() - clock, time.perf_counter()
            tasks = tasks_of(files, chunk_bytes, work / "parts")
            for table in PART_SCHEMAS:
                (work / "parts" / table).mkdir()
                pq.write_table(
                    part_schema(table).empty_table(), work / "parts" / table / "empty.parquet"
                )
            progress.start("reading", sum(t.end - t.start for t in tasks))
            read = _read_all(tasks, sources, reference, workers, work / QUARANTINE, progress)
            timings["read"], clock = time.perf_counter() - clock, time.perf_counter()
            progress.start("resolving")
            try:
                built = _build(
                    work, read.offsets, previous, reference, workers, deletions, memory_limit
                )
            except duckdb.OutOfMemoryException as exc:
                duckdb_says = str(exc).splitlines()[0]  # the rest is advice on SQL settings
                raise IngestSettingError(
                    f"the SQL step does not fit in the memory limit {memory_limit!r}, or the disk "
                    f"under {store.parent} is too full to spill to; the store is "
                    f"unchanged ({duckdb_says})"
                ) from None
            except duckdb.Error as exc:
                raise _damaged_staging(store, exc) from None
            timings["resolve"], clock = time.perf_counter() - clock, time.perf_counter()
            new = work / "store"
            (work / QUARANTINE).replace(new / QUARANTINE)
            _fsync_tree(new)
            changed = previous is None or previous.get("snapshot") != built["snapshot"]
            _swap(new, store)
            timings["swap"] = time.perf_counter() - clock
        except (OSError, duckdb.IOException) as exc:
            raise _full_disk(store, exc) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
            progress.finish()
    return IngestSummary(
        files=len(sources),
        lines=read.lines,
        quarantined=read.quarantined,
        patients=built["rows"]["patients"],
        issues=built["issues"],
        snapshot=built["snapshot"],
        resources=dict(read.types),
        rows=built["rows"],
        seconds=time.perf_counter() - started,
        workers=workers,
        changed=changed,
        timings={step: round(seconds, 3) for step, seconds in timings.items()},
        worker_cpu_seconds=read.worker_cpu_seconds,
        worker_peak_mb=read.worker_peak_mb,
        deletions=len(deletions),
        deleted=built["deleted"] + reference.deleted,
        without_practice=built["without_practice"],
        practice_references=built["practice_references"],
        cluster_conflicts=reference.cluster_conflicts,
    )


def check_memory_limit(memory_limit: str) -> None:
    """Raise :class:`IngestSettingError` for a limit DuckDB refuses (``lots``, ``2'GB``)."""
    try:
        with duckdb.connect(":memory:") as con:
            configure(con, memory_limit)
    except (ValueError, duckdb.Error) as exc:
        raise IngestSettingError(f"bad DuckDB memory limit {memory_limit!r}: {exc}") from None


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def _check_readable(sources: list[Path]) -> None:
    """Raise FhirInputError naming an input file that cannot be opened (a directory or a dangling
    symlink named ``*.ndjson``, no permission) before anything of the store is touched."""
    for path in sources:
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise FhirInputError(f"cannot read {path}: {exc.strerror}") from None


_held: dict[tuple[Path, int], int] = {}
"""(lock file, thread) -> depth: the store locks this process holds, for re-entry."""


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[Path]:
    """One ingest per store at a time: an advisory lock next to the store's real directory.

    Yields that directory (symlinks resolved: a store reached through a link, or as ``.``, is
    locked and swapped as itself) once it is known to be a new path, an empty directory or a
    store. Re-entrant in a thread: the CLI holds it from the export or the Bundle conversion,
    which write into the store, through the ingest, which takes it again. Raises
    IngestInProgressError or StoreError."""
    store = _real(store)
    lock = store.parent / f".{store.name}.lock"
    key = (lock, threading.get_ident())
    if key in _held:
        _held[key] += 1
        try:
            yield store
        finally:
            _held[key] -= 1
        return
    with _lock_file(store, lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestInProgressError(f"another ingest into {store} is running") from None
        _held[key] = 1
        try:
            for leftover in store.parent.glob(f".{glob.escape(store.name)}.ingest-*"):
                # of a killed ingest; one killed just after the exchange holds the old store,
                # whose exports/ (the --since-last record) had yet to move into the new one
                if (leftover / "store").is_dir() and store.is_dir():
                    _move_extras(leftover / "store", store)
                shutil.rmtree(leftover, ignore_errors=True)
            _recover(store)
            _previous(store)  # a directory that is not a store is refused before it is touched
            yield store
        finally:
            del _held[key]
            fcntl.flock(handle, fcntl.LOCK_UN)


def _real(store: Path) -> Path:
    """``store`` with symlinks resolved: the lock and the swap must act on the directory itself
    (a swapped symlink leaves the real store stale; ``.`` has no name to put a lock beside)."""
    real = Path(store).resolve()
    if real.exists() and not real.is_dir():
        raise StoreError(f"{store} is a file: the store is a directory (new or from an ingest)")
    if not real.name:
        raise StoreError(f"{store} is the root directory: the store needs a directory of its own")
    for parent in real.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"{parent} is a file: it cannot hold the store {store}")
            break
    return real


def _lock_file(store: Path, lock: Path) -> IO[str]:
    """The open lock file, the store's parent created if need be; StoreError if it cannot be."""
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        return lock.open("w")
    except OSError as exc:
        raise StoreError(
            f"cannot create the store's lock file {lock}: {exc.strerror}; the store is unchanged"
        ) from None


def _previous(store: Path) -> dict[str, Any] | None:
    """The existing store's manifest, if it has staging tables to merge with; None for a new
    path, an empty directory or a store of ``write_store`` (replaced as a whole).

    Raises StoreError where the swap would lose what it cannot merge: a directory that is not a
    store (its ``*.parquet`` and same-named files would be deleted), a manifest that cannot be
    read (the staging would be dropped), a store of another format."""
    if not store.is_dir():
        return None
    path = store / MANIFEST
    if not path.exists() and not path.is_symlink():
        if any(entry.name not in _CLI_DIRECTORIES for entry in store.iterdir()):
            raise StoreError(_not_a_store(store))
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path} cannot be read ({exc}): the store is left as it is; restore the file, or "
            "ingest the whole export into a new directory"
        ) from None
    if not isinstance(manifest, dict) or not {"snapshot", "rows"} <= manifest.keys():
        raise StoreError(_not_a_store(store))
    written = manifest.get("format")
    if written is not None and written != STORE_FORMAT:
        raise StoreError(  # merging would lose what the old format lacks (or misread it)
            f"{store} was written in store format {written}; this version of Vejviser writes "
            f"format {STORE_FORMAT}. Ingest the whole export into a new directory."
        )
    if written is None or not (store / STAGING).is_dir():
        return None  # a store written by write_store (the tests): replaced as a whole
    manifest["directory"] = str(store)
    return manifest


def _full_disk(store: Path, exc: Exception) -> Exception:
    """A StoreError for a disk that filled up while the new store was written (a worker's part
    file, the decompressed copy, DuckDB's files): the old store is unchanged. Any other failure
    is passed on as it is."""
    if getattr(exc, "errno", None) != errno.ENOSPC and "No space left on device" not in str(exc):
        return exc
    return StoreError(
        f"the disk under {store.parent} is full ({str(exc).splitlines()[0]}): the store is "
        "unchanged; an ingest needs free space of about twice the store plus its input"
    )


def _damaged_staging(store: Path, exc: Exception) -> Exception:
    """A StoreError for a staging file that cannot be read (a disk fault, a copy cut short);
    any other failure of the SQL step is passed on as it is."""
    if str(store / STAGING) not in str(exc):
        return exc
    return StoreError(
        f"the store's staging cannot be read ({str(exc).splitlines()[0]}): the store is left as "
        "it is; ingest the whole export into a new directory"
    )


def _not_a_store(store: Path) -> str:
    return (
        f"{store} is not a Vejviser store (no manifest.json of an ingest) and not empty: "
        "ingest into a new or empty directory"
    )


# --- step 1: Organization and Medication resources ------------------------------------------------

# The type names of reference resources, each with a byte of it that is rare in clinical
# resources: a block is searched for the name only when it holds that byte, which memchr tells
# five times faster than the search for the name (most blocks are Observations without either).
# A line with a \u escape may spell its type that way ("Organi\u007aation"): parsed too. JSON
# written with ASCII only escapes every æ, ø and å, so such lines cost a parse each, no more.
_NEEDLES = ((b"z", b'"Organization"'), (b"M", b'"Medication"'), (b"\\", b"\\u"))
# Blocks of 1 MB stay in the cache through the searches of each needle (with 16 MB blocks the
# scan of the 100,000-patient population took 0.41 s, with 1 MB 0.27 s: docs/ingest.md).
_SCAN_BLOCK = 1 << 20


@dataclass(slots=True)
class Reference:
    """Organization and Medication resources: looked up by Patients and medication resources."""

    medications: dict[str, dict[str, Any]]
    organizations: dict[str, OrganizationRecord]
    raw: dict[str, tuple[str, bytes]]  # name -> (kind, JSON) as stored in staging
    clusters: dict[str, str]
    deleted: int = 0  # earlier ones removed as deleted on the server
    cluster_conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _reference_resources(
    files: list[Path], previous: dict[str, Any] | None, deleted: frozenset[str]
) -> Reference:
    """This input's Organizations and Medications (the first of a name wins, as in normalise),
    over the store's earlier ones (replaced by name, removed when ``deleted``)."""
    raw: dict[str, tuple[str, bytes]] = {}
    organizations_in_order: list[dict[str, Any]] = []
    if previous is not None:
        path = Path(previous["directory"]) / STAGING / "reference.parquet"
        table = pq.read_table(path)
        for name, kind, data in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        ):
            raw[name] = (kind, data)
    earlier = dict(raw)
    fresh: dict[str, tuple[str, bytes]] = {}
    for line in _lines_with(files, _NEEDLES):
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(resource) is not dict:
            continue
        kind = resource.get("resourceType")
        if kind == "Organization":
            organizations_in_order.append(resource)  # the cluster map reads them all
        ident = resource.get("id")
        if kind not in ("Organization", "Medication") or type(ident) is not str or not ident:
            continue  # without an id, nothing can refer to it
        fresh.setdefault(f"{kind}/{ident}", (kind, orjson.dumps(resource)))
    for name in fresh:
        earlier.pop(name, None)
    gone = [name for name in earlier if name in deleted]
    for name in gone:
        del earlier[name]
    raw = {**earlier, **fresh}
    medications: dict[str, dict[str, Any]] = {}
    organizations: dict[str, OrganizationRecord] = {}
    kept_organizations = []
    for name, (kind, data) in raw.items():
        resource = orjson.loads(data)
        if kind == "Medication":
            medications[name] = resource
        else:
            found = resource_records(resource, {}, medications)
            organizations[name] = found.organization  # type: ignore[assignment]
            if name in earlier:
                kept_organizations.append(resource)
    placed = list(_cluster_placements([*kept_organizations, *organizations_in_order]))
    return Reference(medications, organizations, raw, dict(placed), len(gone), _conflicts(placed))


def _lines_with(files: list[Path], needles: tuple[tuple[bytes, bytes], ...]) -> Iterator[bytes]:
    """Lines containing any of the ``(byte, needle)`` needles (a byte that the needle holds,
    searched first), found block by block (most blocks have none)."""
    for path in files:
        with path.open("rb") as handle:
            while True:
                block = handle.read(_SCAN_BLOCK)
                if not block:
                    break
                block += handle.readline()
                if any(byte in block and needle in block for byte, needle in needles):
                    for line in block.split(b"\n"):
                        if any(needle in line for _, needle in needles):
                            yield line.removeprefix(BOM)


def _conflicts(placements: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Ydernumre placed in more than one cluster -> the clusters, the one used last. Why:
    practices sharing a ydernummer are one practice (several doctors, one clinic), but one in
    two clusters leaves a cluster without it, and which one followed the input's order."""
    clusters: dict[str, dict[str, None]] = {}
    for number, cluster in placements:
        seen = clusters.setdefault(number, {})
        seen.pop(cluster, None)
        seen[cluster] = None
    return {n: tuple(c) for n, c in clusters.items() if len(c) > 1}


def _cluster_placements(resources: list[Any]) -> Iterator[tuple[str, str]]:
    """(ydernummer, cluster) of each practice Organization with a ``partOf`` (DK Core), in
    order: of several Organizations with one ydernummer, the last one's cluster is used."""
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
                yield identifier["value"], reference.removeprefix("Organization/")


# --- step 2: chunks, in parallel (engine.population.chunks) ---------------------------------


@dataclass(slots=True)
class _Read:
    """What reading every chunk gives the steps after it."""

    offsets: list[tuple[int, int]]  # (chunk, index offset)
    quarantined: int
    lines: int
    types: Counter[str]
    worker_cpu_seconds: float  # of worker processes (not this one): what wait4 cannot see
    worker_peak_mb: float


def _read_all(
    tasks: list[Task],
    files: list[Path],
    reference: Reference,
    workers: int,
    quarantine_path: Path,
    progress: Progress,
) -> _Read:
    """Run every chunk; write the quarantine in input order."""
    initargs = (reference.medications, reference.organizations)
    results: dict[int, ChunkResult] = {}
    with _chunk_runner(workers, initargs) as run:
        for task, result in run(tasks):
            results[task.chunk] = result
            progress.advance(task.end - task.start)
    offsets: list[tuple[int, int]] = []
    types: Counter[str] = Counter()
    quarantined = lines = objects = 0
    worker_cpu, worker_peak_kb, me = 0.0, 0, os.getpid()
    line_offset = {}  # file -> line breaks before the chunk
    with quarantine_path.open("wb") as quarantine:
        for task in tasks:
            result = results.pop(task.chunk)
            offsets.append((result.chunk, objects))
            if result.pid != me:
                worker_cpu += result.cpu_seconds
                worker_peak_kb = max(worker_peak_kb, result.peak_kb)
            objects += result.objects
            lines += result.lines
            types.update(result.types)
            first = line_offset.get(result.file, 0)
            for line, reason in result.quarantine:
                quarantined += 1
                record = {"file": files[result.file].name, "line": first + line + 1}
                quarantine.write(orjson.dumps({**record, "reason": reason}) + b"\n")
            line_offset[result.file] = first + result.line_breaks
    return _Read(offsets, quarantined, lines, types, worker_cpu, worker_peak_kb / 1024)


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """Workers forked from a server that has imported the chunk reader once.

    forkserver, not fork: the parent has threads (DuckDB's pool, the progress bar) and a forked
    child could inherit a lock one of them held and hang. Started before the reference scan, the
    server imports meanwhile; each worker importing for itself cost a second before the first
    chunk. (If the server already runs in this process, it is used as it is.)
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["engine.population.chunks"])
    forkserver.ensure_running()
    return context


@contextlib.contextmanager
def _chunk_runner(
    workers: int, initargs: tuple[Any, ...]
) -> Iterator[Callable[[list[Task]], Iterator[tuple[Task, ChunkResult]]]]:
    """A function that reads chunks and yields (task, result) as each finishes.

    With workers, the largest chunks go first: the small ones (the short files, the end of
    each file) then fill the gaps, where in file order one worker could be left with a whole
    chunk while the other idles."""
    if workers == 1:
        init_worker(*initargs)
        try:
            yield lambda tasks: ((task, read_chunk(task)) for task in tasks)
        finally:
            init_worker({}, {})
        return
    context = _forkserver()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=init_worker, initargs=initargs
    ) as pool:

        def run(tasks: list[Task]) -> Iterator[tuple[Task, ChunkResult]]:
            largest_first = sorted(tasks, key=lambda t: t.end - t.start, reverse=True)
            futures = {pool.submit(read_chunk, task): task for task in largest_first}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:  # a chunk that failed: the others need not run
                for future in futures:
                    future.cancel()

        yield run


# --- step 3: across resources, in SQL ---------------------------------------------------------------

_STAGING_COLUMNS = {
    "resources": "name, patient, kind, has_records",
    "issues": "name, patient, kind, reason, duplicate",
    "patients": "patient, birth_date, sex, practice, deceased, deceased_on",
    "observations": "patient, name, record, code, date, value, comparator, unit",
    "medications": 'patient, name, code, start, "end", status, request',
    "conditions": "patient, name, code, onset, abatement, clinical_status, recorded",
    "goals": "patient, name, code, value, start",
}
_FACT_ORDER = {
    "patients": "patient",
    "observations": "patient, resource, record, code, date",
    "medications": "patient, resource, code",
    "conditions": "patient, resource, code",
    "goals": "patient, resource, code, value",
    "codes": "code",
}
_EMPTY_STAGING = {
    "resources": "NULL::VARCHAR AS name, NULL::VARCHAR AS patient, NULL::VARCHAR AS kind, "
    "NULL::BOOLEAN AS has_records",
    "issues": "NULL::VARCHAR AS name, NULL::VARCHAR AS patient, NULL::VARCHAR AS kind, "
    "NULL::VARCHAR AS reason, NULL::BOOLEAN AS duplicate",
    "codes": "NULL::INTEGER AS code, NULL::VARCHAR AS system, NULL::VARCHAR AS value",
}


def _sql_string(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _build(
    work: Path,
    chunks: list[tuple[int, int]],
    previous: dict[str, Any] | None,
    reference: Reference,
    workers: int,
    deleted: frozenset[str],
    memory_limit: str,
) -> dict[str, Any]:
    """Merge this ingest's parts with the store's staging; derive and write the fact tables.

    A staged resource is replaced when this input has one of its name, and removed when it is
    ``deleted`` (and this input has none of its name)."""
    out = work / "store"
    (out / STAGING).mkdir(parents=True)
    parts = work / "parts"
    (work / "tmp").mkdir()
    with duckdb.connect(":memory:") as con, ThreadPoolExecutor(1) as background:
        configure(con, memory_limit, str(work / "tmp"), max(1, workers))  # spills to tmp

        def run(sql: str) -> duckdb.DuckDBPyConnection:
            started = time.perf_counter()
            result = con.execute(sql)
            log.debug("%.3f s: %s", time.perf_counter() - started, sql[:100])
            return result

        run('CREATE TABLE chunks (chunk INTEGER, "offset" BIGINT)')
        if chunks:
            run(
                "INSERT INTO chunks SELECT * FROM (VALUES "
                + ", ".join(f"({c}, {o})" for c, o in chunks)
                + ")"
            )
        # A resource without an id is named "Type #<index>", its position in the whole input, as
        # normalise names it; a worker knows only its position in the chunk.
        run(
            "CREATE MACRO fixed(name, ordinal) AS CASE WHEN contains(name, '/') THEN name "
            "ELSE regexp_replace(name, ' #[0-9]+$', ' #' || ordinal::VARCHAR) END"
        )

        def part(table: str) -> str:
            path = _sql_string(parts / table / "*.parquet")
            if table == "patients":
                return (
                    f'(SELECT p.* EXCLUDE (ordinal), p.ordinal + c."offset" AS ordinal '
                    f"FROM read_parquet({path}) p JOIN chunks c USING (chunk))"
                )
            return (
                f'(SELECT p.* EXCLUDE (ordinal, name), p.ordinal + c."offset" AS ordinal, '
                f'fixed(p.name, p.ordinal + c."offset") AS name '
                f"FROM read_parquet({path}) p JOIN chunks c USING (chunk))"
            )

        def old(table: str) -> str:
            if previous is None:
                if table in _EMPTY_STAGING:
                    return f"(SELECT {_EMPTY_STAGING[table]} WHERE false)"
                return f"(SELECT * FROM {part(table)} WHERE false)"
            path = Path(previous["directory"]) / STAGING / f"{table}.parquet"
            return f"read_parquet({_sql_string(path)})"

        run(f"CREATE TABLE n_resources AS SELECT * FROM {part('resources')}")
        run(f"CREATE TABLE n_issues AS SELECT * FROM {part('issues')}")
        # Duplicates: the first of a name among the resources that belong to a patient is used.
        # Most inputs have none; then no statement below filters a million rows by a semi-join.
        run(
            "CREATE TABLE n_dropped AS SELECT r.ordinal FROM n_resources r JOIN "
            "(SELECT name, min(ordinal) AS first FROM n_resources WHERE patient IS NOT NULL "
            "GROUP BY name HAVING count(*) > 1) d USING (name) "
            "WHERE r.patient IS NOT NULL AND r.ordinal <> d.first"
        )
        ((dropped,),) = run("SELECT count(*) FROM n_dropped").fetchall()
        con.register("deleted_names", pa.table({"name": pa.array(sorted(deleted), pa.string())}))
        run("CREATE TABLE deletions AS SELECT name FROM deleted_names")
        con.unregister("deleted_names")
        run(
            "CREATE TABLE n_names AS SELECT NULL::VARCHAR AS name WHERE false"
            if previous is None  # nothing to replace
            else "CREATE TABLE n_names AS SELECT name FROM n_resources "
            "UNION SELECT name FROM n_issues UNION SELECT name FROM deletions"
        )
        (removed,) = (
            run(
                "SELECT count(*) FROM (SELECT name FROM deletions EXCEPT "
                "(SELECT name FROM n_resources UNION SELECT name FROM n_issues)) "
                f"WHERE name IN (SELECT name FROM {old('resources')})"
            ).fetchone()  # type: ignore[misc]
            if deleted and previous is not None  # else the staging need not be read again
            else (0,)
        )
        kept = "ordinal NOT IN (SELECT ordinal FROM n_dropped)" if dropped else "true"
        codes_path = _sql_string(parts / "codes" / "*.parquet")
        run(f"CREATE TABLE n_codes AS SELECT * FROM read_parquet({codes_path})")
        run(f"CREATE TABLE o_codes AS SELECT * FROM {old('codes')}")
        run(
            "CREATE TABLE s_codes AS SELECT (row_number() OVER (ORDER BY system, value) - 1)"
            "::INTEGER AS code, system, value FROM "
            "(SELECT system, value FROM n_codes UNION SELECT system, value FROM o_codes)"
        )
        run(
            "CREATE TABLE n_code_map AS SELECT n.chunk, n.code, s.code AS id FROM n_codes n "
            "JOIN s_codes s USING (system, value)"
        )
        run(
            "CREATE TABLE o_code_map AS SELECT o.code, s.code AS id FROM o_codes o "
            "JOIN s_codes s USING (system, value)"
        )
        replaced = "name NOT IN (SELECT name FROM n_names)"
        run(
            "CREATE TABLE s_resources AS "
            f"SELECT {_STAGING_COLUMNS['resources']} FROM n_resources WHERE {kept} "
            f"UNION ALL SELECT {_STAGING_COLUMNS['resources']} FROM {old('resources')} "
            f"WHERE {replaced}"
        )
        run(
            "CREATE TABLE s_issues AS "
            f"SELECT name, patient, kind, reason, false AS duplicate FROM n_issues WHERE {kept} "
            f"UNION ALL SELECT name, patient, kind, '{DUPLICATE}', true FROM n_resources "
            f"WHERE NOT {kept} "
            f"UNION ALL SELECT {_STAGING_COLUMNS['issues']} FROM {old('issues')} WHERE {replaced}"
        )
        run(
            f"CREATE TABLE s_patients AS SELECT {_STAGING_COLUMNS['patients']} "
            f"FROM {part('patients')} WHERE {kept} UNION ALL "
            f"SELECT {_STAGING_COLUMNS['patients']} FROM {old('patients')} "
            "WHERE 'Patient/' || patient NOT IN (SELECT name FROM n_names)"
        )
        for table in _RECORD_TABLES:
            columns = _STAGING_COLUMNS[table]
            new_columns = columns.replace("code", "m.id AS code", 1)
            old_columns = columns.replace("code", "m.id AS code", 1)
            run(
                f"CREATE TABLE s_{table} AS SELECT {new_columns} FROM {part(table)} p "
                "JOIN n_code_map m ON m.chunk = p.chunk AND m.code = p.code "
                f"WHERE {kept} "
                f"UNION ALL SELECT {old_columns} FROM {old(table)} o "
                f"JOIN o_code_map m ON m.code = o.code WHERE o.{replaced}"
            )
        # The staging files are written from the s_ tables, which nothing below changes, on a
        # second connection beside the facts: many of those statements are small enough for
        # DuckDB to run on one thread (one row group), which leaves a core to the copies.
        staged = background.submit(_write_staging, con.cursor(), out / STAGING)
        pq.write_table(
            pa.Table.from_pylist(
                [{"name": n, "kind": k, "resource": r} for n, (k, r) in reference.raw.items()],
                schema=_REFERENCE_SCHEMA,
            ),
            out / STAGING / "reference.parquet",
        )

        # The facts: what normalise + facts_tables make of the merged resources.
        known = "patient IN (SELECT patient FROM s_patients)"
        # A request is not used when a statement record of its patient shares a coding with it
        # and had not ended before the request was written (normalise._covers).
        run(
            "CREATE TABLE covered AS SELECT DISTINCT r.name FROM s_medications r "
            "JOIN s_medications s ON s.patient = r.patient AND s.code = r.code "
            'WHERE r.request AND NOT s.request AND (s."end" IS NULL OR r.start IS NULL '
            'OR s."end" >= r.start)'
        )
        run(
            "CREATE VIEW f_observations AS SELECT patient, name AS resource, record, code, "
            f"date, value, comparator, unit FROM s_observations WHERE {known}"
        )
        run(
            "CREATE VIEW f_medications AS SELECT patient, name AS resource, code, start, "
            "\"end\", status, CASE WHEN starts_with(name, 'MedicationRequest/') THEN 'request' "
            "ELSE 'statement' END AS source FROM s_medications "
            f"WHERE {known} AND (NOT request OR name NOT IN (SELECT name FROM covered))"
        )
        run(
            "CREATE VIEW f_conditions AS SELECT patient, name AS resource, code, onset, "
            f"abatement, clinical_status, recorded FROM s_conditions WHERE {known}"
        )
        run(
            "CREATE VIEW f_goals AS SELECT patient, name AS resource, code, value, start "
            f"FROM s_goals WHERE {known}"
        )
        # Codes of the facts, numbered by (system, value): the same facts, the same numbers.
        used = " UNION ".join(f"SELECT code FROM f_{t}" for t in _RECORD_TABLES)
        run(
            "CREATE TABLE f_code_map AS SELECT code AS staged, (row_number() OVER "
            "(ORDER BY system, value) - 1)::INTEGER AS code, system, value FROM s_codes "
            f"WHERE code IN ({used})"
        )
        digest = hashlib.sha256()
        rows = {}
        for table in FACT_TABLES:
            names = SCHEMAS[table].names
            columns = ", ".join(("m.code" if c == "code" else f't."{c}"') for c in names)
            if table == "patients":
                query = f"SELECT {columns} FROM s_patients t"
            elif table == "codes":
                query = "SELECT code, system, value FROM f_code_map"
            else:
                query = f"SELECT {columns} FROM f_{table} t JOIN f_code_map m ON m.staged = t.code"
            # Not materialised: the two reads of the query cost less than a table of its rows.
            count, total = run(
                f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM ({query}) t"
            ).fetchone()  # type: ignore[misc]
            rows[table] = int(count)
            digest.update(f"{table}:{count}:{total}\n".encode())
            path = _sql_string(out / f"{table}.parquet")
            run(
                f"COPY (SELECT * FROM ({query}) ORDER BY {_FACT_ORDER[table]}) TO {path} "
                "(FORMAT parquet)"
            )
        digest.update(json.dumps(dict(sorted(reference.clusters.items()))).encode())
        issues = _write_issues(con, out / ISSUES)
        # normalise falls back to the reference as written ("Organization/x", a URL, urn:uuid)
        reference_like = "(contains(practice, '/') OR contains(practice, ':'))"
        without, references, example = run(
            "SELECT count(*) FILTER (WHERE practice IS NULL), "
            f"count(*) FILTER (WHERE {reference_like}), min(practice) FILTER (WHERE {reference_like}) "
            "FROM s_patients"
        ).fetchone()  # type: ignore[misc]
        staged.result()
    snapshot = digest.hexdigest()[:16]
    manifest = {
        "format": STORE_FORMAT,
        "snapshot": snapshot,
        "rows": rows,
        "clusters": dict(sorted(reference.clusters.items())),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {
        "snapshot": snapshot,
        "rows": rows,
        "issues": issues,
        "deleted": int(removed),
        "without_practice": int(without),
        "practice_references": (int(references), example),
    }


def _write_staging(cursor: duckdb.DuckDBPyConnection, directory: Path) -> None:
    """What the next ingest merges with: the staging tables as Parquet files."""
    with cursor:
        for table in (*_STAGING_COLUMNS, "codes"):
            path = _sql_string(directory / f"{table}.parquet")
            cursor.execute(f"COPY s_{table} TO {path} (FORMAT parquet)")


def _write_issues(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The store's issues, as normalise reports them for the merged resources."""
    patients = "(SELECT patient FROM s_patients)"
    query = (
        "SELECT name AS resource, reason FROM s_issues WHERE patient IS NULL OR duplicate "
        "OR kind IS DISTINCT FROM 'MedicationRequest' "
        f"OR (patient IN {patients} AND name NOT IN (SELECT name FROM covered)) "
        "UNION ALL SELECT name, 'refers to Patient/' || patient || ', which is not in the input' "
        f"FROM s_resources WHERE patient IS NOT NULL AND kind <> 'Patient' "
        f"AND patient NOT IN {patients} AND (has_records OR kind = 'MedicationRequest')"
    )
    con.execute(f"CREATE TABLE out_issues AS {query}")
    con.execute(
        f"COPY (SELECT * FROM out_issues ORDER BY resource, reason) TO {_sql_string(path)} "
        "(FORMAT json)"
    )
    return int(con.execute("SELECT count(*) FROM out_issues").fetchone()[0])  # type: ignore[index]


# --- step 4: swap the new store in -------------------------------------------------------------------


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in (directory, *(p for p in directory.rglob("*") if p.is_dir())):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2); False where that is not possible."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _old_name(store: Path) -> Path:
    return store.with_name(f".{store.name}.old")


def _recover(store: Path) -> None:
    """A crash between the two renames of the fallback swap leaves the old store aside."""
    old = _old_name(store)
    if old.is_dir() and not store.exists():
        old.rename(store)
    elif old.is_dir():
        shutil.rmtree(old)


def _move_extras(old: Path, store: Path) -> None:
    """What the old store held besides the store's own files (``exports/``, ``bundles/``, a
    user's files) goes into ``store``, unless ``store`` has an entry of that name."""
    for entry in old.iterdir():
        kept = entry.name not in _STORE_FILES and not entry.name.endswith(".parquet")
        if kept and not (store / entry.name).exists():
            entry.rename(store / entry.name)


def _swap(new: Path, store: Path) -> None:
    """Put ``new`` in place of ``store`` atomically; keep what else the old store held
    (``export/``, the files of a bulk export from a server)."""
    if not store.exists():
        new.rename(store)
        old = None
    elif _exchange(new, store):
        old = new  # now holds the previous store
    else:
        old = _old_name(store)
        store.rename(old)
        new.rename(store)
    if old is not None:
        _move_extras(old, store)
        shutil.rmtree(old)
    descriptor = os.open(store.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
