"""A sweep computes each fact table once: CTE keys name content, and engines share by key."""

from __future__ import annotations

import duckdb
import sqlglot

from engine.population.duckdb_engine import configure, load_tables, sweep_tables
from engine.population.sql import _split_ctes, last_uses, rendered_sweep
from engine.population.tables import facts_tables
from fhir_adapter.records import PatientRecord
from rules.guideline_set import GuidelineSet
from tests.engine.population.synthetic import AS_OF


def _keys(query: str) -> dict[str, str]:
    ctes, _ = _split_ctes(sqlglot.parse_one(query, read="duckdb"), "duckdb")
    return {cte.name: cte.key for cte in ctes}


def test_the_same_query_reading_the_same_tables_has_the_same_key() -> None:
    one = _keys("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b")
    two = _keys("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT x FROM b")
    assert one == two


def test_a_cte_reading_an_earlier_cte_of_other_content_has_another_key() -> None:
    one = _keys("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b")
    two = _keys("WITH a AS (SELECT 2 AS x), b AS (SELECT x FROM a) SELECT * FROM b")
    assert one["a"] != two["a"]
    assert one["b"] != two["b"], "same text, but it reads other rows"


def test_guidelines_share_their_facts_and_a_key_always_means_one_query(
    library: GuidelineSet,
) -> None:
    steps = rendered_sweep(library, AS_OF, "duckdb").base_steps
    ctes = [cte for guideline_ctes, _ in steps for cte in guideline_ctes]
    by_key: dict[str, set[str]] = {}
    for cte in ctes:
        by_key.setdefault(cte.key, set()).add(cte.sql)
    assert all(len(texts) == 1 for texts in by_key.values())
    assert len(by_key) < len(ctes), "some facts are shared between guidelines"
    last = last_uses(steps)
    for n, (guideline_ctes, _) in enumerate(steps):
        assert all(last[cte.key] >= n for cte in guideline_ctes)


def test_a_sweep_leaves_no_shared_fact_table_behind(
    library: GuidelineSet, patients: list[PatientRecord]
) -> None:
    with duckdb.connect() as con:
        configure(con, memory_limit="1GB", threads=2)
        load_tables(con, facts_tables(patients), library)
        sweep_tables(con, library, AS_OF)
        names = {
            name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        views = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert not {n for n in names if n.startswith("shared_")}
    assert "meds" not in views
    assert "winners" in names
