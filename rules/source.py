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


def parse_yaml(text: str, file: str) -> SourceDocument:
    """Parse one YAML document, keeping node positions."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else None
        raise YamlSyntaxError(str(exc.problem or exc), position) from exc
    positions: dict[Path, ScalarSpan] = {}
    data = None if node is None else _build(node, (), positions)
    return SourceDocument(file=file, data=data, positions=positions)


def _build(node: yaml.Node, path: Path, positions: dict[Path, ScalarSpan]) -> Any:
    mark = node.start_mark
    inline = isinstance(node, yaml.ScalarNode) and node.style in (None, "", "'", '"')
    quote = 1 if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"') else 0
    positions[path] = ScalarSpan(Position(mark.line + 1, mark.column + 1 + quote), inline)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            result[key] = _build(value_node, (*path, str(key)), positions)
            key_mark = key_node.start_mark
            positions.setdefault(
                (*path, str(key), "<key>"),
                ScalarSpan(Position(key_mark.line + 1, key_mark.column + 1), True),
            )
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, index), positions) for index, item in enumerate(node.value)]
    return _scalar(node)


_constructor = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    """Resolve a scalar with PyYAML's safe constructor (dates become ``datetime.date``)."""
    if not isinstance(node, yaml.ScalarNode):
        mark = node.start_mark
        raise YamlSyntaxError(
            "a mapping key must be plain text", Position(mark.line + 1, mark.column + 1)
        )
    return _constructor.construct_object(node, deep=True)
