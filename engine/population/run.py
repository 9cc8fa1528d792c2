"""The sweep runner: sweeps one or more reference dates and publishes the outputs atomically.

Why a separate module: this is the only place in the population engine with side effects
(queries beyond :func:`~engine.population.duckdb_engine.sweep`, files, renames, locks). What goes
into each file is decided by the pure functions in :mod:`engine.population.outputs` and
:mod:`engine.population.measure_report`.

Layout of a published run (``out_dir/<run id>/``)::

    manifest.json                      what produced it: guidelines, snapshot, dates, counts
    <as-of>/outcomes.parquet           one row per patient in a register (of a guideline in force)
    <as-of>/indicators.csv             practice rows unsuppressed; cluster and all suppressed
    <as-of>/indicators-shared.csv      every level suppressed: what may leave the practices
    <as-of>/lists/<ydernummer>.csv     each practice's own patient list
    <as-of>/measure_reports/<ydernummer>/<guideline>.{summary,subject-list}.json
    comparisons/<first>_<as-of>/comparison.{csv,md}   each later date against the first

Safety (DESIGN principle 7): everything is written under ``out_dir/.partial-<run id>/`` and
renamed to ``out_dir/<run id>/`` only when complete. The run id is derived from the inputs, so a
run killed half-way and restarted finds its own stale partial directory, removes it and writes
the same bytes again; a run whose final directory exists is not redone.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlglot.expressions as exp

from engine.population import columnar
from engine.population import outputs as out
from engine.population.columnar import LISTED
from engine.population.duckdb_engine import DIALECT, sweep_tables
from engine.population.measure_report import (
    population_counts,
    practice_members,
    subject_list_report,
    summary_report,
)
from engine.population.outcomes import PopulationOutcome
from engine.population.sql import (
    GuidelineSql,
    RenderedSweep,
    Value,
    col,
    lit,
    rendered_sweep,
    table_name,
)
from rules import tree as t
from rules import types as ty
from rules.guideline_set import GuidelineSet
from rules.rendering import (
    MISSING,
    Bound,
    is_observation,
    observation_text,
    observation_value_type,
)
from rules.rendering import render as _render

FORMAT = 3  # bump when the layout, a file's columns or what it hides change: part of the run id
MANIFEST = "manifest.json"


class RunInProgressError(RuntimeError):
    """Another process is running the same sweep (same inputs) into the same directory."""


class Progress(Protocol):
    """Where a run reports its long steps (a progress bar on a terminal; nothing by default)."""

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        """Start a step of ``total`` units; the returned function advances it by some units."""
        ...

    def done(self) -> None:
        """The current step is finished."""
        ...


class SqlSteps(Protocol):
    """Computes one date's sweep tables in ``con`` (``g<n>_base``, ``winners``, ``g<n>_outcomes``)
    and returns the sweep rendered for DuckDB, which the output writers query."""

    def __call__(
        self,
        con: duckdb.DuckDBPyConnection,
        guidelines: GuidelineSet,
        as_of: dt.date,
        on_step: Callable[[str], None] | None = None,
    ) -> RenderedSweep: ...


class _Silent:
    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        return lambda n: None

    def done(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RunManifest:
    """What a published run contains and what produced it (written as manifest.json)."""

    run_id: str
    directory: Path
    snapshot: str  # the caller's name for the data (e.g. the bulk export's transactionTime)
    as_of: tuple[str, ...]
    guidelines: dict[str, list[dict[str, str]]]  # as-of -> id, version, content_hash, file
    suppress_below: int
    language: str
    practices: int
    clusters: int
    exceptions: int
    rows: dict[str, int]  # file (relative to the run directory) -> data rows or files
    timings: dict[str, float]  # step -> seconds
    comparisons: tuple[str, ...]
    format: int = FORMAT
    completed: str = ""  # UTC timestamp of publication
    engine: str = "duckdb"  # what ran the SQL steps (the files are written by DuckDB either way)
    # every patient of the store, each evaluated against every guideline in force on each date;
    # outcomes.parquet has rows for those in a register (None: a run of format 1)
    patients: int | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("directory")
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"

    @classmethod
    def read(cls, directory: Path) -> RunManifest:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        data["as_of"] = tuple(data["as_of"])
        data["comparisons"] = tuple(data["comparisons"])
        return cls(directory=directory, **data)


# -- the run -------------------------------------------------------------------------------------


def run_sweep(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    as_of_dates: Sequence[dt.date],
    out_dir: Path,
    clusters: Mapping[str, str] | None = None,
    suppress_below: int = 5,
    exceptions: Iterable[out.ExceptionLike] | None = None,
    *,
    snapshot: str = "",
    language: str = "da",
    progress: Progress | None = None,
    sql_steps: SqlSteps = sweep_tables,
    engine: str = "duckdb",
) -> RunManifest:
    """Sweep every reference date over the facts loaded in ``con`` and publish the outputs.

    ``clusters`` maps ydernummer -> cluster id (from Organization.partOf or a clusters file);
    ``exceptions`` are CDS-feedback patient exceptions (``FeedbackStore.all_exceptions()``);
    ``snapshot`` names the data and is part of the run id, so give each data load its own.
    Returns the manifest of the published run (the existing one if this exact run was published
    before). Raises :class:`RunInProgressError` if the same run is being written right now.
    ``progress`` is told about each date's long steps (the CLI shows bars on a terminal).
    ``sql_steps`` computes a date's tables in ``con`` (default: DuckDB itself; Spark's is
    :func:`engine.population.spark_engine.sweep_steps`), named ``engine`` in the manifest. The
    engine is not part of the run's identity: the engines must give the same result.

    The sweep's rows stay in DuckDB: outcomes.parquet is written by DuckDB and the other files
    are read back from it (:mod:`engine.population.columnar`), so memory does not grow with the
    population. The files equal those :func:`write_outputs` makes from the same outcomes.
    """
    dates = sorted(set(as_of_dates))
    if not dates:
        raise ValueError("at least one reference date is needed")
    if suppress_below < 1:
        raise ValueError("suppress_below must be at least 1")
    clusters = dict(clusters or {})
    exception_list = list(exceptions or ())
    run_id = run_identity(
        guidelines, dates, snapshot, clusters, suppress_below, exception_list, language
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / run_id
    partial = out_dir / f".partial-{run_id}"
    with _exclusive(out_dir / f".lock-{run_id}"):
        if (final / MANIFEST).is_file():
            return RunManifest.read(final)
        if partial.exists():  # this run was killed half-way: never trust its files
            shutil.rmtree(partial)
        _remove_stale_partials(out_dir)  # and killed runs with other inputs
        partial.mkdir()
        rows: dict[str, int] = {}
        timings: dict[str, float] = {}
        practices: set[str] = set()
        for as_of in dates:
            practices |= _sweep_date(
                con,
                guidelines,
                as_of,
                partial,
                clusters,
                suppress_below,
                exception_list,
                language,
                rows,
                timings,
                progress or _Silent(),
                sql_steps,
            )
        comparisons = []
        for as_of in dates[1:]:
            name = f"{dates[0]}_{as_of}"
            started = time.perf_counter()
            report = compare(partial / str(dates[0]), partial / str(as_of))
            written = write_comparison(report, partial / "comparisons" / name, language)
            rows.update({f"comparisons/{name}/{k}": v for k, v in written.items()})
            timings[f"comparisons/{name}"] = round(time.perf_counter() - started, 3)
            comparisons.append(name)
        manifest = RunManifest(
            run_id=run_id,
            directory=final,
            snapshot=snapshot,
            as_of=tuple(str(d) for d in dates),
            guidelines={
                str(d): [
                    {
                        "id": g.id,
                        "version": g.version,
                        "content_hash": g.content_hash,
                        "file": g.file,
                    }
                    for g in sorted(guidelines.in_force(d), key=lambda g: g.id)
                ]
                for d in dates
            },
            suppress_below=suppress_below,
            language=language,
            practices=len(practices),
            clusters=len({clusters[p] for p in practices if p in clusters}),
            exceptions=len(exception_list),
            rows=dict(sorted(rows.items())),
            timings=timings,
            comparisons=tuple(comparisons),
            completed=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            engine=engine,
            patients=int(con.execute("SELECT count(*) FROM patients").fetchall()[0][0]),
        )
        _write(partial / MANIFEST, manifest.to_json())  # last: a manifest means complete
        os.sync()  # every file and directory entry durable before the rename publishes them
        partial.rename(final)  # atomic on one file system; fails if final has files
        _fsync_dir(out_dir)
        (out_dir / f".lock-{run_id}").unlink(missing_ok=True)
        return manifest


def run_identity(
    guidelines: GuidelineSet,
    dates: Sequence[dt.date],
    snapshot: str,
    clusters: Mapping[str, str],
    suppress_below: int,
    exceptions: Sequence[out.ExceptionLike],
    language: str,
) -> str:
    """``<first>_<last>-<digest>`` (``<date>-<digest>`` for one date).

    The same inputs always give the same id, so a restart continues the run it was (and a
    published run is not redone), and any change of input - guideline content, dates, data
    snapshot, clusters, threshold, exceptions, language - gives a new run beside the old one.
    """
    inputs = {
        "format": FORMAT,
        "guidelines": sorted(
            (f.guideline.id, f.guideline.version, f.guideline.content_hash)
            for f in guidelines.files
        ),
        "dates": [str(d) for d in dates],
        "snapshot": snapshot,
        "clusters": sorted(clusters.items()),
        "suppress_below": suppress_below,
        "language": language,
        "exceptions": sorted(
            (
                e.patient_id,
                e.guideline_id,
                e.recommendation_id or "",
                e.reason_code,
                e.recorded_at.isoformat(),
            )
            for e in exceptions
        ),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    span = str(dates[0]) if len(dates) == 1 else f"{dates[0]}_{dates[-1]}"
    return f"{span}-{digest[:12]}"


def _sweep_date(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    as_of: dt.date,
    partial: Path,
    clusters: Mapping[str, str],
    suppress_below: int,
    exceptions: Sequence[out.ExceptionLike],
    language: str,
    rows: dict[str, int],
    timings: dict[str, float],
    progress: Progress,
    sql_steps: SqlSteps,
) -> set[str]:
    """One reference date: sweep, write every file (reasons rendered on the way). Returns the
    practices. Timings per step go to the manifest: ``sweep`` (the SQL steps), ``outcomes``
    (outcomes.parquet), ``indicators``, ``lists`` (reasons rendered and written),
    ``measure_reports`` (written by a worker process beside the lists) and
    ``measure_reports_wait`` (how long the reports took after the lists were done)."""
    directory = partial / str(as_of)
    in_force = guidelines.in_force(as_of)

    def timed(step: str, started: float) -> float:
        now = time.perf_counter()
        timings[f"{as_of}/{step}"] = round(now - started, 3)
        progress.done()
        return now

    started = time.perf_counter()
    advance = progress.task(f"{as_of}: sweep query", len(in_force))
    rendered = sql_steps(con, guidelines, as_of, on_step=lambda _: advance(1))
    started = timed("sweep", started)

    progress.task(f"{as_of}: outcomes.parquet", None)
    columnar.register_inputs(con, clusters, out.exceptions_in_force(exceptions, as_of))
    try:
        rows[f"{as_of}/outcomes.parquet"] = columnar.write_outcomes(
            con, rendered, directory / "outcomes.parquet"
        )
    finally:
        columnar.unregister_inputs(con)
    started = timed("outcomes", started)

    progress.task(f"{as_of}: indicators", None)
    indicators = columnar.indicator_rows(con, in_force, clusters, language)
    for name, publish in (
        ("indicators.csv", out.for_the_run),
        ("indicators-shared.csv", out.for_sharing),
    ):
        published = publish(indicators, suppress_below, clusters)
        _write_csv(
            directory / name,
            out.csv_text(out.INDICATOR_COLUMNS, (out.as_record(r) for r in published)),
        )
        rows[f"{as_of}/{name}"] = len(published)
    started = timed("indicators", started)

    practices = columnar.practices(con)
    files = {practice: _safe(practice) for practice in practices}
    reports = columnar.MeasureReportsWorker(
        directory / "outcomes.parquet", directory, files, in_force, as_of, language
    )
    try:
        advance = progress.task(f"{as_of}: lists and reasons", len(in_force))
        rows[f"{as_of}/lists"] = columnar.write_lists(
            con, rendered, directory, files, in_force, language, advance
        )
        lists_done = timed("lists", started)
        advance = progress.task(f"{as_of}: MeasureReports", len(files))
        rows[f"{as_of}/measure_reports"], seconds = reports.wait(advance)
    except BaseException:
        reports.stop()
        raise
    timings[f"{as_of}/measure_reports"] = round(seconds, 3)  # beside the lists, in the worker
    timed("measure_reports_wait", lists_done)
    return set(practices)


def write_outputs(
    directory: Path,
    guidelines: GuidelineSet,
    as_of: dt.date,
    raw: Iterable[PopulationOutcome],
    reasons: Mapping[tuple[str, str, str], out.Reason],
    clusters: Mapping[str, str],
    suppress_below: int,
    exceptions: Iterable[out.ExceptionLike],
    language: str,
) -> tuple[dict[str, int], set[str]]:
    """Every file of one reference date from the sweep's outcomes; returns the row counts per
    file and the practices that got a list. Usable without a sweep (tests, other engines)."""
    in_force = guidelines.in_force(as_of)
    hashes = {(g.id, g.version): g.content_hash for g in guidelines.guidelines}
    rows: dict[str, int] = {}
    excepted = out.exceptions_in_force(exceptions, as_of)
    outcomes = sorted((out.apply_exceptions(o, excepted) for o in raw), key=out.outcome_order)
    table = out.outcomes_table(outcomes, clusters, hashes, excepted)
    _write_parquet(directory / "outcomes.parquet", table)
    rows["outcomes.parquet"] = table.num_rows

    indicators = out.indicator_rows(outcomes, in_force, clusters, language)
    for name, publish in (
        ("indicators.csv", out.for_the_run),
        ("indicators-shared.csv", out.for_sharing),
    ):
        published = publish(indicators, suppress_below, clusters)
        _write_csv(
            directory / name,
            out.csv_text(out.INDICATOR_COLUMNS, (out.as_record(r) for r in published)),
        )
        rows[name] = len(published)

    lists = out.list_rows(outcomes, in_force, reasons, excepted, language)
    for practice, entries in lists.items():
        _write_csv(
            directory / "lists" / f"{_safe(practice)}.csv",
            out.csv_text(out.LIST_COLUMNS, (out.as_record(r) for r in entries)),
        )
    rows["lists"] = sum(len(entries) for entries in lists.values())

    members = practice_members(outcomes)
    reports = 0
    for practice in lists:
        for g in sorted(in_force, key=lambda g: g.id):
            if not g.indicators:
                continue
            mine = members.get(practice, {}).get(g.id, {})
            folder = directory / "measure_reports" / _safe(practice)
            summary = summary_report(practice, g, population_counts(mine), as_of, language)
            subjects = subject_list_report(practice, g, mine, as_of, language)
            _write(folder / f"{g.id}.summary.json", _json(summary))
            _write(folder / f"{g.id}.subject-list.json", _json(subjects))
            reports += 2
    rows["measure_reports"] = reports
    return rows, set(lists)


# -- reasons in words ----------------------------------------------------------------------------


def list_reasons(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    as_of: dt.date,
    outcomes: Sequence[PopulationOutcome],
    language: str,
) -> dict[tuple[str, str, str], out.Reason]:
    """Each fired recommendation's card summary rendered with the patient's own values.

    Why in SQL and not by the per-patient engine: the sweep has facts tables, not records, and
    must not need them. The summary's expressions are compiled by the population compiler over
    the tables :func:`sweep` just built (``g<n>_base``, ``winners``) and rendered by
    :func:`rules.rendering.render`, so the text equals the card the GP would see in the EHR
    (the tests check this against the per-patient engine). Must run right after ``sweep`` for the
    same date. A slot the compiler cannot express renders as an ellipsis.
    """
    fired: dict[str, dict[str, tuple[str, ...]]] = {}
    for o in outcomes:
        if o.recommendations:
            fired.setdefault(o.guideline, {})[o.patient] = o.recommendations
    by_id = {g.id: g for g in guidelines.in_force(as_of)}
    reasons: dict[tuple[str, str, str], out.Reason] = {}
    for _, sql in rendered_sweep(guidelines, as_of, DIALECT).compiled:
        patients = fired.get(sql.g.id)
        if not patients:
            continue
        plan = _ReasonPlan(sql, by_id, language)
        con.register(LISTED, pa.table({"patient": sorted(patients)}))
        try:
            fetched = con.execute(plan.query().sql(DIALECT)).fetchall()
        finally:
            con.unregister(LISTED)
        for row in fetched:
            patient = str(row[0])
            recs = patients.get(patient)
            for rec in sql.g.recommendations if recs else ():
                if rec.id in recs:
                    reasons[(patient, sql.g.id, rec.id)] = plan.reason(rec, row)
    return reasons


Row = Sequence[Any]  # the patient, then the plan's columns (see _ReasonPlan.first_column)


class _ReasonPlan:
    """The columns one guideline's summaries and evidence need, and how to render them."""

    def __init__(
        self,
        sql: GuidelineSql,
        by_id: Mapping[str, t.CompiledGuideline],
        language: str,
        first_column: int = 1,
    ) -> None:
        """``first_column``: where the plan's columns start in the rows given to :meth:`reason`
        (rows are tuples: a dict per row cost a tenth of a national run's list time)."""
        self.sql = sql
        self.by_id = by_id
        self.language = language
        self.first_column = first_column
        self.columns: dict[str, exp.Expression] = {}
        self._aliases: dict[str, str] = {}
        self.facts = {f.name: f for f in sql.g.facts}
        self.targets = {target.name: target for target in sql.g.targets}
        self.slots = {
            rec.id: [
                part if isinstance(part, str) else self._insert_text(part)
                for part in rec.summary.in_language(language).parts
            ]
            for rec in sql.g.recommendations
        }
        self.evidence = {
            rec.id: [(name, fn) for name in rec.evidence if (fn := self._key_value(name))]
            for rec in sql.g.recommendations
        }

    def query(self) -> exp.Select:
        """``SELECT patient, <columns> FROM (base with shared targets)`` for listed patients."""
        listed = exp.select(col("patient")).from_(LISTED)
        return self.select().where(exp.In(this=col("patient"), query=listed.subquery()))

    def select(self) -> exp.Select:
        """``SELECT patient, <columns> FROM (base with shared targets)`` for every patient."""
        select = exp.select(col("patient")).from_(exp.alias_(exp.paren(self._shared()), "o"))
        for alias, expression in self.columns.items():
            select = select.select(exp.alias_(expression, alias), append=True, copy=False)
        return select

    def reason(self, rec: t.RecommendationDef, row: Row) -> out.Reason:
        # lists, not generators, and the class test, not isinstance: millions of rows
        text = "".join([p if p.__class__ is str else p(row) for p in self.slots[rec.id]])
        return out.Reason(
            text, out.key_values_text([(n, fn(row)) for n, fn in self.evidence[rec.id]])
        )

    def _shared(self) -> exp.Select:
        """The guideline's base table with the patient's shared targets, named as in
        :meth:`GuidelineSql.outcomes` so compiled expressions find their columns."""
        select = exp.select(exp.Star()).from_(
            exp.alias_(exp.to_table(table_name(self.sql.index, "base")), "b")
        )
        for target in self.sql.g.targets:
            alias = f"w_{target.name}"
            on = exp.and_(
                exp.EQ(this=col("patient", alias), expression=col("patient", "b")),
                exp.EQ(this=col("measure", alias), expression=lit(target.measure)),
            )
            select = select.join(
                exp.alias_(exp.to_table("winners"), alias), on=on, join_type="left"
            ).select(
                exp.alias_(col("value", alias), f"{target.name}__shared"),
                exp.alias_(col("source", alias), f"{target.name}__shared_source"),
                exp.alias_(col("reason", alias), f"{target.name}__shared_reason"),
                exp.alias_(col("guideline", alias), f"{target.name}__set_by"),
                append=True,
            )
        return select

    def _column(self, expression: exp.Expression) -> int:
        """One query column per distinct expression, however many slots read it; returns its
        position in a row."""
        key = expression.sql(DIALECT)
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = f"c{len(self.columns)}"
            self.columns[alias] = expression
        return self.first_column + int(alias[1:])

    def _insert_text(self, expr: t.Expr) -> Callable[[Row], str]:
        if isinstance(expr, t.Ref) and self._is_observation_fact(expr.name):
            return self._observation_text(expr.name)
        return _slot_text(self._slot(expr), expr.type, self.language)

    def _slot(self, expr: t.Expr) -> Callable[[Row], Any]:
        if isinstance(expr, t.Field) and isinstance(expr.record, t.Ref):
            name = expr.record.name
            if name in self.targets and expr.name == "reason":
                return self._target_reason(self.targets[name])
        try:
            value = self.sql.value(expr, own=False)
        except Exception:  # an expression the compiler has no SQL for: say so, do not fail
            return lambda row: _UNAVAILABLE
        return self._read(value)

    def _read(self, value: Value) -> Callable[[Row], Any]:
        """A value in a row; a bound when it carries a comparator: a lab's eGFR '>90', and what
        arithmetic on it keeps a bound ('{egfr.value * 2}' is '>180')."""
        number = self._column(value.v)
        if value.cmp is None:
            return lambda row: row[number]
        comparator = self._column(value.cmp)

        def read(row: Row) -> Any:
            if row[number] is None or row[comparator] is None:
                return row[number]
            return Bound(row[number], row[comparator])

        return read

    def _is_observation_fact(self, name: str) -> bool:
        """A latest or earliest observation fact: its value, comparator and date are columns."""
        fact = self.facts.get(name)
        return (
            fact is not None
            and isinstance(fact.primitive, t.ObservationFact)
            and is_observation(fact.type)
        )

    def _observation_text(self, fact: str) -> Callable[[Row], str]:
        """A whole observation (value and day) as :func:`rules.rendering.render` shows the
        per-patient engine's ObservationValue. The value's rendering is remembered, not the
        pair's: pairs of value and day are mostly distinct."""
        value = self._read(Value(col(f"{fact}__value"), col(f"{fact}__cmp")))
        date = self._column(col(f"{fact}__date"))
        as_value = renderer(observation_value_type(self.facts[fact].type), self.language)
        missing = MISSING.in_language(self.language)
        return lambda row: (
            missing if row[date] is None else observation_text(as_value(value(row)), row[date])
        )

    def _target_reason(self, target: t.TargetDef) -> Callable[[Row], Any]:
        """The winning rule's reason: a case index into the target of the guideline that set it
        (-1: the patient's own Goal), as the per-patient engine's TargetValue.reason."""
        index = self._column(col(f"{target.name}__shared_reason"))
        set_by = self._column(col(f"{target.name}__set_by"))

        def read(row: Row) -> Any:
            if row[index] is None or row[set_by] is None:
                return None
            if int(row[index]) < 0:
                return t.GOAL_REASON
            winner = self.by_id.get(str(row[set_by]))
            same = [x for x in winner.targets if x.measure == target.measure] if winner else []
            return same[0].cases[int(row[index])].reason if same else None

        return read

    def _key_value(self, name: str) -> Callable[[Row], str] | None:
        """The value behind a recommendation for the list's key-values column: observations
        with their dates, counts, onset dates, goals and targets (yes/no facts are left out: the
        reason already says them)."""
        language = self.language
        if name in self.targets:
            target = self.targets[name]
            value = self._column(col(f"{name}__shared"))
            unit: ty.Type = ty.Quantity(target.unit) if target.unit else ty.NUMBER
            in_unit = renderer(unit, language)
            return lambda row: in_unit(row[value])
        fact = self.facts.get(name)
        if fact is None:
            return None
        primitive = fact.primitive
        if self._is_observation_fact(name):
            return self._observation_text(name)
        if isinstance(primitive, t.ObservationFact | t.ConditionOnset | t.PatientGoal):
            plain = self._column(col(name))
            as_fact = renderer(fact.type, language)
            return lambda row: as_fact(row[plain])
        return None


