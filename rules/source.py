"""YAML with positions: plain data for pydantic plus a map from each value's path to its line.

PyYAML's composer already knows where every node starts; keeping that map lets a pydantic error
at ``("facts", "hba1c", "within")`` be reported at the exact line and column an author typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from rules.errors import Position

Path = tuple[str | int, ...]

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass(frozen=True, slots=True)
class ScalarSpan:
    """Where a scalar's text begins; ``inline`` when its characters map 1:1 onto the line."""

    position: Position
    inline: bool


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """A parsed YAML file: its data and where each part came from."""

    file: str
    data: Any
    positions: dict[Path, ScalarSpan]

    def position(self, path: Path) -> Position | None:
        """The position of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            span = self.positions.get(tuple(path[:end]))
            if span is not None:
                return span.position
        return None

    def offset(self, path: Path, column_offset: int) -> Position | None:
        """Position of a character inside a scalar (for expression errors); exact for inline scalars."""
        span = self.positions.get(path)
        if span is None:
            return self.position(path)
        if not span.inline:
            return span.position
        return Position(span.position.line, span.position.column + column_offset)


class YamlSyntaxError(ValueError):
    """The file is not valid YAML."""

    def __init__(self, message: str, position: Position | None) -> None:
        super().__init__(message)
        self.position = position


class YamlRefusedError(YamlSyntaxError):
    """Valid YAML that a rule file may not use (a tag, an alias of a list, an impossible date)."""


def parse_yaml(text: str, file: str) -> SourceDocument:
    """Parse one YAML document, keeping node positions."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else None
        problem = str(exc.problem or exc)
        if mark is not None and text[mark.index : mark.index + 1] == "\t":
            problem += "; it is a tab: YAML indents with spaces only"
        elif exc.problem == "could not find expected ':'" and exc.context_mark is not None:
            key = exc.context_mark  # PyYAML marks the line after the key that lacks its colon
            position = Position(key.line + 1, key.column + 1)
            problem += f" after the key on line {key.line + 1} (a key is followed by ': ')"
        elif mark is not None and mark.line < len(lines := text.splitlines()):
            problem += _indentation_hint(lines[: mark.line + 1], problem)
        raise YamlSyntaxError(problem, position) from exc
    positions: dict[Path, ScalarSpan] = {}
    data = None if node is None else _build(node, (), positions, set())
    return SourceDocument(file=file, data=data, positions=positions)


def _indentation_hint(lines: list[str], problem: str) -> str:
    """What an indentation slip looks like to an author: PyYAML's 'did not find expected key'
    says nothing of the one space too many or too few that usually causes it."""
    *above, line = lines
    if not line.strip():
        return ""
    indent = _indent(line)
    levels = _open_levels(above)
    number = len(lines)
    if problem == "did not find expected '-' indicator" and indent in levels:
        item = levels[indent]
        return (
            f"; line {number} is indented like the '- ' of a list item (line {item}) but does not "
            f"start one: to belong to that item, indent it to line up with the item's first key "
            f"({indent + 2} spaces)"
        )
    if indent in levels or not levels or _opens_a_block(above, indent):
        if problem == "mapping values are not allowed in this context":
            return "; a text that contains ': ' (colon, space) must be in quotes"
        return ""
    *rest, last = [f"{n} (line {at})" for n, at in sorted(levels.items())]
    shown = f"{', '.join(rest)} or {last}" if rest else last
    return (
        f"; check the indentation: line {number} is indented {indent} space(s), but a line at its "
        f"level is indented {shown}"
    )


def _opens_a_block(above: list[str], indent: int) -> bool:
    """The nearest line ends in a key ('patient:'), so the next may begin a deeper level."""
    nearest = next((x for x in reversed(above) if x.strip() and not x.lstrip().startswith("#")), "")
    return nearest.rstrip().endswith(":") and indent > _indent(nearest)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _open_levels(above: list[str]) -> dict[int, int]:
    """The indentations a next line can line up with, each with the (1-based) line that set it:
    the nearest line and every less-indented line before it (a list item's key too)."""
    levels: dict[int, int] = {}
    lowest = None
    for number in range(len(above), 0, -1):
        line = above[number - 1]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = _indent(line)
        if lowest is not None and indent >= lowest:
            continue
        if stripped.startswith("- "):
            levels.setdefault(indent + 2 + _indent(stripped[2:]), number)
        levels.setdefault(indent, number)
        lowest = indent
    return levels


def _build(node: yaml.Node, path: Path, positions: dict[Path, ScalarSpan], built: set[int]) -> Any:
    """Plain data from a node. A mapping or list met a second time is an alias (``*name``):
    refused, since nested aliases expand exponentially ("billion laughs") and an alias inside
    its own anchor never ends; a rule file has no need for them."""
    mark = node.start_mark
    if not isinstance(node, yaml.ScalarNode):
        if id(node) in built:
            raise YamlRefusedError(
                "anchors and aliases (&name, *name) of mappings and lists are not allowed in a "
                "rule file: write the part out where it is needed",
                _position(node),
            )
        built.add(id(node))
    inline = isinstance(node, yaml.ScalarNode) and node.style in (None, "", "'", '"')
    quote = 1 if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"') else 0
    positions[path] = ScalarSpan(Position(mark.line + 1, mark.column + 1 + quote), inline)
    if node.tag not in _PLAIN_TAGS and not isinstance(node, yaml.ScalarNode):
        raise _tag_refused(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            result[key] = _build(value_node, (*path, str(key)), positions, built)
            key_mark = key_node.start_mark
            positions.setdefault(
                (*path, str(key), "<key>"),
                ScalarSpan(Position(key_mark.line + 1, key_mark.column + 1), True),
            )
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, index), positions, built) for index, item in enumerate(node.value)
        ]
    return _scalar(node)


_constructor = yaml.SafeLoader("")
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


def _scalar(node: yaml.Node) -> Any:
    """Resolve a scalar with PyYAML's safe constructor (dates become ``datetime.date``)."""
    if not isinstance(node, yaml.ScalarNode):
        raise YamlSyntaxError("a mapping key must be plain text", _position(node))
    try:
        return _constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:  # the safe loader knows no such tag: refused
        raise _tag_refused(node) from None
    except ValueError as exc:  # PyYAML builds 2026-13-01 as a date and lets date() refuse it
        what = "date" if node.tag == "tag:yaml.org,2002:timestamp" else "value"
        raise YamlRefusedError(
            f"'{node.value}' is not a valid {what} ({exc})", _position(node)
        ) from None


def _tag_refused(node: yaml.Node) -> YamlRefusedError:
    return YamlRefusedError(f"the tag '{node.tag}' is not allowed in a rule file", _position(node))


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)
