"""How values read in card texts: an observation shown whole is its value and its day, and a
missing one says so once."""

from __future__ import annotations

import datetime as dt

from engine.patient import ObservationValue
from rules import types as ty
from rules.rendering import Bound, markdown_literal, render, width

DAY = dt.date(2026, 3, 2)
HBA1C = ty.observation("mmol/mol")
EGFR = ty.observation("mL/min/1.73m2")


def test_an_observation_reads_as_value_and_day() -> None:
    observation = ObservationValue(67.0, DAY, "Observation/h1")
    assert render(observation, HBA1C, "da") == "67 mmol/mol (2026-03-02)"
    assert (
        render(ObservationValue(7.5, DAY, "Observation/x"), ty.observation(None), "da")
        == "7,5 (2026-03-02)"
    )


def test_a_reported_bound_keeps_its_comparator() -> None:
    observation = ObservationValue(Bound(90.0, ">"), DAY, "Observation/e1")
    assert render(observation, EGFR, "en") == ">90 mL/min/1.73 m² (2026-03-02)"


def test_a_missing_observation_is_said_once() -> None:
    assert render(None, HBA1C, "da") == "ukendt"
    assert render(None, HBA1C, "en") == "unknown"
    assert (
        render(ObservationValue(None, DAY, "Observation/x"), HBA1C, "da") == "ukendt (2026-03-02)"
    )  # a non-numeric result


def test_the_width_bounds_the_longest_observation() -> None:
    longest = ObservationValue(Bound(-12345.67, ">="), DAY, "Observation/e1")
    for language in ("da", "en"):
        assert len(render(longest, EGFR, language)) <= (width(EGFR) or 0)
    assert width(EGFR) == (width(ty.Quantity("mL/min/1.73m2")) or 0) + len(" (2026-03-02)")


def test_sex_reads_in_words_in_the_card_language() -> None:
    """The FHIR code in an English card; 'female' in a Danish sentence is not Danish."""
    assert [render(code, ty.SEX, "da") for code in ("female", "male", "other", "unknown")] == [
        "kvinde",
        "mand",
        "andet",
        "ukendt",
    ]
    assert render("female", ty.SEX, "en") == "female"
    assert render("female", ty.STRING, "da") == "female"  # any other text as it is
    assert ty.SEX == ty.STRING  # and it compares as text: sex = 'female'


def test_a_markdown_literal_reads_as_itself() -> None:
    """Chart text in a card's markdown detail: no HTML, no emphasis or links; ordinary values
    (a bound '<30', an id with '-' and '.') are left as they are."""
    assert markdown_literal("'<img src=x onerror=alert(1)>'") == "'\\<img src=x onerror=alert(1)>'"
    assert markdown_literal("10*9/L [x](javascript:1) `a` b_c \\") == (
        "10\\*9/L \\[x\\](javascript:1) \\`a\\` b\\_c \\\\"
    )
    assert markdown_literal("<30 (2026-03-02, Observation/e-1.2)") == (
        "<30 (2026-03-02, Observation/e-1.2)"
    )
