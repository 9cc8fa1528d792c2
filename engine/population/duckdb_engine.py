"""Run a compiled sweep on DuckDB, the embedded default."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa
import sqlglot.expressions as exp

from engine.population.outcomes import PopulationOutcome
from engine.population.sql import (
    GuidelineSql,
    RenderedSweep,
    last_uses,
    rendered_sweep,
    table_name,
)
from engine.population.tables import valueset_codes
from rules.guideline_set import GuidelineSet

DIALECT = "duckdb"
MEMORY_LIMIT = "6GB"  # a sweep's default: the budget is 8 GB for the whole process


def create_table(name: str, query: exp.Expression) -> exp.Create:
    return exp.Create(this=exp.to_table(name), kind="TABLE", expression=query, replace=True)


def load_tables(
    con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table], guidelines: GuidelineSet
) -> None:
    """Register the facts tables and this guideline set's value-set membership."""
    for name, table in {
        **tables,
        "valueset_codes": valueset_codes(guidelines, tables["codes"]),
    }.items():
        con.register(f"arrow_{name}", table)
        con.execute(create_table(name, exp.select("*").from_(f"arrow_{name}")).sql(DIALECT))
        con.unregister(f"arrow_{name}")


def configure(
    con: duckdb.DuckDBPyConnection,
    memory_limit: str | None = MEMORY_LIMIT,
    temp_directory: str | None = None,
    threads: int | None = None,
) -> None:
    """Bound a sweep's memory: past ``memory_limit`` DuckDB spills joins, sorts and aggregates
    to ``temp_directory`` (its default is next to the database, none for an in-memory one)
    instead of failing. ``threads`` defaults to DuckDB's own (one per core)."""
    if memory_limit:
        con.execute(f"SET memory_limit = '{_setting(memory_limit)}'")
    if temp_directory:
        con.execute(f"SET temp_directory = '{_setting(temp_directory)}'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # outputs are sorted explicitly where order matters; the rest may stream in any order
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")  # the command shows its own


def _setting(value: str) -> str:
    if "'" in value:
        raise ValueError(f"not a DuckDB setting value: {value!r}")
    return value


def sweep_tables(
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    as_of: dt.date,
    on_step: Callable[[str], None] | None = None,
) -> RenderedSweep:
    """Run the three steps: tables ``g<n>_base`` and ``winners``, and views ``g<n>_outcomes``
    (one row per patient with the columns :func:`outcome` reads, computed when read: the files
    are written from them in one pass). Nothing is fetched into Python. ``on_step`` is called
    with each guideline id as its base table is done (progress)."""
    rendered = rendered_sweep(guidelines, as_of, DIALECT)
    last_use = last_uses(rendered.base_steps)
    computed: set[str] = set()
    for n, ((index, compiled), (ctes, sql)) in enumerate(
        zip(rendered.compiled, rendered.base_steps, strict=True)
    ):
        # Each fact's CTE becomes a table first: in one query DuckDB would keep every fact's
        # per-patient aggregate and hash table in memory at once (t2d-annual-control has eleven
        # facts: some 2 KB per patient, over 8 GB for a national population); one at a time,
        # the step stays within the memory limit. Same rows: the CTEs are plain. A table is
        # computed once per sweep (medication in force, eGFR in the last year: guidelines
        # share them) and kept until the last guideline that reads it. Temporary tables: they
        # are not compressed into the database file (a third faster), and DuckDB still evicts
        # them to its temp_directory past the memory limit.
        for cte in ctes:
            if cte.key not in computed:
                con.execute(f"CREATE OR REPLACE TEMP TABLE {cte.table} AS {cte.sql}")
                computed.add(cte.key)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table_name(index, 'base')} AS {sql}")
        for cte in ctes:
            if last_use[cte.key] == n:
                con.execute(f"DROP TABLE IF EXISTS {cte.table}")  # twice in one query
        if on_step is not None:
            on_step(compiled.g.id)
    con.execute(f"CREATE OR REPLACE TEMP TABLE winners AS {rendered.winners}")
    for (index, _), sql in zip(rendered.compiled, rendered.outcomes, strict=True):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table_name(index, 'outcomes')} AS {sql}")
    return rendered


def sweep(
    con: duckdb.DuckDBPyConnection, guidelines: GuidelineSet, as_of: dt.date
) -> Iterator[PopulationOutcome]:
    """Every patient x guideline in force on the date, as Python objects (tests, small runs;
    :mod:`engine.population.run` keeps a sweep's rows in DuckDB instead)."""
    return outcomes_of(con, sweep_tables(con, guidelines, as_of))


def outcomes_of(
    con: duckdb.DuckDBPyConnection, rendered: RenderedSweep
) -> Iterator[PopulationOutcome]:
    """The ``g<n>_outcomes`` rows in ``con`` (whichever engine computed them) as Python objects,
    and the empty outcome of every patient outside the guideline's register (no row there)."""
    for index, sql in rendered.compiled:
        result = con.execute(f"SELECT * FROM {table_name(index, 'outcomes')}")
        names = [d[0] for d in result.description]
        for row in result.fetchall():
            yield outcome(sql, dict(zip(names, row, strict=True)))
        outside = con.execute(
            "SELECT p.patient, p.practice FROM patients AS p "
            f"ANTI JOIN {table_name(index, 'base')} AS b ON b.patient = p.patient"
        )
        g = sql.g
        for patient, practice in outside.fetchall():
            yield PopulationOutcome(
                str(patient),
                None if practice is None else str(practice),
                g.id,
                g.version,
                False,
                (),
                (),
                (),
            )


def outcome(sql: GuidelineSql, row: dict[str, object]) -> PopulationOutcome:
    g = sql.g
    in_register = bool(row["in_register"])
    recommendations = tuple(r.id for n, r in enumerate(g.recommendations) if row[f"rec_{n}"])
    indicators = []
    for n, indicator in enumerate(g.indicators if in_register else ()):
        if row[f"ind_{n}_num"]:
            membership = "numerator"
        elif row[f"ind_{n}_den"]:
            membership = "denominator"
        else:
            membership = "excepted" if row[f"ind_{n}_exc"] else "outside"
        indicators.append((indicator.id, membership))
    targets = tuple(
        (
            t.name,
            float(row[f"{t.name}__shared"]),
            str(row[f"{t.name}__shared_source"]),
            str(row[f"{t.name}__set_by"]),
        )
        for t in g.targets
        if in_register
    )
    return PopulationOutcome(
        str(row["patient"]),
        row["practice"] if row["practice"] is None else str(row["practice"]),
        g.id,
        g.version,
        in_register,
        recommendations,
        tuple(indicators),
        targets,
    )
