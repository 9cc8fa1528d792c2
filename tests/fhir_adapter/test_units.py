"""Unit canonicalisation: known analytes leave in one unit, or not at all."""

import pytest

from fhir_adapter.records import Coding
from fhir_adapter.units import UnitError, canonical_unit, to_canonical

HBA1C_NPU: tuple[Coding, ...] = (("npu", "NPU27300"),)
HBA1C_DCCT: tuple[Coding, ...] = (("loinc", "4548-4"),)
CREATININE: tuple[Coding, ...] = (("npu", "NPU04998"),)
EGFR: tuple[Coding, ...] = (("npu", "DNK35302"),)
LDL: tuple[Coding, ...] = (("loinc", "18262-6"),)
UACR: tuple[Coding, ...] = (("npu", "NPU19661"),)
POTASSIUM: tuple[Coding, ...] = (("npu", "NPU03230"),)
SYSTOLIC: tuple[Coding, ...] = (("loinc", "8480-6"),)
HEIGHT: tuple[Coding, ...] = (("loinc", "8302-2"),)


@pytest.mark.parametrize(
    ("codings", "unit"),
    [
        (HBA1C_NPU, "mmol/mol"),
        (HBA1C_DCCT, "mmol/mol"),
        (CREATININE, "umol/L"),
        (EGFR, "mL/min/1.73m2"),
        (LDL, "mmol/L"),
        (UACR, "mg/g"),
        (POTASSIUM, "mmol/L"),
        (SYSTOLIC, "mm[Hg]"),
        ((("http://example.org", "x"), ("loinc", "14647-2")), "mmol/L"),  # any coding counts
        (HEIGHT, None),
    ],
)
def test_canonical_unit(codings: tuple[Coding, ...], unit: str | None) -> None:
    assert canonical_unit(codings) == unit


@pytest.mark.parametrize(
    ("percent", "mmol_per_mol"), [(6.5, 48), (7.0, 53), (7.5, 58), (8.0, 64), (9.0, 75)]
)
def test_hba1c_percent_becomes_whole_mmol_per_mol(percent: float, mmol_per_mol: int) -> None:
    # DOMAIN.md §3 pairs; IFCC HbA1c is reported in whole numbers.
    assert to_canonical(HBA1C_DCCT, percent, "%") == (mmol_per_mol, "mmol/mol")
    assert to_canonical(HBA1C_NPU, percent, "%") == (mmol_per_mol, "mmol/mol")


@pytest.mark.parametrize("unit", ["mmol/mol", "mmol/mol Hb", " mmol/mol "])
def test_hba1c_in_mmol_per_mol_is_kept_as_is(unit: str) -> None:
    assert to_canonical(HBA1C_NPU, 52.6, unit) == (52.6, "mmol/mol")


@pytest.mark.parametrize(
    ("codings", "value", "unit", "expected"),
    [
        (CREATININE, 1.0, "mg/dL", 88.4),
        (CREATININE, 1.0, "mg/dl", 88.4),
        (LDL, 100.0, "mg/dL", 100 / 38.67),
        ((("loinc", "2093-3"),), 200.0, "mg/dL", 200 / 38.67),  # total cholesterol
        ((("loinc", "2085-9"),), 50.0, "mg/dL", 50 / 38.67),  # HDL
        (UACR, 3.0, "mg/mmol", 26.52),
        (POTASSIUM, 4.1, "mEq/L", 4.1),
        (EGFR, 57.0, "mL/min", 57.0),
    ],
)
def test_conversions(codings: tuple[Coding, ...], value: float, unit: str, expected: float) -> None:
    converted, canonical = to_canonical(codings, value, unit)
    assert converted == pytest.approx(expected)
    assert canonical == canonical_unit(codings)


@pytest.mark.parametrize("unit", ["µmol/L", "μmol/L", "umol/l", "umol/L"])
def test_micromole_spellings(unit: str) -> None:
    assert to_canonical(CREATININE, 80.0, unit) == (80.0, "umol/L")


@pytest.mark.parametrize(
    "unit",
    ["mL/min/{1.73_m2}", "ml/min/1,73m²", "mL/min/1.73 m2", "mL/min/1.73m2", "mL/min/1.73m^2"],
)
def test_egfr_spellings(unit: str) -> None:
    assert to_canonical(EGFR, 75.0, unit) == (75.0, "mL/min/1.73m2")


@pytest.mark.parametrize("unit", ["mmHg", "mm[Hg]", "mm Hg"])
def test_blood_pressure_spellings(unit: str) -> None:
    assert to_canonical(SYSTOLIC, 135.0, unit) == (135.0, "mm[Hg]")


@pytest.mark.parametrize("unit", [None, "", "  "])
def test_missing_unit_of_a_known_analyte_is_an_error(unit: str | None) -> None:
    with pytest.raises(UnitError, match="HbA1c value has no unit"):
        to_canonical(HBA1C_NPU, 53.0, unit)


@pytest.mark.parametrize("unit", [None, ""])
def test_an_egfr_without_a_unit_is_in_its_only_unit(unit: str | None) -> None:
    """Found by a GP's QA pass: a lab's bare "<15" was refused, and metformin got no card."""
    assert to_canonical(EGFR, 15.0, unit) == (15.0, "mL/min/1.73m2")


def test_unconvertible_unit_is_an_error_in_plain_words() -> None:
    with pytest.raises(UnitError) as caught:
        to_canonical(HBA1C_NPU, 53.0, "mg/dL")
    assert str(caught.value) == "HbA1c unit 'mg/dL' cannot be converted to mmol/mol"
    assert isinstance(caught.value, ValueError)


def test_unknown_analyte_keeps_its_value_and_gets_a_consistent_unit() -> None:
    assert to_canonical(HEIGHT, 173.5, "cm") == (173.5, "cm")
    assert to_canonical(HEIGHT, 1.0, "umol/l") == (1.0, "umol/L")
    assert to_canonical(HEIGHT, 1.0, " {score} ") == (1.0, "{score}")
    assert to_canonical(HEIGHT, 1.0, None) == (1.0, None)


def test_a_value_too_large_for_a_float_is_an_error_in_plain_words() -> None:
    """A float that overflows must not reach a threshold as infinity, nor stop the reading."""
    with pytest.raises(UnitError, match=r"^value 1e\+308 is too large to convert to mmol/mol$"):
        to_canonical(HBA1C_NPU, 1e308, "%")
    with pytest.raises(UnitError, match=r"^value is too large to be a number$"):
        to_canonical((("urn:x", "x"),), float("inf"), None)
