"""Run a compiled sweep on DuckDB, the embedded default."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import duckdb
import pyarrow as pa
import sqlglot.expressions as exp

from engine.population.outcomes import PopulationOutcome
from engine.population.sql import GuidelineSql, compile_sweep, table_name, winners
from engine.population.tables import valueset_codes
from rules.guideline_set import GuidelineSet

DIALECT = "duckdb"


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


def sweep(
    con: duckdb.DuckDBPyConnection, guidelines: GuidelineSet, as_of: dt.date
) -> Iterator[PopulationOutcome]:
    """Every patient x guideline in force on the date."""
    compiled = compile_sweep(guidelines, as_of)
    for index, sql in compiled:
        con.execute(create_table(table_name(index, "base"), sql.base()).sql(DIALECT))
    con.execute(create_table("winners", winners([(i, s.g) for i, s in compiled])).sql(DIALECT))
    for _, sql in compiled:
        result = con.execute(sql.outcomes().sql(DIALECT))
        names = [d[0] for d in result.description]
        for row in result.fetchall():
            yield outcome(sql, dict(zip(names, row, strict=True)))


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
