"""A sweep's files computed where its rows are: in DuckDB, set-based, streamed to disk.

Why: a national sweep has some 80 million patient x guideline rows. As Python objects
(:class:`~engine.population.outcomes.PopulationOutcome`, then rows of every file) they take tens of
gigabytes and most of an hour; as DuckDB rows they are sorted, counted and written in minutes in
bounded memory (DuckDB spills past its ``memory_limit``). Only what must be Python stays Python:
the reasons in words (rendered by :func:`rules.rendering.render`, as on the cards), the CSV cells
and the MeasureReports, one practice at a time.

The files are the same, row for row and byte for byte, as those of
:func:`engine.population.run.write_outputs` from the same sweep, which stays the reference (pure
functions of :mod:`engine.population.outputs` and :mod:`engine.population.measure_report`) and the
path for other engines; a test checks the two against each other.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from engine.population import outputs as out
from engine.population.duckdb_engine import configure
from engine.population.measure_report import (
    POPULATIONS,
    Entries,
    population_counts,
    subject_list_report,
    summary_report,
)
from engine.population.sql import GuidelineSql, RenderedSweep, table_name
from rules import tree as t

CLUSTERS = "vejviser_clusters"
EXCEPTIONS = "vejviser_exceptions"
OUTCOMES = "vejviser_outcomes"
LISTED = "vejviser_listed_patients"  # the patients a guideline's reasons are rendered for
LISTED_ROWS = "vejviser_listed_rows"  # outcome rows that put a patient on a list, one per rec
BATCH = 20_000  # rows fetched into Python at a time
_BOM = "\ufeff"

Advance = Callable[[int], None]
"""Reports progress: called with the number of units of work just done."""


def _q(text: object) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _i(name: str) -> str:
    """A SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _path(path: Path) -> str:
    return _q(str(path))


# -- outcomes.parquet ----------------------------------------------------------------------------


def register_inputs(
    con: duckdb.DuckDBPyConnection,
    clusters: Mapping[str, str],
    exceptions: out.ExceptionReasons,
) -> None:
    """The practice -> cluster map and the CDS-feedback exceptions in force, as tables."""
    con.register(
        CLUSTERS,
        pa.table(
            {"practice": list(clusters), "cluster": list(clusters.values())},
            schema=pa.schema([("practice", pa.string()), ("cluster", pa.string())]),
        ),
    )
    con.register(
        EXCEPTIONS,
        pa.table(
            {
                "patient": [p for p, _ in exceptions],
                "guideline": [g for _, g in exceptions],
                "codes": [list(codes) for codes in exceptions.values()],
            },
            schema=pa.schema(
                [
                    ("patient", pa.string()),
                    ("guideline", pa.string()),
                    ("codes", pa.list_(pa.string())),
                ]
            ),
        ),
    )


def unregister_inputs(con: duckdb.DuckDBPyConnection) -> None:
    for name in (CLUSTERS, EXCEPTIONS):
        con.unregister(name)


_EMPTY_INDICATORS = "[]::STRUCT(indicator VARCHAR, membership VARCHAR)[]"
_EMPTY_TARGETS = "[]::STRUCT(name VARCHAR, value DOUBLE, source VARCHAR, set_by VARCHAR)[]"


