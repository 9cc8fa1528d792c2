"""The library as a whole: one number names one version, and numbers rise with time."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.errors import RuleFileError
from rules.guideline_set import load_guidelines, version_number


def add_copy(guideline_dir: Path, name: str, **replace: str) -> None:
    text = (guideline_dir / "example.yaml").read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, f"fixture no longer contains {old!r}"
        text = text.replace(old, new)
    (guideline_dir / name).write_text(text, encoding="utf-8")


def errors(guideline_dir: Path) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load_guidelines(guideline_dir)
    return [str(e) for e in caught.value.errors]


def test_version_numbers_compare_as_numbers() -> None:
    assert version_number("1.10.0") > version_number("1.9.0")
    assert version_number("1.0") == version_number("1.0.0")


def test_a_copy_with_the_same_version_is_one_located_error(guideline_dir: Path) -> None:
    """It was two: an unlocated 'also in' and advice to end 1.0.0 where 1.0.0 starts."""
    add_copy(guideline_dir, "later.yaml")
    (found,) = errors(guideline_dir)
    assert "later.yaml:3:10: example-hba1c version 1.0.0 is also in" in found
    assert ": give a new version a higher number, a different guideline an id of its own" in found


def test_1_0_and_1_0_0_are_the_same_version(guideline_dir: Path) -> None:
    add_copy(guideline_dir, "later.yaml", **{"version: 1.0.0": 'version: "1.0"'})
    (found,) = errors(guideline_dir)
    assert "version 1.0 is also in" in found and "(written 1.0.0):" in found


def test_a_later_version_with_a_lower_number_is_refused(guideline_dir: Path) -> None:
    """0.9.0 from 2026 after 1.0.0 until 2026 loaded: cards named the newer rule 0.9.0."""
    add_copy(
        guideline_dir,
        "example-next.yaml",
        **{"version: 1.0.0": "version: 0.9.0", "{from: 2020-01-01}": "{from: 2026-09-01}"},
    )
    path = guideline_dir / "example.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("{from: 2020-01-01}", "{from: 2020-01-01, until: 2026-09-01}"))
    (found,) = errors(guideline_dir)
    assert "example-next.yaml:3:10: version 0.9.0 of example-hba1c starts 2026-09-01" in found
    assert "a later version needs a higher number than 1.0.0" in found


def test_an_id_taken_by_another_guideline_is_named_as_such(guideline_dir: Path) -> None:
    """The only advice was to end the guideline in service that already had the id."""
    add_copy(
        guideline_dir,
        "other.yaml",
        **{"version: 1.0.0": "version: 1.1.0", "Eksempel HbA1c": "Andet", "Example HbA1c": "Other"},
    )
    (found,) = errors(guideline_dir)
    assert "give 1.0.0 an effective.until of 2020-01-01 or earlier" in found
    assert "other.yaml is another guideline than 'Example HbA1c', give it an id of its own" in found


def test_a_new_version_of_the_same_guideline_gets_no_id_hint(guideline_dir: Path) -> None:
    add_copy(guideline_dir, "example-1.1.yaml", **{"version: 1.0.0": "version: 1.1.0"})
    (found,) = errors(guideline_dir)
    assert "both in force" in found and "id of its own" not in found


def test_an_id_clash_with_a_lower_number_is_still_one_error(guideline_dir: Path) -> None:
    """A new guideline 0.1.0 given a taken id overlaps and is numbered lower: one message."""
    add_copy(
        guideline_dir,
        "other.yaml",
        **{
            "version: 1.0.0": "version: 0.1.0",
            "Eksempel HbA1c": "Andet",
            "Example HbA1c": "Other",
            "{from: 2020-01-01}": "{from: 2024-01-01}",
        },
    )
    (found,) = errors(guideline_dir)
    assert "both in force from 2024-01-01" in found and "give it an id of its own" in found
