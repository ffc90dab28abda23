"""YAML loading that remembers where every key and value sits in the file.

ruamel.yaml's round-trip loader keeps line/column for each node; we copy the document into
plain Python data (so msgspec and Jinja see ordinary types) and keep the positions in maps
keyed by the node's path, a tuple of mapping keys and list indices.
"""

from __future__ import annotations

import datetime
from typing import Any

from msgspec import Struct
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

NodePath = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based (line, column)


class Document(Struct):
    """Plain data of a YAML document with the position of every node."""

    data: Any
    values: dict[NodePath, Position]
    keys: dict[NodePath, Position]
    # Literal (|) and folded (>) scalars: their text starts on the line after the indicator.
    block_scalars: set[NodePath]
    lines: list[str]

    def value_at(self, path: NodePath) -> Position:
        """Where the value at `path` starts, else its closest located ancestor."""
        for end in range(len(path), -1, -1):
            pos = self.values.get(path[:end])
            if pos is not None:
                return pos
        return (1, 1)

    def key_at(self, path: NodePath) -> Position:
        """Where the mapping key of `path` is; the item itself for list items."""
        pos = self.keys.get(path)
        return pos if pos is not None else self.value_at(path)

    def text_line_at(self, path: NodePath, offset: int) -> Position:
        """Position of line `offset` (0-based) inside the string at `path`."""
        line, col = self.value_at(path)
        if path in self.block_scalars:
            offset += 1
        if offset == 0:
            return (line, col)
        line += offset
        # The string's own text starts at that line's indentation.
        text = self.lines[line - 1] if line <= len(self.lines) else ""
        return (line, len(text) - len(text.lstrip()) + 1)


class SyntaxProblem(Struct):
    """A document that is not valid YAML (or not a single document)."""

    line: int
    col: int
    message: str


def parse_yaml(text: str) -> Document | SyntaxProblem:
    """Parse `text` into a Document, or describe the YAML syntax error with its position."""
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except YAMLError as exc:
        return _syntax_problem(exc)
    start = (root.lc.line + 1, root.lc.col + 1) if isinstance(root, CommentedMap) else (1, 1)
    doc = Document(
        data=None, values={(): start}, keys={}, block_scalars=set(), lines=text.splitlines()
    )
    doc.data = _plain(root, (), doc)
    return doc


def _syntax_problem(exc: YAMLError) -> SyntaxProblem:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            what = f"{exc.problem} {exc.context}"
        if mark is not None:
            return SyntaxProblem(mark.line + 1, mark.column + 1, f"YAML syntax error: {what}")
        return SyntaxProblem(1, 1, f"YAML syntax error: {what}")
    return SyntaxProblem(1, 1, f"YAML syntax error: {exc}")


def _plain(node: Any, path: NodePath, doc: Document) -> Any:
    """Copy a round-trip node into plain data, recording positions under `path`."""
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        # items() also yields keys merged in with `<<:`; those have no position of their own.
        for key, value in node.items():
            plain_key = _scalar(key)
            child = (*path, plain_key)
            pos = node.lc.data.get(key)
            if pos is not None:
                doc.keys[child] = (pos[0] + 1, pos[1] + 1)
                doc.values[child] = (pos[2] + 1, pos[3] + 1)
            out[plain_key] = _plain(value, child, doc)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for index, value in enumerate(node):
            child = (*path, index)
            pos = node.lc.data.get(index)
            if pos is not None:
                doc.values[child] = (pos[0] + 1, pos[1] + 1)
            items.append(_plain(value, child, doc))
        return items
    if isinstance(node, LiteralScalarString | FoldedScalarString):
        doc.block_scalars.add(path)
    return _scalar(node)


def _scalar(value: Any) -> Any:
    """ruamel's scalar subclasses (ScalarFloat, HexInt, TimeStamp, ...) as builtin types."""
    if isinstance(value, TaggedScalar):
        return str(value.value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, ScalarBoolean):  # an int subclass: test it before int
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, datetime.datetime):
        return datetime.datetime.combine(value.date(), value.timetz())
    return value
