"""The expression language: a small, safe grammar parsed by lark and type-checked at load.

Expressions only read facts, targets and built-ins, compare, combine with three-valued logic and
do simple arithmetic; there is no way to call Python. Quantities carry units (``58 'mmol/mol'``)
and the checker refuses to compare different units or a quantity with a bare number.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from functools import cache

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from rules import tree as t
from rules import types as ty

GRAMMAR = r"""
?start: expr
?expr: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> not_
         | comparison
?comparison: sum (COMP_OP sum)?
?sum: product (ADD_OP product)*
?product: unary (MUL_OP unary)*
?unary: "-" unary -> neg
      | atom
?atom: NUMBER STRING -> quantity
     | NUMBER -> number
     | STRING -> string
     | DATE -> date
     | TRUE -> true
     | FALSE -> false
     | NAME "(" [expr ("," expr)*] ")" -> call
     | NAME ("." NAME)* -> path
     | "(" expr ")"

_OR: "or"
_AND: "and"
_NOT: "not"
TRUE: "true"
FALSE: "false"
COMP_OP: "<=" | ">=" | "!=" | "=" | "<" | ">"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/"
DATE: /@\d{4}-\d{2}-\d{2}/
NUMBER: /\d+(\.\d+)?/
STRING: /'[^']*'/
NAME: /[a-z_][a-z0-9_]*/

%ignore /[ \t\r\n]+/
"""

FUNCTIONS: dict[str, tuple[tuple[str, ...], ty.Type]] = {
    "exists": (("any",), ty.BOOL),
    "days_since": (("date",), ty.NUMBER),
    "months_since": (("date",), ty.NUMBER),
    "years_since": (("date",), ty.NUMBER),
}


@dataclass(frozen=True, slots=True)
class ExpressionError(Exception):
    """A problem in an expression; ``column`` is 1-based within the expression text."""

    message: str
    column: int

    def __str__(self) -> str:
        return self.message


class UsesABrokenNameError(ExpressionError):
    """The expression uses a fact or target whose own definition has an error, reported there."""


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse(text: str, scope: Mapping[str, ty.Type]) -> t.Expr:
    """Parse and type-check one expression against the names in ``scope``."""
    return _checked(text, _Checker(scope))


def parse_condition(text: str, scope: Mapping[str, ty.Type]) -> t.Expr:
    """An expression that must be true or false (register, when, numerator...)."""
    expr = _checked(text, _Checker(scope, condition=True))
    if expr.type != ty.BOOL:
        raise ExpressionError(
            f"this must be a condition (true/false), not {_a(_describe(expr))}", 1
        )
    return expr


def _checked(text: str, checker: _Checker) -> t.Expr:
    try:
        syntax = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    return checker.check(syntax)


def names_in(text: str) -> set[str]:
    """The top-level names an expression mentions (for dependency order); empty if it won't parse."""
    try:
        syntax = _parser().parse(text)
    except UnexpectedInput:
        return set()
    found: set[str] = set()
    for node in syntax.iter_subtrees():
        if node.data == "path":
            found.add(str(node.children[0]))
    if isinstance(syntax, Token) and syntax.type == "NAME":
        found.add(str(syntax))
    return found


def _syntax_error(text: str, exc: UnexpectedInput) -> ExpressionError:
    column = getattr(exc, "column", None) or len(text) + 1
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        return ExpressionError(
            "the expression ends too early (something is missing at the end)", column
        )
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        hint = " (texts and units are written in single quotes)" if char == '"' else ""
        return ExpressionError(f"unexpected character {char!r}{hint}", column)
    if isinstance(exc, UnexpectedToken):
        before = text[: exc.token.start_pos].rstrip()
        if exc.token.type == "NAME" and before.endswith(" not"):
            example = f"{before.removesuffix('not').rstrip()} (not {exc.token.value})"
            return ExpressionError(f"{_NOT_INSIDE}, e.g. {example}", len(before) - len("not") + 1)
        return ExpressionError(f"unexpected {exc.token.value!r} here", column)
    return ExpressionError("this is not a valid expression", column)


# 'not' binds more loosely than '=', '<' and arithmetic: 'frail != not ihd' has no meaning
_NOT_INSIDE = (
    "'not' applies to a whole condition, not to one side of a comparison or a sum: "
    "put it in parentheses"
)