_UNAVAILABLE = object()
_REMEMBERED = 100_000  # rendered values a renderer keeps


def _slot_text(read: Callable[[Row], Any], type_: ty.Type, language: str) -> Callable[[Row], str]:
    """A template slot's text in a row: the value rendered, or the ellipsis if the sweep
    cannot compute it."""
    render = renderer(type_, language)

    def text(row: Row) -> str:
        value = read(row)
        return out.SLOT_UNAVAILABLE if value is _UNAVAILABLE else render(value)

    return text


def renderer(type_: ty.Type, language: str) -> Callable[[object], str]:
    """:func:`rules.rendering.render` for one type and language, remembered: a sweep renders the
    same few thousand numbers, dates and units millions of times. The value's class is part of
    the key: True, 1 and 1.0 are equal keys but render differently."""
    remembered: dict[tuple[type, object], str] = {}

    def render(value: object) -> str:
        key = (value.__class__, value)
        try:
            return remembered[key]
        except KeyError:
            if len(remembered) >= _REMEMBERED:
                remembered.clear()
            text = remembered[key] = _render(value, type_, language)
            return text
        except TypeError:  # an unhashable value
            return _render(value, type_, language)

    return render


# -- over time -----------------------------------------------------------------------------------


def _as_of_directory(directory: Path) -> Path:
    """An as-of directory as given, or a run directory's latest date.

    Raises ValueError for a directory whose manifest.json is not a run's: a facts store has one
    too, and reading it as a run's stopped ``vejviser compare`` with ``KeyError: 'as_of'``."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return directory
    dates = _run_dates(directory / MANIFEST)
    if not dates:
        raise ValueError(
            f"{directory} is not a sweep run: its {MANIFEST} names no as-of dates (a facts "
            "store?); give a run directory that vejviser sweep published, or one of its "
            "as-of directories"
        )
    return directory / dates[-1]


def _run_dates(manifest: Path) -> list[str]:
    """The as-of dates a run's manifest names; none for any other JSON (or no JSON)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {manifest}: {exc.strerror}") from None
    except ValueError:  # not JSON, or not UTF-8
        return []
    dates = data.get("as_of") if isinstance(data, dict) else None
    return [str(d) for d in dates] if isinstance(dates, list) else []


