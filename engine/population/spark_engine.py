"""Run a compiled sweep on Apache Spark: the same sqlglot trees as DuckDB, rendered for Spark.

Why a second runner: a regional sweep may outgrow one machine, and rendering the very trees that
the DuckDB runner executes (no hand-written Spark SQL) keeps the two engines provably the same
program. Each step's result becomes a cached temporary view so the next step reads it by name,
exactly as the DuckDB runner reads its tables. pyspark is an optional dependency; this module is
imported only when Spark is wanted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa
import sqlglot.expressions as exp
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as st

from engine.population.duckdb_engine import outcome
from engine.population.outcomes import PopulationOutcome
from engine.population.sql import compile_sweep, table_name, winners
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


def local_session(app_name: str = "vejviser") -> SparkSession:
    """A small in-process Spark for tests and single-machine runs.

    Why these settings: the UI and a public driver address are of no use in a sweep and open
    ports; four shuffle partitions instead of 200 keep small populations from drowning in tasks.
    Small tables are broadcast (the value-set joins, NOT IN's null-aware anti join) and on a busy
    machine planning a step can outlast the default 300 s broadcast timeout, so it is raised.
    """
    return (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.broadcastTimeout", "1800")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )


def spark_schema(schema: pa.Schema) -> st.StructType:
    """The facts schema in Spark's terms (only the types the facts store uses)."""
    return st.StructType(
        [st.StructField(f.name, _SPARK_TYPES[f.type], nullable=True) for f in schema]
    )


def _register(spark: SparkSession, name: str, frame: DataFrame) -> None:
    """Cache the frame and expose it by name, replacing an earlier sweep's view."""
    frame.cache()
    frame.createOrReplaceTempView(name)


def load_tables(spark: SparkSession, tables: dict[str, pa.Table], guidelines: GuidelineSet) -> None:
    """Register the facts tables and this guideline set's value-set membership as temp views.

    Why via Python rows: pandas is not a dependency, so Arrow -> rows with an explicit schema
    is the conversion that needs nothing else (fine for tests; bulk runs should read Parquet).
    """
    for name, table in {
        **tables,
        "valueset_codes": valueset_codes(guidelines, tables["codes"]),
    }.items():
        frame = spark.createDataFrame(table.to_pylist(), schema=spark_schema(table.schema))
        _register(spark, name, frame)


def run_sql(spark: SparkSession, tree: exp.Expression) -> DataFrame:
    return spark.sql(tree.sql(DIALECT))


def sweep(
    spark: SparkSession, guidelines: GuidelineSet, as_of: dt.date
) -> Iterator[PopulationOutcome]:
    """Every patient x guideline in force on the date (the DuckDB runner's steps, on Spark)."""
    compiled = compile_sweep(guidelines, as_of)
    for index, sql in compiled:
        _register(spark, table_name(index, "base"), run_sql(spark, sql.base()))
    _register(spark, "winners", run_sql(spark, winners([(i, s.g) for i, s in compiled])))
    for _, sql in compiled:
        for row in run_sql(spark, sql.outcomes()).collect():
            yield outcome(sql, row.asDict())
