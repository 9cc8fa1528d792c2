"""Analyte-aware units: every value of a known analyte leaves here in one canonical unit.

Rules compare numbers against thresholds written in Danish units (HbA1c in mmol/mol, creatinine
in µmol/L, lipids in mmol/L). A value in another unit is converted here or rejected with a
reason; it is never passed on in a unit the rules do not expect (DOMAIN.md §3: "never compare
values in different units without converting"). Values of analytes not listed here keep their
unit, spelled consistently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

from fhir_adapter.records import Coding


class UnitError(ValueError):
    """A value of a known analyte has no unit, or one that cannot be converted."""


class _Analyte(NamedTuple):
    name: str  # plain words, for messages
    unit: str  # canonical unit
    implied: bool = False  # a value without a unit is in ``unit``: the analyte has no other one


_ANALYTES: dict[str, _Analyte] = {
    "hba1c": _Analyte("HbA1c", "mmol/mol"),
    "creatinine": _Analyte("creatinine", "umol/L"),
    # eGFR has one unit (its codes define it per 1.73 m²), and labs send ">90" as bare text
    # (DOMAIN.md §3); refusing it hid an eGFR of "<15" from metformin's and NSAIDs' cards.
    "egfr": _Analyte("eGFR", "mL/min/1.73m2", implied=True),
    "ldl": _Analyte("LDL cholesterol", "mmol/L"),
    "cholesterol": _Analyte("total cholesterol", "mmol/L"),
    "hdl": _Analyte("HDL cholesterol", "mmol/L"),
    "uacr": _Analyte("urine albumin/creatinine ratio", "mg/g"),
    "potassium": _Analyte("potassium", "mmol/L"),
    "systolic": _Analyte("systolic blood pressure", "mm[Hg]"),
    "diastolic": _Analyte("diastolic blood pressure", "mm[Hg]"),
}

# Codes from DOMAIN.md §3, plus the LOINC codes Synthea uses for the same analyte in another
# specimen or method (38483-4 creatinine in blood, 2093-3 / 2085-9 cholesterol and HDL by mass,
# 6298-4 potassium in blood). Keys are canonical codings (fhir_adapter.codes.canonical_coding).
_ANALYTE_BY_CODING: dict[Coding, str] = {
    ("npu", "NPU27300"): "hba1c",
    ("npu", "NPU03835"): "hba1c",
    ("loinc", "59261-8"): "hba1c",
    ("loinc", "4548-4"): "hba1c",
    ("loinc", "17856-6"): "hba1c",
    ("npu", "NPU04998"): "creatinine",
    ("npu", "NPU18016"): "creatinine",
    ("loinc", "14682-9"): "creatinine",
    ("loinc", "2160-0"): "creatinine",
    ("loinc", "38483-4"): "creatinine",
    ("npu", "DNK35302"): "egfr",
    ("npu", "DNK35131"): "egfr",
    ("loinc", "62238-1"): "egfr",
    ("loinc", "98979-8"): "egfr",
    ("loinc", "33914-3"): "egfr",
    ("npu", "NPU01568"): "ldl",
    ("npu", "NPU10171"): "ldl",
    ("loinc", "22748-8"): "ldl",
    ("loinc", "13457-7"): "ldl",
    ("loinc", "18262-6"): "ldl",
    ("npu", "NPU01566"): "cholesterol",
    ("loinc", "14647-2"): "cholesterol",
    ("loinc", "2093-3"): "cholesterol",
    ("npu", "NPU01567"): "hdl",
    ("loinc", "14646-4"): "hdl",
    ("loinc", "2085-9"): "hdl",
    ("npu", "NPU19661"): "uacr",
    ("loinc", "9318-7"): "uacr",
    ("loinc", "14959-1"): "uacr",
    ("npu", "NPU03230"): "potassium",
    ("loinc", "2823-3"): "potassium",
    ("loinc", "6298-4"): "potassium",
    ("loinc", "8480-6"): "systolic",
    ("loinc", "8462-4"): "diastolic",
}


def _ifcc_from_ngsp(percent: float) -> float:
    """IFCC HbA1c is reported in whole mmol/mol, so the converted value is rounded half up."""
    ifcc = (percent - 2.152) / 0.09148
    return float(math.floor(ifcc + 0.5)) if math.isfinite(ifcc) else ifcc  # to_canonical refuses


# Every conversion to a canonical unit, keyed by (analyte, unit spelled as _UNIT_ALIASES gives
# it). Factors from DOMAIN.md §3 (DSAM / IFCC master equation for HbA1c, creatinine 88.4,
# cholesterol 38.67, UACR 8.84). The canonical unit itself needs no entry.
_CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("hba1c", "%"): _ifcc_from_ngsp,  # IFCC = (NGSP - 2.152) / 0.09148
    ("creatinine", "mg/dL"): lambda v: v * 88.4,
    ("ldl", "mg/dL"): lambda v: v / 38.67,
    ("cholesterol", "mg/dL"): lambda v: v / 38.67,
    ("hdl", "mg/dL"): lambda v: v / 38.67,
    ("uacr", "mg/mmol"): lambda v: v * 8.84,
    ("potassium", "mEq/L"): lambda v: v,  # monovalent ion: 1 mEq = 1 mmol
    # The eGFR codes define the quantity per 1.73 m²; labs (and Synthea) often label it "mL/min".
    ("egfr", "mL/min"): lambda v: v,
}

# Folded spelling (see _FOLD) -> the spelling used in records and in _CONVERSIONS.
_UNIT_ALIASES: dict[str, str] = {
    "mmol/mol": "mmol/mol",
    "mmol/molhb": "mmol/mol",
    "%": "%",
    "umol/l": "umol/L",
    "mmol/l": "mmol/L",
    "mg/dl": "mg/dL",
    "mg/mmol": "mg/mmol",
    "mg/g": "mg/g",
    "meq/l": "mEq/L",
    "ml/min": "mL/min",
    "ml/min/1.73m2": "mL/min/1.73m2",
    "mmhg": "mm[Hg]",
}
_FOLD = str.maketrans({"µ": "u", "μ": "u", "²": "2", ",": ".", **dict.fromkeys(" {}[]_^")})


@lru_cache(maxsize=4096)
def _normalise_unit(unit: str) -> str:
    """Spell a unit one way: "µmol/l" and "umol/L" are one unit, "mL/min/{1.73_m2}" and
    "ml/min/1,73m²" another. Units not in the alias table keep their own spelling."""
    return _UNIT_ALIASES.get(unit.translate(_FOLD).lower(), unit.strip())


def _analyte(codings: tuple[Coding, ...]) -> str | None:
    for coding in codings:
        key = _ANALYTE_BY_CODING.get(coding)
        if key is not None:
            return key
    return None


def canonical_unit(codings: tuple[Coding, ...]) -> str | None:
    """The canonical unit of the analyte these codings name; None if not a known analyte."""
    key = _analyte(codings)
    return None if key is None else _ANALYTES[key].unit


def to_canonical(
    codings: tuple[Coding, ...], value: float, unit: str | None
) -> tuple[float, str | None]:
    """Convert a value to its analyte's canonical unit.

    Raises :class:`UnitError` for a known analyte whose unit is missing (unless the analyte has
    only one unit, as eGFR) or unconvertible, since a number without a trustworthy unit must not
    reach a threshold. An unknown analyte keeps its
    value and gets its unit spelled consistently. A value that is, or becomes, too large for a
    float (a valueString of 400 digits, 1e308 % HbA1c) is refused the same way.
    """
    convert, canonical = conversion(codings, unit)
    converted = value if convert is None else convert(value)
    if not math.isfinite(converted):
        raise UnitError(
            f"value {value:g} is too large to convert to {canonical}"
            if math.isfinite(value)
            else "value is too large to be a number"
        )
    return converted, canonical


@lru_cache(maxsize=8192)
def conversion(
    codings: tuple[Coding, ...], unit: str | None
) -> tuple[Callable[[float], float] | None, str | None]:
    """(conversion, or None when none is needed; canonical unit) for values of these codings in
    this unit, raising :class:`UnitError` as :func:`to_canonical` does.

    Cached per (codings, unit), as the pairs repeat across a patient's results; a caller
    converting many values (:mod:`fhir_adapter.normalise`) looks the pair up here once per
    value instead of going through :func:`to_canonical`.
    """
    key = _analyte(codings)
    spelled = _normalise_unit(unit) if unit else None
    if key is None:
        return None, spelled
    analyte = _ANALYTES[key]
    if not spelled and analyte.implied:
        return None, analyte.unit
    if not spelled:
        raise UnitError(f"{analyte.name} value has no unit (expected {analyte.unit})")
    if spelled == analyte.unit:
        return None, spelled
    convert = _CONVERSIONS.get((key, spelled))
    if convert is None:
        given = unit or ""  # not empty: it spelled a unit
        shown = given if len(given) <= 40 else given[:40] + "..."
        raise UnitError(f"{analyte.name} unit {shown!r} cannot be converted to {analyte.unit}")
    return convert, analyte.unit