def compare(previous_run_dir: Path, current_run_dir: Path) -> out.ComparisonReport:
    """Who entered or left each practice's lists and how each indicator moved between two sweeps.

    Either argument is a published run directory (its latest date is used) or one of its
    ``<as-of>`` directories, so a cluster can compare this quarter's run with last quarter's.
    """
    before, after = _as_of_directory(previous_run_dir), _as_of_directory(current_run_dir)
    for directory, given in ((before, previous_run_dir), (after, current_run_dir)):
        if not (directory / "outcomes.parquet").is_file():
            raise ValueError(f"{given} is neither a published run nor one of its as-of directories")
    return out.ComparisonReport(
        before.name,
        after.name,
        out.compare_lists(
            out.list_members(_listed(before / "outcomes.parquet")),
            out.list_members(_listed(after / "outcomes.parquet")),
        ),
        out.compare_indicators(_read_indicators(before), _read_indicators(after)),
        (_suppress_below(before), _suppress_below(after)),
    )


def _suppress_below(as_of_directory: Path) -> int | None:
    """The threshold of the published run an as-of directory belongs to (None: unpublished,
    as a sweep's own comparisons are, of one threshold)."""
    try:
        data = json.loads((as_of_directory.parent / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    threshold = data.get("suppress_below") if isinstance(data, dict) else None
    return threshold if isinstance(threshold, int) else None


def _listed(path: Path) -> Iterator[dict[str, Any]]:
    """The outcome rows that put a patient on a practice's list, batch by batch.

    Why not the whole file: a national outcomes.parquet has millions of register rows, and
    fewer than half of them put anyone on a list (older runs, of format 1, have a row for every
    patient and guideline, 3 % of which list anyone)."""
    columns = ["patient", "practice", "guideline", "recommendations"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=columns):
        listed = pc.and_(
            pc.is_valid(batch.column("practice")),
            pc.greater(pc.list_value_length(batch.column("recommendations")), 0),
        )
        yield from batch.filter(listed).to_pylist()


def write_comparison(
    report: out.ComparisonReport, directory: Path, language: str = "en"
) -> dict[str, int]:
    """comparison.csv (identifiable: list changes carry patient ids) and comparison.md (counts,
    in ``language``)."""
    records = out.comparison_records(report)
    _write_csv(directory / "comparison.csv", out.csv_text(out.COMPARISON_COLUMNS, records))
    _write(directory / "comparison.md", out.comparison_markdown(report, language))
    return {"comparison.csv": len(records)}


def _read_indicators(directory: Path) -> list[out.IndicatorRow]:
    with (directory / "indicators.csv").open(encoding="utf-8-sig", newline="") as f:
        return [out.indicator_row_from_csv(r) for r in csv.DictReader(f)]


# -- files ---------------------------------------------------------------------------------------


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_DIGESTED_NAME = re.compile(r".*-[0-9a-f]{8}")


def _safe(name: str) -> str:
    """A ydernummer as a file name; anything else (a reference used as practice) made safe.

    One name per practice, whatever the practice is called: a plain name (ASCII letters,
    digits, ``_.-``, not starting with ``.`` or ``-``, so never ``..`` nor read by a shell as
    an option, at most 64 characters) is kept, any other gets the cleaned name (at most 64
    characters, starting the same way) and a digest of the whole name. A plain name that looks
    like a digested one (``...-<8 hex digits>``) is digested too, so no practice's files can
    share a name with another's."""
    if _PLAIN_NAME.fullmatch(name) and not _DIGESTED_NAME.fullmatch(name):
        return name
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    return f"{cleaned.lstrip('.-')[:64] or 'practice'}-{_digest(name)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _json(resource: Mapping[str, Any]) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Not synced: :func:`run_sweep` syncs once before publishing (a sync per file was a third of
    the time of writing a national run's 50,000 MeasureReports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as f:
        f.write(text)


def _write_csv(path: Path, text: str) -> None:
    """With a byte-order mark, so that Excel, which is how most practices and quality units
    open a CSV, reads æ, ø and å (and ≥ in titles) as UTF-8."""
    _write(path, text, encoding="utf-8-sig")


def _write_parquet(path: Path, table: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def _remove_stale_partials(out_dir: Path) -> None:
    """Remove the partial directories of other runs that nobody is writing (killed runs, whose
    restart would remove them as well). Call while holding this run's lock: a second lock on
    the same file, even from this process, is refused, so this run's directory is skipped."""
    for partial in sorted(out_dir.glob(".partial-*")):
        lock = out_dir / f".lock-{partial.name.removeprefix('.partial-')}"
        try:
            with _exclusive(lock):
                shutil.rmtree(partial)
                lock.unlink(missing_ok=True)
        except RunInProgressError:
            continue


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """An advisory lock per run id: a partial directory is stale only if nobody holds it."""
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            run = lock.parent / lock.name.removeprefix(".lock-")
            raise RunInProgressError(f"another sweep is writing {run} right now") from error
        yield
    finally:
        os.close(fd)  # closing releases the lock
