from __future__ import annotations

import pytest

from rules import tree as t
from rules import types as ty
from rules.expressions import ExpressionError, parse, parse_condition, references

SCOPE = {
    "hba1c": ty.observation("mmol/mol"),
    "egfr": ty.observation("mL/min/1.73m2"),
    "age": ty.NUMBER,
    "sex": ty.SEX,
    "ihd": ty.BOOL,
}


def test_precedence_and_binds_tighter_than_or() -> None:
    expr = parse_condition("ihd or age > 80 and sex = 'female'", SCOPE)
    assert isinstance(expr, t.Logic) and expr.op == "or"
    assert isinstance(expr.operands[1], t.Logic) and expr.operands[1].op == "and"


def test_quantity_literal_carries_its_unit() -> None:
    expr = parse_condition("hba1c.value > 58 'mmol/mol'", SCOPE)
    assert isinstance(expr, t.Compare)
    assert expr.right == t.Literal(58.0, ty.Quantity("mmol/mol"))


def test_date_literal_and_functions() -> None:
    expr = parse_condition("hba1c.date < @2026-01-01 and months_since(hba1c.date) >= 12", SCOPE)
    assert references(expr) == {"hba1c"}


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("hba1c.value > 7 '%'", "unit mismatch: cannot compare mmol/mol with %", 13),
        (
            "hba1c.value > 7 '%'",
            "; hba1c.value is in mmol/mol (results in other units are converted to it when they "
            "are read): convert the threshold to mmol/mol and write it as a number with 'mmol/mol'",
            13,
        ),
        ("hba1c.value > 58", "give the number its unit, e.g. 58 'mmol/mol'", 13),
        ("hba1c.date > 3", "cannot compare a date with a number", 12),
        ("hbac1.value > 3 'mmol/mol'", "unknown fact 'hbac1'", 1),
        ("hba1c.valu > 3 'mmol/mol'", "has no field 'valu'", 7),
        ("hba1c and ihd", "write exists(hba1c)", 1),
        ("age >", "ends too early", 5),
        ('sex = "female"', "single quotes", 7),
        ("age + ihd > 3", "cannot compute number + bool", 5),
        ("sex > 'a'", "can only be compared with = or !=", 5),
        ("foo(age)", "unknown function 'foo'", 1),
        ("days_since(age) > 3", "needs a date", 1),
        ("hba1c > 3", "compare a field of 'hba1c'", 7),
        ("@2026-02-30 > hba1c.date", "not a real date", 1),
    ],
)
def test_errors_say_what_and_where(text: str, message: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_condition(text, SCOPE)
    assert message in caught.value.message
    assert caught.value.column == column


def test_a_condition_must_be_boolean() -> None:
    with pytest.raises(ExpressionError, match="must be a condition"):
        parse_condition("age + 1", SCOPE)


def test_no_python_reaches_the_parser() -> None:
    for text in ("__import__('os')", "age.__class__", "[x for x in age]", "lambda: 1"):
        with pytest.raises(ExpressionError):
            parse(text, SCOPE)


def test_quantity_arithmetic_keeps_units() -> None:
    expr = parse("hba1c.value * 1.3", SCOPE)
    assert expr.type == ty.Quantity("mmol/mol")
    assert parse("hba1c.value / hba1c.value", SCOPE).type == ty.NUMBER


@pytest.mark.parametrize(
    ("text", "column"),
    [("goal.reason = 'frail'", 6), ("exists(goal.reason) and ihd", 13)],
)
def test_a_condition_cannot_read_a_target_reason(text: str, column: int) -> None:
    """A target's reason is a text in the reader's language, there to be shown; a sweep has no
    column for it (such a condition stopped every sweep)."""
    scope = {**SCOPE, "goal": ty.target("mmol/mol", 40)}
    with pytest.raises(ExpressionError) as caught:
        parse_condition(text, scope)
    assert caught.value.message == (
        "'goal.reason' is text to show in a summary or detail; "
        "a condition reads goal.value or goal.source"
    )
    assert caught.value.column == column
    assert parse("goal.reason", scope).type == ty.Scalar("string")  # a template may show it


@pytest.mark.parametrize(
    ("text", "column", "shown"),
    [
        ("frail != not ihd", 10, "e.g. frail != (not ihd)"),
        ("frail = not ihd", 9, "e.g. frail = (not ihd)"),  # the author's own operator
        ("age > not (1)", 7, "(not ...), not not(...)"),
        ("ihd = not(ihd)", 7, "(not ...), not not(...)"),
    ],
)
def test_not_inside_a_comparison_says_where_it_belongs(text: str, column: int, shown: str) -> None:
    """'not' binds more loosely than '=': the parser read it as a name or a function."""
    scope = {**SCOPE, "frail": ty.BOOL}
    with pytest.raises(ExpressionError) as caught:
        parse_condition(text, scope)
    assert caught.value.message.startswith("'not' applies to a whole condition")
    assert caught.value.message.endswith(shown)
    assert caught.value.column == column
    assert parse_condition("frail != (not ihd)", scope).type == ty.BOOL


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "sex = 'kvinde'",
            "'kvinde' is never a value of sex, so this is never true; did you mean 'female'?",
        ),
        (
            "'Male' != sex",
            "'Male' is never a value of sex, so this is always true; did you mean 'male'?",
        ),
        ("sex = 'femal'", "did you mean 'female'?"),
        ("sex = 'f'", "(sex is one of 'male', 'female', 'other', 'unknown')"),
        (
            "t.source = 'goals'",
            "'goals' is never a value of t.source, so this is never true; did you mean 'goal'?",
        ),
    ],
)
def test_a_text_that_can_only_hold_some_codes_refuses_any_other(text: str, message: str) -> None:
    """`sex = 'kvinde'` loaded and was never true: a register written so was empty for everyone."""
    scope = {**SCOPE, "t": ty.target("mmol/mol", 10)}
    with pytest.raises(ExpressionError) as caught:
        parse_condition(text, scope)
    assert message in caught.value.message


def test_every_code_of_a_closed_text_is_accepted() -> None:
    scope = {**SCOPE, "t": ty.target("mmol/mol", 10)}
    for code in ("male", "female", "other", "unknown"):
        parse_condition(f"sex = '{code}'", scope)
    for code in ("goal", "case", "default"):
        parse_condition(f"t.source != '{code}'", scope)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("ihd = 'yes'", "true/false is written without quotes"),
        ("hba1c.date > '2024-01-01'", "a date is written with @ and no quotes, e.g. @2024-01-01"),
    ],
)
def test_a_quoted_true_false_or_date_says_how_to_write_it(text: str, hint: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_condition(text, SCOPE)
    assert hint in caught.value.message