def _describe(expr: t.Expr) -> str:
    return str(expr.type)


def _a(thing: object) -> str:
    """'an observation', 'a date': the messages read as sentences."""
    text = str(thing)
    return f"{'an' if text[:1].lower() in 'aeiou' else 'a'} {text}"


def _column(node: Tree | Token) -> int:
    if isinstance(node, Token):
        return node.column or 1
    return getattr(node.meta, "column", 1) if not node.meta.empty else 1


class _Checker:
    """Turns a lark parse tree into a typed :mod:`rules.tree` expression, or explains why not."""

    def __init__(self, scope: Mapping[str, ty.Type], *, condition: bool = False) -> None:
        """``condition``: the expression decides something, so a target's reason (a text
        in the reader's language, to show) cannot be read."""
        self.scope = scope
        self.condition = condition

    def check(self, node: Tree | Token) -> t.Expr:
        if isinstance(node, Token):
            return self._token(node)
        handler = getattr(self, f"_{node.data}")
        return handler(node)

    def _token(self, token: Token) -> t.Expr:
        if token.type == "NUMBER":
            return t.Literal(float(token), ty.NUMBER)
        if token.type == "STRING":
            text = token[1:-1]
            return t.Literal(text, ty.Scalar("string", width=len(text)))
        if token.type == "DATE":
            try:
                return t.Literal(dt.date.fromisoformat(token[1:]), ty.DATE)
            except ValueError:
                raise ExpressionError(f"{token} is not a real date", _column(token)) from None
        if token.type in ("TRUE", "FALSE"):
            return t.Literal(token.type == "TRUE", ty.BOOL)
        if token.type == "NAME":
            return self._name(token)
        raise ExpressionError(f"unexpected {token!s}", _column(token))

    def _number(self, node: Tree) -> t.Expr:
        return self._token(node.children[0])

    _string = _number
    _date = _number
    _true = _number
    _false = _number

    def _quantity(self, node: Tree) -> t.Expr:
        number, unit = node.children
        return t.Literal(float(number), ty.Quantity(unit[1:-1]))

    def _name(self, token: Token) -> t.Expr:
        name = str(token)
        if name not in self.scope:
            known = ", ".join(sorted(self.scope)) or "none"
            hint = get_close_matches(name, list(self.scope), n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ExpressionError(
                f"unknown fact '{name}'{suggestion} (known here: {known})", _column(token)
            )
        if self.scope[name] is ty.UNUSABLE:
            raise UsesABrokenNameError(
                f"'{name}' has an error in its own definition", _column(token)
            )
        return t.Ref(name, self.scope[name])

    def _path(self, node: Tree) -> t.Expr:
        head, *fields = node.children
        expr = self._name(head)
        for field in fields:
            if not isinstance(expr.type, ty.Record):
                raise ExpressionError(f"'{expr_text(expr)}' has no fields", _column(field))
            field_type = expr.type.field_type(str(field))
            if field_type is None:
                names = ", ".join(n for n, _ in expr.type.fields)
                raise ExpressionError(
                    f"'{expr_text(expr)}' has no field '{field}' (it has: {names})", _column(field)
                )
            if self.condition and expr.type.name == "target" and field == "reason":
                raise ExpressionError(
                    f"'{expr_text(expr)}.reason' is text to show in a summary or detail; a "
                    f"condition reads {expr_text(expr)}.value or {expr_text(expr)}.source",
                    _column(field),
                )
            expr = t.Field(expr, str(field), field_type)
        return expr

    def _call(self, node: Tree) -> t.Expr:
        name, *arg_nodes = node.children
        if str(name) == "not":  # 'frail != not (ihd)' reads as a call of a function 'not'
            raise ExpressionError(f"{_NOT_INSIDE}: (not ...), not not(...)", _column(name))
        if str(name) not in FUNCTIONS:
            known = ", ".join(FUNCTIONS)
            raise ExpressionError(f"unknown function '{name}' (known: {known})", _column(name))
        kinds, result = FUNCTIONS[str(name)]
        args = tuple(self.check(a) for a in arg_nodes if a is not None)
        if len(args) != len(kinds):
            raise ExpressionError(f"{name}() takes {len(kinds)} argument(s)", _column(name))
        for arg, kind in zip(args, kinds, strict=True):
            if kind == "date" and arg.type != ty.DATE:
                raise ExpressionError(
                    f"{name}() needs a date, not {_a(_describe(arg))}", _column(name)
                )
        return t.Call(str(name), args, result)

    def _not_(self, node: Tree) -> t.Expr:
        operand = self._condition(node.children[0], "not")
        return t.Not(operand, ty.BOOL)

    def _or_expr(self, node: Tree) -> t.Expr:
        return t.Logic("or", tuple(self._condition(c, "or") for c in node.children), ty.BOOL)

    def _and_expr(self, node: Tree) -> t.Expr:
        return t.Logic("and", tuple(self._condition(c, "and") for c in node.children), ty.BOOL)

    def _condition(self, node: Tree | Token, word: str) -> t.Expr:
        expr = self.check(node)
        if expr.type == ty.BOOL:
            return expr
        hint = f" (write exists({expr_text(expr)}))" if isinstance(expr.type, ty.Record) else ""
        raise ExpressionError(
            f"'{word}' needs true/false on each side, but got {_a(_describe(expr))}{hint}",
            _column(node),
        )

    def _comparison(self, node: Tree) -> t.Expr:
        left_node, op, right_node = node.children
        left, right = self.check(left_node), self.check(right_node)
        _check_comparable(left, right, str(op), _column(op))
        return t.Compare(str(op), left, right, ty.BOOL)

    def _neg(self, node: Tree) -> t.Expr:
        operand = self.check(node.children[0])
        if operand.type != ty.NUMBER and not isinstance(operand.type, ty.Quantity):
            raise ExpressionError(f"cannot negate {_a(_describe(operand))}", _column(node))
        zero = t.Literal(0.0, ty.NUMBER)
        if isinstance(operand.type, ty.Quantity):
            zero = t.Literal(0.0, operand.type)
        return t.Arithmetic("-", zero, operand, operand.type)

    def _sum(self, node: Tree) -> t.Expr:
        return self._arithmetic(node)

    _product = _sum

    def _arithmetic(self, node: Tree) -> t.Expr:
        children = node.children
        expr = self.check(children[0])
        for op, operand_node in zip(children[1::2], children[2::2], strict=True):
            operand = self.check(operand_node)
            expr = t.Arithmetic(str(op), expr, operand, _arithmetic_type(expr, operand, op))
        return expr


def _check_comparable(left: t.Expr, right: t.Expr, op: str, column: int) -> None:
    lt, rt = left.type, right.type
    if isinstance(lt, ty.Record) or isinstance(rt, ty.Record):
        record = left if isinstance(lt, ty.Record) else right
        raise ExpressionError(
            f"compare a field of '{expr_text(record)}', e.g. {expr_text(record)}.value", column
        )
    if isinstance(lt, ty.Quantity) and isinstance(rt, ty.Quantity):
        if lt.unit != rt.unit:
            case = "; UCUM units are case-sensitive" if lt.unit.lower() == rt.unit.lower() else ""
            raise ExpressionError(
                f"unit mismatch: cannot compare {lt.unit} with {rt.unit}{case}"
                f"{_unit_hint(left, right)}",
                column,
            )
        return
    if isinstance(lt, ty.Quantity) or isinstance(rt, ty.Quantity):
        quantity = lt if isinstance(lt, ty.Quantity) else rt
        other = rt if quantity is lt else lt
        hint = ""
        if other == ty.NUMBER:
            hint = f"; give the number its unit, e.g. 58 '{quantity.unit}'"
        raise ExpressionError(f"cannot compare {_a(quantity)} with {_a(other)}{hint}", column)
    if lt != rt:
        raise ExpressionError(
            f"cannot compare {_a(lt)} with {_a(rt)}{_text_hint(left, right)}", column
        )
    if lt in (ty.BOOL, ty.STRING) and op not in ("=", "!="):
        raise ExpressionError(f"{_a(lt).capitalize()} can only be compared with = or !=", column)
    _check_closed_value(left, right, op, column)
    _check_closed_value(right, left, op, column)


def _unit_hint(left: t.Expr, right: t.Expr) -> str:
    """A threshold written in the lab's other unit: the data are converted, the threshold not."""
    if isinstance(left, t.Literal) == isinstance(right, t.Literal):
        return ""
    data = right if isinstance(left, t.Literal) else left
    unit = data.type.unit if isinstance(data.type, ty.Quantity) else ""
    named = expr_text(data)
    what = named if named != "expression" else "the other side"
    return (
        f"; {what} is in {unit} (results in other units are converted to it when they are "
        f"read): convert the threshold to {unit} and write it as a number with '{unit}'"
    )


def _text_hint(left: t.Expr, right: t.Expr) -> str:
    """How to write the value an author put in quotes: true/false and dates have no quotes."""
    kinds = {left.type, right.type}
    if ty.STRING not in kinds:
        return ""
    if ty.BOOL in kinds:
        return "; true/false is written without quotes (on_x = true), or just on_x / not on_x"
    if ty.DATE in kinds:
        literal = left if left.type == ty.STRING else right
        example = literal.value if isinstance(literal, t.Literal) else "2026-01-01"
        return f"; a date is written with @ and no quotes, e.g. @{example}"
    return ""


def _check_closed_value(coded: t.Expr, other: t.Expr, op: str, column: int) -> None:
    """A text that can only hold certain codes (sex, a target's source) compared with any other
    text decides nothing (= is never true, != always): refuse it, naming the codes and the one the author probably meant."""
    allowed = coded.type.values if isinstance(coded.type, ty.Scalar) else ()
    if not allowed or not isinstance(other, t.Literal) or other.value in allowed:
        return
    codes = ", ".join(f"'{v}'" for v in allowed)
    meant = _meant_code(str(other.value), coded.type)
    hint = f"; did you mean '{meant}'?" if meant else ""
    always = "always" if op == "!=" else "never"
    raise ExpressionError(
        f"'{other.value}' is never a value of {expr_text(coded)}, so this is {always} true"
        f"{hint} ({expr_text(coded)} is one of {codes})",
        column,
    )


def _meant_code(text: str, type_: ty.Scalar) -> str | None:
    """The code behind a word as a card shows it ('kvinde' is 'female'), a case slip or a typo."""
    folded = text.strip().lower()
    for code, *shown in type_.words:
        if folded == code or folded in (w.lower() for w in shown):
            return code
    close = get_close_matches(folded, list(type_.values), n=1)
    return close[0] if close else None


def _arithmetic_type(left: t.Expr, right: t.Expr, op: Token) -> ty.Type:
    lt, rt = left.type, right.type
    if str(op) in "+-":
        if lt == rt and (lt == ty.NUMBER or isinstance(lt, ty.Quantity)):
            return lt
    elif lt == ty.NUMBER and rt == ty.NUMBER:
        return ty.NUMBER
    elif isinstance(lt, ty.Quantity) and rt == ty.NUMBER:
        return lt
    elif str(op) == "*" and lt == ty.NUMBER and isinstance(rt, ty.Quantity):
        return rt
    elif str(op) == "/" and isinstance(lt, ty.Quantity) and lt == rt:
        return ty.NUMBER
    raise ExpressionError(f"cannot compute {lt} {op} {rt}", _column(op))


def expr_text(expr: t.Expr) -> str:
    """A short readable form of an expression (for messages)."""
    if isinstance(expr, t.Ref):
        return expr.name
    if isinstance(expr, t.Field):
        return f"{expr_text(expr.record)}.{expr.name}"
    return "expression"


def references(expr: t.Expr) -> set[str]:
    """Every fact, target or built-in name an expression reads."""
    if isinstance(expr, t.Ref):
        return {expr.name}
    children: tuple[t.Expr, ...]
    if isinstance(expr, t.Field):
        children = (expr.record,)
    elif isinstance(expr, t.Compare | t.Arithmetic):
        children = (expr.left, expr.right)
    elif isinstance(expr, t.Logic):
        children = expr.operands
    elif isinstance(expr, t.Not):
        children = (expr.operand,)
    elif isinstance(expr, t.Call):
        children = expr.args
    else:
        children = ()
    return set().union(*(references(c) for c in children)) if children else set()