def _guideline_outcomes(index: int, sql: GuidelineSql) -> str:
    """One guideline's rows of outcomes.parquet, as :func:`outputs.outcomes_table` builds them from
    :func:`duckdb_engine.outcome` and :func:`outputs.apply_exceptions`: its register (the
    ``g<n>_outcomes`` rows), then the patients outside it with an exception recorded."""
    g = sql.g
    recommendations = "[]::VARCHAR[]"
    for n, r in reversed(list(enumerate(g.recommendations))):  # list_concat: no lambdas (1.1)
        fired = f"CASE WHEN rec_{n} THEN [{_q(r.id)}] ELSE []::VARCHAR[] END"
        recommendations = f"list_concat({fired}, {recommendations})"
    memberships = [
        f"{{'indicator': {_q(i.id)}, 'membership': CASE WHEN ind_{n}_num OR ind_{n}_den THEN "
        f"CASE WHEN e.codes IS NOT NULL THEN 'excepted' WHEN ind_{n}_num THEN 'numerator' "
        f"ELSE 'denominator' END WHEN ind_{n}_exc THEN 'excepted' ELSE 'outside' END}}"
        for n, i in enumerate(g.indicators)
    ]
    indicators = f"[{', '.join(memberships)}]" if memberships else _EMPTY_INDICATORS
    targets = [
        f"{{'name': {_q(x.name)}, 'value': CAST({_i(x.name + '__shared')} AS DOUBLE), "
        f"'source': CAST({_i(x.name + '__shared_source')} AS VARCHAR), "
        f"'set_by': CAST({_i(x.name + '__set_by')} AS VARCHAR)}}"
        for x in g.targets
    ]
    target_list = f"[{', '.join(targets)}]" if targets else _EMPTY_TARGETS
    provenance = f"{_q(g.id)} AS guideline, {_q(g.version)} AS version, {_q(g.content_hash)}"
    registered = (
        f"SELECT CAST(o.patient AS VARCHAR) AS patient, CAST(o.practice AS VARCHAR) AS practice, "
        f"c.cluster AS cluster, {provenance} AS content_hash, true AS in_register, "
        f"{recommendations} AS recommendations, {indicators} AS indicators, "
        f"{target_list} AS targets, COALESCE(e.codes, []::VARCHAR[]) AS exceptions "
        f"FROM {table_name(index, 'outcomes')} AS o "
        f"LEFT JOIN {CLUSTERS} AS c ON c.practice = o.practice "
        f"LEFT JOIN {EXCEPTIONS} AS e ON e.patient = o.patient AND e.guideline = {_q(g.id)}"
    )
    excepted_outside = (
        f"SELECT CAST(p.patient AS VARCHAR), CAST(p.practice AS VARCHAR), c.cluster, "
        f"{provenance}, false, []::VARCHAR[], {_EMPTY_INDICATORS}, {_EMPTY_TARGETS}, e.codes "
        f"FROM {EXCEPTIONS} AS e JOIN patients AS p ON p.patient = e.patient "
        f"LEFT JOIN {CLUSTERS} AS c ON c.practice = p.practice "
        f"ANTI JOIN {table_name(index, 'base')} AS b ON b.patient = e.patient "
        f"WHERE e.guideline = {_q(g.id)}"
    )
    return f"{registered} UNION ALL {excepted_outside}"


def write_outcomes(con: duckdb.DuckDBPyConnection, rendered: RenderedSweep, path: Path) -> int:
    """outcomes.parquet, sorted as :func:`outputs.outcome_order`; then readable as ``OUTCOMES``.
    Returns the number of rows.

    One sorted COPY: the rows are the registers (some 3 million at 5.5 million patients), which
    DuckDB sorts within its memory limit and spills past it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rendered.compiled:
        union = " UNION ALL ".join(_guideline_outcomes(i, s) for i, s in rendered.compiled)
    else:
        union = (
            "SELECT NULL::VARCHAR AS patient, NULL::VARCHAR AS practice, NULL::VARCHAR AS cluster, "
            "NULL::VARCHAR AS guideline, NULL::VARCHAR AS version, NULL::VARCHAR AS content_hash, "
            f"NULL::BOOLEAN AS in_register, []::VARCHAR[] AS recommendations, "
            f"{_EMPTY_INDICATORS} AS indicators, {_EMPTY_TARGETS} AS targets, "
            "[]::VARCHAR[] AS exceptions WHERE false"
        )
    con.execute(
        f"COPY (SELECT * FROM ({union}) ORDER BY COALESCE(practice, ''), patient, guideline) "
        f"TO {_path(path)} (FORMAT PARQUET, COMPRESSION ZSTD)"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {OUTCOMES} AS SELECT * FROM read_parquet({_path(path)})"
    )
    return int(con.execute(f"SELECT count(*) FROM {OUTCOMES}").fetchall()[0][0])


# -- indicators ----------------------------------------------------------------------------------


def indicator_rows(
    con: duckdb.DuckDBPyConnection,
    guidelines: Sequence[t.CompiledGuideline],
    clusters: Mapping[str, str],
    language: str,
) -> list[out.IndicatorRow]:
    """:func:`outputs.indicator_rows` over ``OUTCOMES``: the counts by SQL, the rows by the same
    function that builds them from Python outcomes. The units are those of the swept
    ``patients`` (a practice with nobody in any register still gets its rows of zeros)."""
    long = (
        "SELECT practice, cluster, guideline, i.indicator AS indicator, i.membership AS m FROM "
        f"(SELECT practice, cluster, guideline, UNNEST(indicators) AS i FROM {OUTCOMES} "
        "WHERE in_register)"
    )
    counts_sql = (
        "count(*), count(*) FILTER (WHERE m = 'numerator'), "
        "count(*) FILTER (WHERE m IN ('numerator', 'denominator')), "
        "count(*) FILTER (WHERE m = 'excepted')"
    )
    query = (
        f"WITH long AS ({long}) "
        f"SELECT 'practice', practice, guideline, indicator, {counts_sql} FROM long "
        "WHERE practice IS NOT NULL GROUP BY ALL UNION ALL "
        f"SELECT 'cluster', cluster, guideline, indicator, {counts_sql} FROM long "
        "WHERE practice IS NOT NULL AND cluster IS NOT NULL GROUP BY ALL UNION ALL "
        f"SELECT 'all', 'all', guideline, indicator, {counts_sql} FROM long GROUP BY ALL"
    )
    counts = {
        (level, unit, guideline, indicator): [register, numerator, denominator, excepted]
        for level, unit, guideline, indicator, register, numerator, denominator, excepted in (
            con.execute(query).fetchall()
        )
    }
    units = {
        unit
        for (practice,) in con.execute("SELECT DISTINCT practice FROM patients").fetchall()
        for unit in out.units_of(practice, clusters)
    }
    return out.indicator_rows_from_counts(counts, units, guidelines, language)


# -- patient lists -------------------------------------------------------------------------------


def practices(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every practice with patients (each gets a list, possibly empty), sorted."""
    query = "SELECT DISTINCT practice FROM patients WHERE practice IS NOT NULL ORDER BY 1"
    return [str(p) for (p,) in con.execute(query).fetchall()]


