"""Run a compiled sweep on Apache Spark: the same sqlglot trees as DuckDB, rendered for Spark.

Why a second runner: a regional sweep may outgrow one machine, and rendering the very trees that
the DuckDB runner executes (no hand-written Spark SQL) keeps the two engines provably the same
program. Spark reads the store's Parquet, runs the three steps (facts and registers, shared
targets, outcomes), and writes each step's result as Parquet, which the next step reads by name
as a temporary view. The published files are then written from those results by the same code
as for DuckDB (:mod:`engine.population.columnar`): one writer, so the engines cannot differ in
the files. pyspark is an optional dependency (``pip install vejviser[spark]``); this module is
imported only when Spark is wanted.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as st

from engine.population.duckdb_engine import DIALECT as DUCKDB
from engine.population.run import SqlSteps
from engine.population.sql import RenderedSweep, last_uses, rendered_sweep, table_name
from engine.population.store import FACT_TABLES, snapshot_of
from engine.population.tables import valueset_codes
from rules.guideline_set import GuidelineSet

DIALECT = "spark"

_SPARK_TYPES: dict[pa.DataType, st.DataType] = {
    pa.string(): st.StringType(),
    pa.date32(): st.DateType(),
    pa.int32(): st.IntegerType(),
    pa.float64(): st.DoubleType(),
    pa.bool_(): st.BooleanType(),
}


def local_session(
    app_name: str = "vejviser", scratch: Path | None = None, driver_memory: str | None = None
) -> SparkSession:
    """A small in-process Spark for tests and single-machine runs.

    Why these settings: the UI and a public driver address are of no use in a sweep and open
    ports; four shuffle partitions instead of 200 keep small populations from drowning in tasks.
    Small tables are broadcast (the value-set joins, NOT IN's null-aware anti join) and on a busy
    machine planning a step can outlast the default 300 s broadcast timeout, so it is raised.
    ``scratch``: where Spark spills (default: the system's temporary directory).
    ``driver_memory`` (e.g. ``4g``; Spark's default is 1g) takes effect only if this process has
    no JVM yet: the heap is fixed when the JVM starts, which a builder setting comes too late for,
    so it goes in ``PYSPARK_SUBMIT_ARGS``.
    """
    if driver_memory is not None:
        os.environ["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {driver_memory} pyspark-shell"
    builder = (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.broadcastTimeout", "1800")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
    )
    if scratch is not None:
        builder = builder.config("spark.local.dir", str(scratch))
    return builder.getOrCreate()


def spark_schema(schema: pa.Schema) -> st.StructType:
    """The facts schema in Spark's terms (only the types the facts store uses)."""
    return st.StructType(
        [st.StructField(f.name, _SPARK_TYPES[f.type], nullable=True) for f in schema]
    )


def load_store(spark: SparkSession, directory: Path, guidelines: GuidelineSet) -> str:
    """The store's tables and this guideline set's value-set membership as cached temporary
    views, as :func:`engine.population.store.load_store` loads them into DuckDB; returns the
    snapshot id."""
    snapshot = snapshot_of(directory)
    for name in FACT_TABLES:
        frame = spark.read.parquet(str(directory / f"{name}.parquet"))
        frame.cache().createOrReplaceTempView(name)
    codes = valueset_codes(guidelines, pq.read_table(directory / "codes.parquet"))
    # Via Python rows: pandas is not a dependency, and the membership table is small.
    frame = spark.createDataFrame(codes.to_pylist(), schema=spark_schema(codes.schema))
    frame.cache().createOrReplaceTempView("valueset_codes")
    return snapshot


def sweep_steps(spark: SparkSession, scratch: Path) -> SqlSteps:
    """The SQL steps of :func:`engine.population.run.run_sweep`, run on ``spark``: the results go
    through Parquet in ``scratch`` into the DuckDB tables and views the output writers read."""

    def steps(
        con: duckdb.DuckDBPyConnection,
        guidelines: GuidelineSet,
        as_of: dt.date,
        on_step: Callable[[str], None] | None = None,
    ) -> RenderedSweep:
        return sweep_tables(spark, con, guidelines, as_of, scratch, on_step)

    return steps


def sweep_tables(
    spark: SparkSession,
    con: duckdb.DuckDBPyConnection,
    guidelines: GuidelineSet,
    as_of: dt.date,
    scratch: Path,
    on_step: Callable[[str], None] | None = None,
) -> RenderedSweep:
    """Tables ``g<n>_base``, ``winners`` and ``g<n>_outcomes`` computed by Spark and loaded into
    ``con``, as :func:`engine.population.duckdb_engine.sweep_tables` leaves them; returns the
    sweep rendered for DuckDB (the output writers' reason queries run there)."""
    rendered = rendered_sweep(guidelines, as_of, DIALECT)
    step_dir = scratch / f"spark-{as_of}"
    shutil.rmtree(step_dir, ignore_errors=True)
    last_use = last_uses(rendered.base_steps)
    shared: dict[str, DataFrame] = {}
    for n, ((index, guideline_sql), (ctes, sql)) in enumerate(
        zip(rendered.compiled, rendered.base_steps, strict=True)
    ):
        # As on DuckDB, each CTE is computed once per sweep, cached and read by its table
        # name: Spark inlines a CTE wherever it is read (medication in force, read by every
        # medication fact, was computed again for each), and guidelines share most of them.
        for cte in ctes:
            if cte.key not in shared:
                shared[cte.key] = spark.sql(cte.sql).cache()
                shared[cte.key].createOrReplaceTempView(cte.table)
        _materialise(spark, con, sql, table_name(index, "base"), step_dir)
        for cte in ctes:
            if last_use[cte.key] == n and cte.key in shared:
                spark.catalog.dropTempView(cte.table)
                shared.pop(cte.key).unpersist()
        if on_step is not None:
            on_step(guideline_sql.g.id)
    _materialise(spark, con, rendered.winners, "winners", step_dir)
    for (index, _), sql in zip(rendered.compiled, rendered.outcomes, strict=True):
        _materialise(spark, con, sql, table_name(index, "outcomes"), step_dir)
    return rendered_sweep(guidelines, as_of, DUCKDB)


def _materialise(
    spark: SparkSession, con: duckdb.DuckDBPyConnection, sql: str, name: str, step_dir: Path
) -> None:
    """One step's result written once by Spark, then read by name in both engines."""
    path = step_dir / name
    spark.sql(sql).write.mode("overwrite").parquet(str(path))
    spark.read.parquet(str(path)).createOrReplaceTempView(name)
    files = str(path / "*.parquet").replace("'", "''")
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet('{files}')")
