"""Spark runs the same compiled trees as DuckDB, so it must agree with the per-patient engine too.

Why slow-only: a local Spark session costs tens of seconds to start and plans every guideline's
queries on the JVM, minutes in all even for a small population. The DuckDB suite covers the SQL
itself on every run; this one guards the Spark rendering of the very same trees.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("pyspark")

from pyspark.sql import SparkSession

from conformance.engines.test_agreement import AS_OF, library, per_patient, population
from engine.population import spark_engine
from engine.population.tables import facts_tables


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_engine.local_session("vejviser-conformance")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.mark.slow
def test_spark_agrees_with_the_per_patient_engine(spark: SparkSession) -> None:
    guidelines = library()
    patients = population(60, seed=11)
    expected = per_patient(guidelines, patients, AS_OF)
    spark_engine.load_tables(spark, facts_tables(patients), guidelines)
    got = {
        (o.patient, o.guideline): (
            o.in_register,
            tuple(sorted(o.recommendations)),
            o.indicators,
            o.targets,
        )
        for o in spark_engine.sweep(spark, guidelines, AS_OF)
    }
    assert set(got) == set(expected)
    differences = [
        (key, expected[key], got[key]) for key in sorted(expected) if expected[key] != got[key]
    ]
    assert not differences, f"{len(differences)} of {len(expected)} differ, e.g. {differences[:3]}"
    assert sum(v[0] for v in expected.values()) > len(patients) // 10