def latest_record(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    """The latest date of any clinical record in the store: a sweep as of a later date sees
    every look-back window run past the data."""
    query = (
        "SELECT max(d) FROM (SELECT max(date) AS d FROM observations UNION ALL "
        "SELECT max(start) FROM medications UNION ALL SELECT max(onset) FROM conditions)"
    )
    row = con.execute(query).fetchone()
    return row[0] if row else None


def _rows(result: duckdb.DuckDBPyConnection) -> Iterator[tuple[Any, ...]]:
    while batch := result.fetchmany(BATCH):
        yield from batch


def write_lists(
    con: duckdb.DuckDBPyConnection,
    rendered: RenderedSweep,
    directory: Path,
    practice_files: Mapping[str, str],
    guidelines: Sequence[t.CompiledGuideline],
    language: str,
    advance: Advance | None = None,
) -> int:
    """Every practice's list (``lists/<file>.csv``), as :func:`outputs.list_rows` and
    :func:`run.list_reasons` make it, written a guideline at a time (guidelines in id order, each
    practice's file appended to) so only one guideline's listed patients are in Python at once.
    ``practice_files`` maps each practice with patients to its file name. Returns the rows."""
    by_id = {g.id: g for g in guidelines}
    handles = {}
    for practice, name in practice_files.items():
        path = directory / "lists" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        # a BOM so that Excel, which is how most practices open a CSV, reads æ, ø and å; written
        # by hand: the "utf-8-sig" codec encodes in Python on every write, "utf-8" in C
        handle = path.open("w", encoding="utf-8", newline="")
        handle.write(_BOM + ",".join(map(out.csv_field, out.LIST_COLUMNS)) + "\n")
        handles[practice] = handle
    written = 0
    # the rows that list someone, read from outcomes.parquet once (not once per guideline: the
    # file is sorted by practice and patient, so a guideline filter skips nothing)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {LISTED_ROWS} AS SELECT guideline, practice, patient, "
        f"UNNEST(recommendations) AS rec, exceptions FROM {OUTCOMES} "
        "WHERE practice IS NOT NULL AND len(recommendations) > 0"
    )
    try:
        for index, sql in sorted(rendered.compiled, key=lambda c: c[1].g.id):
            g = sql.g
            if g.recommendations:
                written += _write_guideline_list(con, index, sql, by_id, handles, language)
            if advance is not None:
                advance(1)
    finally:
        for handle in handles.values():
            handle.close()
        con.execute(f"DROP VIEW IF EXISTS {LISTED}")
        con.execute(f"DROP TABLE IF EXISTS {LISTED_ROWS}")
    return written


