"""Engines agree on Hypothesis-generated expressions, as they do on the hand-written ones.

``language/language.yaml`` names each feature once; here Hypothesis combines them: well-typed
conditions and inserts of random shape over the same facts (arithmetic on bounds and missing
values, comparisons of every type, nested logic, constants), 30 conditions, 10 inserts and 5
indicators (denominator, numerator, exceptions) to a rule file. Both engines must fire the same
recommendations and give the same indicator memberships for every patient, and a list must read
as the card. Its first runs found constant inserts ('{58 'mmol/mol'}') that a list showed
as '58.0': SQL read the literal as a DECIMAL, not as the per-patient engine's float.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.engines.test_agreement import AS_OF, on_duckdb, per_patient
from conformance.engines.test_language_agreement import patients, summaries
from rules.guideline_set import load_guidelines

HERE = Path(__file__).parent
VALUESETS = HERE.parents[1] / "tests" / "fixtures" / "guidelines" / "valuesets"
MMOL, EGFR = "mmol/mol", "mL/min/1.73m2"
LEAVES = {  # names and literals of each type in language.yaml's scope
    "number": ["hba1c_count", "age", "hba1c_age_days", "0", "1", "2", "0.5", "58"],
    MMOL: ["hba1c.value", "first_hba1c.value", "own_goal", "hba1c_target.value", "hba1c_less_5",
           "58 'mmol/mol'", "53 'mmol/mol'"],
    EGFR: ["egfr.value", "egfr_doubled", "30 'mL/min/1.73m2'", "60 'mL/min/1.73m2'",
           "90 'mL/min/1.73m2'"],
    "date": ["hba1c.date", "first_hba1c.date", "egfr.date", "t2d_onset", "hba1c_day",
             "@2026-01-01"],
    "bool": ["t2d", "ihd", "on_metformin", "long_benzo", "new_metformin", "frail", "kidney_low",
             "true", "false"],
}  # fmt: skip
SINCE = ("days_since", "months_since", "years_since")


def expression(kind: str, depth: int) -> st.SearchStrategy[str]:
    """Well-typed expression text of ``kind`` (a key of LEAVES), nested up to ``depth``."""
    leaf = st.sampled_from(LEAVES[kind])
    if depth == 0 or kind == "date":
        return leaf

    def inner(of: str) -> st.SearchStrategy[str]:
        return expression(of, depth - 1)

    def binary(left: str, ops: list[str], right: str) -> st.SearchStrategy[str]:
        parts = st.tuples(inner(left), st.sampled_from(ops), inner(right))
        return parts.map(lambda p: f"({p[0]} {p[1]} {p[2]})")

    if kind == "bool":
        compared = st.sampled_from(["number", MMOL, EGFR, "date", "bool"]).flatmap(
            lambda of: binary(
                of, ["=", "!="] if of == "bool" else ["=", "!=", "<", "<=", ">", ">="], of
            )
        )
        measured = st.sampled_from(["number", MMOL, EGFR]).flatmap(inner)
        return st.one_of(
            leaf,
            binary("bool", ["and", "or"], "bool"),
            inner("bool").map(lambda e: f"(not {e})"),
            measured.map(lambda e: f"exists({e})"),
            compared,
        )
    if kind == "number":
        ratio = st.sampled_from([MMOL, EGFR]).flatmap(lambda of: binary(of, ["/"], of))
        since = st.tuples(st.sampled_from(SINCE), inner("date")).map(lambda p: f"{p[0]}({p[1]})")
        return st.one_of(
            leaf,
            binary("number", ["+", "-", "*", "/"], "number"),
            inner("number").map(lambda e: f"(-{e})"),
            ratio,
            since,
        )
    return st.one_of(  # a quantity
        leaf,
        binary(kind, ["+", "-"], kind),
        binary(kind, ["*", "/"], "number"),
        binary("number", ["*"], kind),
        inner(kind).map(lambda e: f"(-{e})"),
    )


Indicator = tuple[str, str, str]  # denominator, numerator, exceptions


def rule_file(conditions: list[str], inserts: list[str], indicators: list[Indicator]) -> str:
    """language.yaml's facts and targets, with generated recommendations and indicators."""
    text = (HERE / "language" / "language.yaml").read_text(encoding="utf-8")
    head = text.split("\nrecommendations:\n")[0]
    lines = [
        f'  - {{id: c{i}, when: "{c}", indicator: info, summary: {{da: c, en: c}}}}'
        for i, c in enumerate(conditions)
    ]
    lines += [
        f'  - {{id: s{i}, when: "true", indicator: info, summary: {{da: "{{{e}}}", en: "{{{e}}}"}}}}'
        for i, e in enumerate(inserts)
    ]
    lines.append("indicators:")
    lines += [
        f'  - {{id: i{i}, title: {{da: i, en: i}}, denominator: "{d}", numerator: "{n}", '
        f'exceptions: "{x}"}}'
        for i, (d, n, x) in enumerate(indicators)
    ]
    return head + "\nrecommendations:\n" + "\n".join(lines) + "\n"


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    conditions=st.lists(expression("bool", 3), min_size=30, max_size=30),
    inserts=st.lists(
        st.sampled_from(["number", MMOL, EGFR]).flatmap(lambda of: expression(of, 2)),
        min_size=10,
        max_size=10,
    ),
    indicators=st.lists(
        st.tuples(expression("bool", 2), expression("bool", 2), expression("bool", 1)),
        min_size=5,
        max_size=5,
    ),
)
def test_engines_agree_on_generated_conditions_and_inserts(
    tmp_path_factory: pytest.TempPathFactory,
    conditions: list[str],
    inserts: list[str],
    indicators: list[Indicator],
) -> None:
    directory = tmp_path_factory.mktemp("generated")
    shutil.copytree(VALUESETS, directory / "valuesets")
    rules = rule_file(conditions, inserts, indicators)
    (directory / "generated.yaml").write_text(rules, encoding="utf-8")
    guidelines = load_guidelines(directory)
    expected = per_patient(guidelines, patients(), AS_OF)
    assert on_duckdb(guidelines, patients(), AS_OF) == expected
    cards, listed = summaries(guidelines, "da", "s")
    assert listed == cards
