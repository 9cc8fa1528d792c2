from __future__ import annotations

import datetime as dt
import re

import pytest

from rules.errors import Position
from rules.source import YamlRefusedError, YamlSyntaxError, parse_yaml

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


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("a: &a [*a]\n", Position(1, 4), "anchors and aliases"),  # never ends
        (
            "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n",  # grows 3^n
            Position(1, 4),
            "anchors and aliases",
        ),
        ("a: &m {k: v}\nb: *m\n", Position(1, 4), "anchors and aliases"),
        ("a: !!python/object/apply:os.system [id]\n", Position(1, 4), "the tag"),
        ("a: !!python/name:os.system\n", Position(1, 4), "the tag"),
        ("a: !!set {x: null}\n", Position(1, 4), "the tag"),
        ("a: 2026-13-01\n", Position(1, 4), "'2026-13-01' is not a valid date"),
        ("a: [2026-02-30]\n", Position(1, 5), "'2026-02-30' is not a valid date"),
    ],
)
def test_yaml_a_rule_file_may_not_use_is_refused_at_its_place(
    text: str, position: Position, message: str
) -> None:
    """Refused, not crashed on: an alias that contains itself recursed without end, nested
    aliases of lists expand exponentially, and PyYAML raised a bare ValueError for a date like
    2026-13-01 (the check printed a traceback; the service's reload logged a failed poll)."""
    with pytest.raises(YamlRefusedError, match=re.escape(message)) as caught:
        parse_yaml(text, "f.yaml")
    assert caught.value.position == position


def test_an_alias_of_a_plain_value_is_fine() -> None:
    doc = parse_yaml("a: &t Vejviser\nb: *t\n", "f.yaml")
    assert doc.data == {"a": "Vejviser", "b": "Vejviser"}


@pytest.mark.parametrize(
    ("text", "position", "hint"),
    [
        (
            "facts:\n  a: 1\n b: 2\n",
            Position(3, 2),
            "check the indentation: line 3 is indented 1 space(s), but a line at its level is "
            "indented 0 (line 1) or 2 (line 2)",
        ),
        ("facts:\n  a: 1\n   b: 2\n", Position(3, 5), "line 3 is indented 3 space(s)"),
        ("id: x\n version: 1\n", Position(2, 9), "line 2 is indented 1 space(s)"),
        (
            "tests:\n  - name: n\n    patient: {}\n  expect:\n    register: true\n",
            Position(4, 3),
            "line 4 is indented like the '- ' of a list item (line 2) but does not start one: to "
            "belong to that item, indent it to line up with the item's first key (4 spaces)",
        ),
        (
            "facts:\n  a: 1\n  b 2\n  c: 3\n",
            Position(3, 3),
            "could not find expected ':' after the key on line 3",
        ),
        ("title:\n  en: UTI: antibiotic\n", Position(2, 10), "must be in quotes"),
    ],
)
def test_an_indentation_slip_is_named_as_one(text: str, position: Position, hint: str) -> None:
    """PyYAML says 'did not find expected key' for one space too few: true, and no help."""
    with pytest.raises(YamlSyntaxError) as caught:
        parse_yaml(text, "f.yaml")
    assert hint in str(caught.value)
    assert caught.value.position == position


def test_a_deeper_block_after_a_key_gets_no_indentation_hint() -> None:
    with pytest.raises(YamlSyntaxError) as caught:
        parse_yaml("a:\n  b:\n      c: 1\n  d: [\n", "f.yaml")
    assert "indentation" not in str(caught.value)