def _write_guideline_list(
    con: duckdb.DuckDBPyConnection,
    index: int,
    sql: GuidelineSql,
    by_id: Mapping[str, t.CompiledGuideline],
    handles: Mapping[str, Any],
    language: str,
) -> int:
    from engine.population.run import _ReasonPlan

    g = sql.g
    plan = _ReasonPlan(sql, by_id, language, first_column=5)  # after the five columns below
    order = "[" + ", ".join(_q(r.id) for r in g.recommendations) + "]"
    mine = f"SELECT * FROM {LISTED_ROWS} WHERE guideline = {_q(g.id)}"
    # the reasons' expressions computed for this guideline's listed patients only
    con.execute(f"CREATE OR REPLACE TEMP VIEW {LISTED} AS SELECT DISTINCT patient FROM ({mine})")
    reasons = plan.query().sql("duckdb")
    columns = "".join(f", r.{_i(alias)}" for alias in plan.columns)
    query = (
        "SELECT f.practice AS vejviser_practice, f.patient AS patient, f.rec AS vejviser_rec, "
        "f.exceptions AS vejviser_exceptions, r.patient IS NOT NULL AS vejviser_found"
        f"{columns} FROM ({mine}) AS f LEFT JOIN ({reasons}) AS r ON r.patient = f.patient "
        f"ORDER BY f.practice, list_position({order}, f.rec), f.patient"
    )
    recs = {r.id: r for r in g.recommendations}
    title = g.title.in_language(language)
    field, cell = out.csv_field, out.cell
    fixed = {  # the fields that are the same for every patient a recommendation lists
        r.id: ",".join(field(cell(v)) for v in (g.id, g.version, title, r.id, r.indicator))
        for r in recs.values()
    }
    suggestions = {
        r.id: field(r.suggestion.label.in_language(language) if r.suggestion else "")
        for r in recs.values()
    }
    plain = {r.id: field(out.plain_summary(r.summary.in_language(language))) for r in recs.values()}
    written = 0
    practice = None
    write: Any = None  # the practice's file's write, set by its first row
    for row in _rows(con.execute(query)):
        listed_in, patient, rec, excepted, found = row[:5]
        if listed_in != practice:
            practice = listed_in
            write = handles[practice].write
        if found:
            reason = plan.reason(recs[rec], row)
            text, key_values = field(cell(reason.text)), field(cell(reason.key_values))
        else:
            text, key_values = plain[rec], ""
        exceptions = field(cell("|".join(excepted))) if excepted else ""
        write(
            f"{field(cell(patient))},{fixed[rec]},{text},{suggestions[rec]},{key_values},"
            f"{exceptions}\n"
        )
        written += 1
    return written


# -- MeasureReports ------------------------------------------------------------------------------

_FHIR_POPULATIONS = {
    "numerator": ("initial-population", "denominator", "numerator"),
    "denominator": ("initial-population", "denominator"),
    "excepted": ("initial-population", "denominator", "denominator-exception"),
    "outside": ("initial-population",),
}


def write_measure_reports(
    con: duckdb.DuckDBPyConnection,
    directory: Path,
    practice_files: Mapping[str, str],
    guidelines: Sequence[t.CompiledGuideline],
    as_of: dt.date,
    language: str,
    advance: Advance | None = None,
) -> int:
    """Every practice's MeasureReports, as :func:`run.write_outputs` writes them from
    :func:`measure_report.practice_members`: the members grouped by SQL, one practice in Python at
    a time. Returns the number of files."""
    with_indicators = [g for g in sorted(guidelines, key=lambda g: g.id) if g.indicators]
    query = (
        "SELECT practice, guideline, i.indicator AS indicator, i.membership AS membership, "
        "list(patient ORDER BY patient) AS patients FROM "
        f"(SELECT practice, guideline, patient, UNNEST(indicators) AS i FROM {OUTCOMES} "
        "WHERE practice IS NOT NULL AND in_register) GROUP BY ALL ORDER BY practice"
    )
    result = con.execute(query)
    reports = 0

    def members_of(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, dict[str, list[str]]]]:
        found: dict[str, dict[str, dict[str, list[str]]]] = {}
        for _, guideline, indicator, membership, patients in rows:
            populations = found.setdefault(guideline, {}).setdefault(
                indicator, {code: [] for code in POPULATIONS}
            )
            for code in _FHIR_POPULATIONS[membership]:
                populations[code].extend(patients)
        return found

    def fetched() -> Iterator[tuple[Any, ...]]:
        while batch := result.fetchmany(1000):
            yield from batch

    rows = fetched()
    following = next(rows, None)
    for practice, name in practice_files.items():  # sorted, as the groups
        mine: list[tuple[Any, ...]] = []
        while following is not None and following[0] == practice:
            mine.append(following)
            following = next(rows, None)
        members = members_of(mine)
        folder = directory / "measure_reports" / name
        entries = Entries()
        for g in with_indicators:
            own = members.get(g.id, {})
            summary = summary_report(practice, g, population_counts(own), as_of, language)
            subjects = subject_list_report(practice, g, own, as_of, language, entries)
            _write_json(folder / f"{g.id}.summary.json", summary)
            _write_json(folder / f"{g.id}.subject-list.json", subjects)
            reports += 2
        if advance is not None:
            advance(1)
    return reports


