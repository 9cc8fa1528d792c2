"""How values appear in card texts, and how long they can get.

Rendering and its width bound live together so the load-time check "this summary can exceed 140
characters" and the text a GP reads can never disagree.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NamedTuple, TypeGuard

from rules import types as ty
from rules.tree import Text

MISSING = Text(da="ukendt", en="unknown")
YES_NO = {"da": ("ja", "nej"), "en": ("yes", "no")}
UNIT_DISPLAY = {
    "da": {"umol/L": "µmol/L", "mm[Hg]": "mmHg", "mL/min/1.73m2": "mL/min/1,73 m²"},
    "en": {"umol/L": "µmol/L", "mm[Hg]": "mmHg", "mL/min/1.73m2": "mL/min/1.73 m²"},
}
NUMBER_WIDTH = 9  # '-12345,67': clinical values here stay far below; see docs/rule-language.md
COMPARATOR_WIDTH = 2  # '>=' before a bound


class Bound(NamedTuple):
    """A reported bound such as eGFR '>90': the true value lies beyond ``value``."""

    value: float
    comparator: str  # < <= > >=


def number(value: float, language: str) -> str:
    """At most two decimals, no trailing zeros; Danish uses a decimal comma."""
    text = f"{round(value, 2):.2f}".rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text.replace(".", ",") if language == "da" else text


# Markdown's emphasis, code, link and escape characters, and a "<" that would open raw HTML or an
# autolink (CommonMark: "<" followed by a letter, "/", "!" or "?"). "eGFR <30" stays as it is.
_MARKDOWN = re.compile(r"[\\`*_\[\]]|<(?=[A-Za-z/!?])")


def markdown_literal(text: str) -> str:
    """``text`` escaped to read as itself in a card's markdown detail. Values come from the
    chart (resource ids, units and codes as sent): '<img onerror=...>' must not become HTML in
    the EHR, nor '10*9/L' emphasis."""
    return _MARKDOWN.sub(lambda match: "\\" + match.group(0), text)


def unit_display(unit: str, language: str) -> str:
    return UNIT_DISPLAY["en" if language == "en" else "da"].get(unit, unit)


def render(value: object, type_: ty.Type, language: str) -> str:
    """A value as a GP reads it; missing data say so in words."""
    if value is None:
        return MISSING.in_language(language)
    if is_observation(type_):
        return _render_observation(value, type_, language)
    if isinstance(value, bool):
        yes, no = YES_NO["en" if language == "en" else "da"]
        return yes if value else no
    if isinstance(value, Bound):
        return value.comparator + render(value.value, type_, language)
    if isinstance(value, float | int):
        text = number(float(value), language)
        if isinstance(type_, ty.Quantity):
            return f"{text} {unit_display(type_.unit, language)}"
        return text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Text):
        return value.in_language(language)
    if isinstance(type_, ty.Scalar) and type_.words:
        for code, da, en in type_.words:
            if value == code:
                return en if language == "en" else da
    return str(value)


def is_observation(type_: ty.Type) -> TypeGuard[ty.Record]:
    """A latest/earliest observation: the one record a template may show whole."""
    return isinstance(type_, ty.Record) and type_.name == "observation"


def _render_observation(observation: Any, type_: ty.Record, language: str) -> str:
    """'67 mmol/mol (2026-03-02)': value and day together, so that a missing observation reads
    'ukendt' once instead of 'ukendt den ukendt'. ``observation`` has ``value`` and ``date``
    (the per-patient engine's ObservationValue)."""
    value = render(observation.value, observation_value_type(type_), language)
    return observation_text(value, observation.date)


def observation_text(value: str, day: dt.date) -> str:
    """An observation's rendered value with its day."""
    return f"{value} ({day.isoformat()})"


def observation_value_type(type_: ty.Record) -> ty.Type:
    return type_.field_type("value") or ty.NUMBER


def width(type_: ty.Type) -> int | None:
    """The most characters a value of this type renders to; None when it has no bound."""
    missing = max(len(MISSING.da), len(MISSING.en))
    if is_observation(type_):
        value = width(observation_value_type(type_))
        return None if value is None else max(value + len(" (2026-01-01)"), missing)
    if isinstance(type_, ty.Quantity):
        unit = max(len(unit_display(type_.unit, language)) for language in UNIT_DISPLAY)
        return max(COMPARATOR_WIDTH + NUMBER_WIDTH + 1 + unit, missing)
    if type_ == ty.NUMBER:
        return max(COMPARATOR_WIDTH + NUMBER_WIDTH, missing)
    if type_ == ty.DATE:
        return max(len("2026-01-01"), missing)
    if type_ == ty.BOOL:
        return max(*(len(w) for words in YES_NO.values() for w in words), missing)
    if isinstance(type_, ty.Scalar) and type_.width is not None:
        return max(type_.width, missing)
    return None
