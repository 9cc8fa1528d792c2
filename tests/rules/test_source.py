from __future__ import annotations

import datetime as dt

import pytest

from rules.errors import Position
from rules.source import YamlSyntaxError, parse_yaml

TEXT = """id: x
facts:
  hba1c:
    latest_observation: {valueset: hba1c, within: 12 months}
when: "age > 3"
dates: [2026-01-01]
"""


def test_positions_point_at_values() -> None:
    doc = parse_yaml(TEXT, "f.yaml")
    assert doc.data["dates"] == [dt.date(2026, 1, 1)]
    assert doc.position(("facts", "hba1c", "latest_observation", "within")) == Position(4, 51)
    assert doc.offset(("when",), 4) == Position(5, 12)


def test_unknown_path_falls_back_to_nearest_parent() -> None:
    doc = parse_yaml(TEXT, "f.yaml")
    assert doc.position(("facts", "hba1c", "nope", 3)) == doc.position(("facts", "hba1c"))


def test_syntax_error_has_a_position() -> None:
    with pytest.raises(YamlSyntaxError) as caught:
        parse_yaml("a: [1, 2\nb: 3\n", "f.yaml")
    assert caught.value.position is not None