class MeasureReportsWorker:
    """MeasureReports written by a worker process from a finished outcomes.parquet, beside the
    caller, who meanwhile writes the lists.

    Why a process: both steps are Python on one core (building 50,000 reports' JSON; rendering
    2.4 million reasons at 5.5 million patients); the machine has a second. The worker reads the
    file with its own DuckDB (one thread, ``memory_limit``), so it needs nothing of the caller's
    connection. Started from a forkserver: the caller has DuckDB's threads, and a forked child
    could inherit a lock one of them held.
    """

    def __init__(
        self,
        outcomes: Path,
        directory: Path,
        practice_files: Mapping[str, str],
        guidelines: Sequence[t.CompiledGuideline],
        as_of: dt.date,
        language: str,
        memory_limit: str = "1GB",
    ) -> None:
        context = multiprocessing.get_context("forkserver")
        self._written = context.Value("q", 0, lock=False)  # practices done, for progress
        self._result, sending = context.Pipe(duplex=False)
        job = _ReportsJob(
            outcomes, directory, dict(practice_files), tuple(guidelines), as_of, language
        )
        self._process = context.Process(
            target=_measure_reports_worker,
            args=(sending, self._written, memory_limit, job),
            name="vejviser-measure-reports",
            daemon=True,
        )
        self._process.start()
        sending.close()

    def wait(self, advance: Advance | None = None) -> tuple[int, float]:
        """Wait for the worker, advancing by practices done; returns the files it wrote and its
        wall seconds. Raises RuntimeError with the worker's error."""
        reported = 0
        while not self._result.poll(0.2):
            if not self._process.is_alive() and not self._result.poll():
                break
            reported = self._advance(advance, reported)
        self._advance(advance, reported)
        try:
            status, *value = self._result.recv()
        except EOFError:
            raise RuntimeError(
                f"the MeasureReports worker died (exit code {self._process.exitcode})"
            ) from None
        finally:
            self._process.join()
        if status != "ok":
            raise RuntimeError(f"writing the MeasureReports failed in the worker:\n{value[0]}")
        files, seconds = value
        return int(files), float(seconds)

    def stop(self) -> None:
        """End the worker now (the caller failed: its run is not published)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()

    def _advance(self, advance: Advance | None, reported: int) -> int:
        written = int(self._written.value)
        if advance is not None and written > reported:
            advance(written - reported)
        return written


@dataclass(frozen=True, slots=True)
class _ReportsJob:
    """What the MeasureReports worker writes: :func:`write_measure_reports`' arguments."""

    outcomes: Path
    directory: Path
    practice_files: Mapping[str, str]
    guidelines: tuple[t.CompiledGuideline, ...]
    as_of: dt.date
    language: str


def _measure_reports_worker(
    result: Connection, written: Any, memory_limit: str, job: _ReportsJob
) -> None:
    started = time.perf_counter()
    try:
        with (
            tempfile.TemporaryDirectory(
                prefix=".measure-reports-", dir=job.directory.parent
            ) as spill,
            duckdb.connect() as con,
        ):
            configure(con, memory_limit, spill, threads=1)
            con.execute(
                f"CREATE TEMP VIEW {OUTCOMES} AS SELECT * FROM read_parquet({_path(job.outcomes)})"
            )

            def advance(n: int) -> None:
                written.value += n

            files = write_measure_reports(
                con,
                job.directory,
                job.practice_files,
                job.guidelines,
                job.as_of,
                job.language,
                advance,
            )
        result.send(("ok", files, time.perf_counter() - started))
    except BaseException:
        result.send(("error", traceback.format_exc()))
    finally:
        result.close()


def _write_json(path: Path, resource: Mapping[str, Any]) -> None:
    """As ``json.dumps(indent=2, ensure_ascii=False)`` plus a newline: orjson writes the same
    bytes, except for floats below 1e-4, which Python writes as 1e-05 and orjson as 1e-5 (a score
    that small needs a denominator above 10,000; then the slow path is taken). Not synced here:
    the runner syncs the whole run once before publishing it (a sync per file cost a third of
    the time of writing 50,000 reports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = (g.get("measureScore", {}).get("value", 1.0) for g in resource.get("group", ()))
    if any(0 < abs(score) < 1e-4 for score in scores):
        data = (json.dumps(resource, indent=2, ensure_ascii=False) + "\n").encode()
    else:
        data = orjson.dumps(resource, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    path.write_bytes(data)
