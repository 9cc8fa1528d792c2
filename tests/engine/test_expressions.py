from __future__ import annotations

import datetime as dt
import operator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.expressions import compare_bounds, compile_expr
from rules import types as ty
from rules.expressions import parse
from rules.rendering import Bound

SCOPE_TYPES = {"a": ty.BOOL, "b": ty.BOOL, "x": ty.NUMBER, "d": ty.DATE}


class Values:
    as_of = dt.date(2026, 6, 1)

    def __init__(self, **values: Any) -> None:
        self.values = values

    def value(self, name: str) -> Any:
        return self.values.get(name)


def evaluate(text: str, **values: Any) -> Any:
    return compile_expr(parse(text, SCOPE_TYPES))(Values(**values))


@pytest.mark.parametrize(
    ("a", "b", "and_", "or_"),
    [
        (True, None, None, True),
        (False, None, False, None),
        (None, None, None, None),
        (True, True, True, True),
        (False, True, False, True),
    ],
)
def test_three_valued_logic_as_in_sql(a: Any, b: Any, and_: Any, or_: Any) -> None:
    assert evaluate("a and b", a=a, b=b) is and_
    assert evaluate("a or b", a=a, b=b) is or_
    assert evaluate("b and a", a=a, b=b) is and_


def test_missing_values_make_comparisons_unknown() -> None:
    assert evaluate("x > 3") is None
    assert evaluate("not (x > 3)") is None
    assert evaluate("x / 0 > 1", x=5.0) is None


def test_functions_on_dates() -> None:
    assert evaluate("days_since(d) = 31", d=dt.date(2026, 5, 1))
    assert evaluate("months_since(d) = 11", d=dt.date(2025, 6, 2))
    assert evaluate("months_since(d) = 12", d=dt.date(2025, 6, 1))
    assert evaluate("years_since(d) = 1", d=dt.date(2025, 6, 1))


@pytest.mark.parametrize(
    ("op", "bound", "threshold", "expected"),
    [
        ("<", Bound(90, ">"), 30, False),
        (">", Bound(90, ">"), 60, True),
        (">", Bound(90, ">"), 90, True),
        (">=", Bound(90, ">"), 90, True),
        ("<", Bound(90, ">"), 95, None),
        ("=", Bound(90, ">"), 90, False),
        ("!=", Bound(90, ">"), 90, True),
        ("<", Bound(15, "<"), 30, True),
        ("<", Bound(30, "<"), 30, True),
        ("<", Bound(30, "<="), 30, None),
        ("<=", Bound(30, "<="), 30, True),
        (">", Bound(30, "<="), 30, False),
        (">=", Bound(30, ">="), 30, True),
    ],
)
def test_bounds_decide_only_when_certain(
    op: str, bound: Bound, threshold: float, expected: Any
) -> None:
    assert compare_bounds(op, bound, threshold) is expected


OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}


@given(
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    comparator=st.sampled_from(["<", "<=", ">", ">="]),
    threshold=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    op=st.sampled_from(["<", "<=", ">", ">=", "=", "!="]),
    offset=st.floats(min_value=0, max_value=1e3, allow_nan=False),
)
def test_a_certain_answer_holds_for_every_value_the_bound_allows(
    value: float, comparator: str, threshold: float, op: str, offset: float
) -> None:
    answer = compare_bounds(op, Bound(value, comparator), threshold)
    if answer is None:
        return
    sign = 1 if comparator.startswith(">") else -1
    candidates = [value + sign * offset] if offset > 0 else []
    if comparator in ("<=", ">="):
        candidates.append(value)
    for candidate in candidates:
        if candidate == value and comparator in ("<", ">"):
            continue  # the offset vanished in floating point: not a value the bound allows
        assert OPS[op](candidate, threshold) is answer
