"""Expressions compiled to Python closures: parsed once at load, run per patient in microseconds.

Unknown (None) follows SQL's three-valued logic, so the population engine's SQL can agree. A
bound such as eGFR '>90' decides a comparison only when every value it allows gives one answer.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable
from typing import Any, Protocol

from engine.primitives import months_between, years_between
from rules import tree as t
from rules.rendering import Bound


class Scope(Protocol):
    """What an expression can read: named values and the reference date."""

    as_of: dt.date

    def value(self, name: str) -> Any: ...


Compiled = Callable[[Scope], Any]

COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def compile_expr(expr: t.Expr) -> Compiled:
    if isinstance(expr, t.Literal):
        value = expr.value
        return lambda scope: value
    if isinstance(expr, t.Ref):
        name = expr.name
        return lambda scope: scope.value(name)
    if isinstance(expr, t.Field):
        return _field(compile_expr(expr.record), expr.name)
    if isinstance(expr, t.Compare):
        return _compare(expr.op, compile_expr(expr.left), compile_expr(expr.right))
    if isinstance(expr, t.Logic):
        parts = tuple(compile_expr(o) for o in expr.operands)
        return _all(parts) if expr.op == "and" else _any(parts)
    if isinstance(expr, t.Not):
        inner = compile_expr(expr.operand)
        return lambda scope: None if (v := inner(scope)) is None else not v
    if isinstance(expr, t.Arithmetic):
        return _arithmetic(expr.op, compile_expr(expr.left), compile_expr(expr.right))
    if isinstance(expr, t.Call):
        return _call(expr.function, tuple(compile_expr(a) for a in expr.args))
    raise TypeError(f"no evaluation for {type(expr).__name__}")


def _field(record: Compiled, name: str) -> Compiled:
    def field(scope: Scope) -> Any:
        value = record(scope)
        return None if value is None else getattr(value, name)

    return field


def _compare(op: str, left: Compiled, right: Compiled) -> Compiled:
    fn = COMPARE[op]

    def compare(scope: Scope) -> bool | None:
        a = left(scope)
        if a is None:
            return None
        b = right(scope)
        if b is None:
            return None
        if type(a) is Bound or type(b) is Bound:
            return compare_bounds(op, a, b)
        return fn(a, b)

    return compare


def _all(parts: tuple[Compiled, ...]) -> Compiled:
    def all_(scope: Scope) -> bool | None:
        result: bool | None = True
        for part in parts:
            value = part(scope)
            if value is False:
                return False
            if value is None:
                result = None
        return result

    return all_


def _any(parts: tuple[Compiled, ...]) -> Compiled:
    def any_(scope: Scope) -> bool | None:
        result: bool | None = False
        for part in parts:
            value = part(scope)
            if value is True:
                return True
            if value is None:
                result = None
        return result

    return any_


def _arithmetic(op: str, left: Compiled, right: Compiled) -> Compiled:
    fn = ARITHMETIC[op]

    def arithmetic(scope: Scope) -> Any:
        a, b = left(scope), right(scope)
        if a is None or b is None:
            return None
        if type(a) is Bound or type(b) is Bound:
            return bound_arithmetic(op, a, b)
        if op == "/" and b == 0:
            return None
        return fn(a, b)

    return arithmetic


def _call(function: str, args: tuple[Compiled, ...]) -> Compiled:
    (arg,) = args
    if function == "exists":
        return lambda scope: arg(scope) is not None

    def since(scope: Scope) -> float | None:
        value = arg(scope)
        if value is None:
            return None
        if function == "days_since":
            return float((scope.as_of - value).days)
        if function == "months_since":
            return months_between(value, scope.as_of)
        return years_between(value, scope.as_of)

    return since


Interval = tuple[float, bool, float, bool]  # low, low included, high, high included
INF = float("inf")


def _interval(value: float | Bound) -> Interval:
    if type(value) is not Bound:
        return (value, True, value, True)
    v, c = value.value, value.comparator
    if c == ">":
        return (v, False, INF, False)
    if c == ">=":
        return (v, True, INF, False)
    if c == "<":
        return (-INF, False, v, False)
    return (-INF, False, v, True)


def compare_bounds(op: str, a: float | Bound, b: float | Bound) -> bool | None:
    """Compare when a side is only known as a bound: True or False if certain, else unknown."""
    if op in (">", ">="):
        return compare_bounds("<" if op == ">" else "<=", b, a)
    if op == "!=":
        equal = compare_bounds("=", a, b)
        return None if equal is None else not equal
    alo, alo_in, ahi, ahi_in = _interval(a)
    blo, blo_in, bhi, bhi_in = _interval(b)
    if op == "=":
        if ahi < blo or bhi < alo or (ahi == blo and not (ahi_in and blo_in)):
            return False
        if bhi == alo and not (bhi_in and alo_in):
            return False
        return None
    if op == "<":
        if ahi < blo or (ahi == blo and not (ahi_in and blo_in)):
            return True
        return False if alo >= bhi else None
    # op == "<="
    if ahi <= blo:
        return True
    if alo > bhi or (alo == bhi and not (alo_in and bhi_in)):
        return False
    return None


def bound_arithmetic(op: str, a: float | Bound, b: float | Bound) -> Bound | None:
    """Shifting or scaling a bound by a positive number keeps it a bound; anything else is unknown."""
    if type(a) is Bound and type(b) is not Bound:
        if op in "+-":
            return Bound(ARITHMETIC[op](a.value, b), a.comparator)
        if b > 0:
            return Bound(ARITHMETIC[op](a.value, b), a.comparator)
    if type(b) is Bound and type(a) is not Bound and op == "+":
        return Bound(a + b.value, b.comparator)
    if type(b) is Bound and type(a) is not Bound and op == "*" and a > 0:
        return Bound(a * b.value, b.comparator)
    return None
