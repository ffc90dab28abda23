"""YAML loading that remembers where every key and value sits in the file.

ruamel.yaml's round-trip loader keeps line/column for each node; we copy the document into
plain Python data (so msgspec and Jinja see ordinary types) and keep the positions in maps
keyed by the node's path, a tuple of mapping keys and list indices.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from msgspec import Struct
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

NodePath = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based (line, column)

MAX_DOCUMENT_CHARS = 4 * 1024 * 1024
"""The longest playbook text parsed at all."""
MAX_NODES = 200_000
"""The most values (mappings, lists, scalars) a document may expand to, aliases counted at
each use: a 10,000-step playbook stays far below it."""
MAX_DEPTH = 100
"""The deepest nesting of mappings and lists (validation and rendering recurse on it)."""
_BRACKETS = re.compile(r"[\[\]{}]")
MAX_ALIASED_NODES = 20_000
"""The most values that uses of YAML aliases may add (an anchor shared by a few steps adds
little; an alias bomb adds billions)."""


class DuplicateKey(Struct):
    """A mapping key written twice: the later value wins, as with NoETL's PyYAML loader."""

    path: NodePath
    dropped: Position  # the earlier key, whose value is replaced
    kept: Position  # the later key, whose value is used


class Document(Struct):
    """Plain data of a YAML document with the position of every node."""

    data: Any
    values: dict[NodePath, Position]
    keys: dict[NodePath, Position]
    # Literal (|) and folded (>) scalars: their text starts on the line after the indicator.
    block_scalars: set[NodePath]
    lines: list[str]
    duplicates: list[DuplicateKey] = []

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
    """A document that is not valid YAML (or not a single document), or one too large."""

    line: int
    col: int
    message: str


class _TooLarge(Exception):
    """The document expands past MAX_NODES values (raised inside `_plain`)."""


def parse_yaml(text: str) -> Document | SyntaxProblem:
    """Parse `text` into a Document, or describe the YAML syntax error with its position.

    Bounded: a text over MAX_DOCUMENT_CHARS is refused before parsing, and a document whose
    aliases expand to more than MAX_NODES values (a "billion laughs" bomb) is refused while
    it is copied, so neither time nor memory can grow past those limits.
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        return SyntaxProblem(
            1,
            1,
            f"the document is {len(text):,} characters long; playbooks are limited to "
            f"{MAX_DOCUMENT_CHARS:,}",
        )
    if _flow_depth(text) > MAX_DEPTH:
        # Checked before ruamel's scanner, whose cost grows with the square of flow depth.
        return _too_deep()
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True
    try:
        node = yaml.compose(text)
        duplicates = _drop_duplicate_keys(node)
        root = yaml.constructor.construct_document(node) if node is not None else None
    except YAMLError as exc:
        return _syntax_problem(exc)
    except RecursionError:
        return _too_deep()
    start = (root.lc.line + 1, root.lc.col + 1) if isinstance(root, CommentedMap) else (1, 1)
    doc = Document(
        data=None,
        values={(): start},
        keys={},
        block_scalars=set(),
        lines=text.splitlines(),
        duplicates=duplicates,
    )
    try:
        doc.data = _plain(root, (), doc, _Budget())
    except RecursionError:
        return _too_deep()
    except _TooLarge:
        return SyntaxProblem(
            1,
            1,
            f"the document expands to more than {MAX_NODES:,} values, or its YAML aliases to "
            f"more than {MAX_ALIASED_NODES:,}: playbooks are limited to that",
        )
    return doc


def _flow_depth(text: str) -> int:
    """The deepest run of open `[`/`{` brackets in `text`, quotes not considered: an upper
    bound of the flow nesting that legitimate playbooks stay far below."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(text):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


def _too_deep() -> SyntaxProblem:
    return SyntaxProblem(
        1, 1, f"the document nests mappings and lists more than {MAX_DEPTH} levels deep"
    )


def _drop_duplicate_keys(root: Node | None) -> list[DuplicateKey]:
    """Remove the earlier of each pair of equal keys from the composed tree (the later value
    wins) and say where they were. Each node is visited once, aliases included."""
    found: list[DuplicateKey] = []
    seen: set[int] = set()
    stack: list[tuple[Node, NodePath]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            last: dict[Any, int] = {}
            for index, (key, _) in enumerate(node.value):
                if isinstance(key, ScalarNode):
                    last[key.value] = index
            kept_pairs = []
            for index, (key, value) in enumerate(node.value):
                name = key.value if isinstance(key, ScalarNode) else None
                if name is not None and last[name] != index:
                    later = node.value[last[name]][0]
                    found.append(
                        DuplicateKey(
                            (*path, name),
                            (key.start_mark.line + 1, key.start_mark.column + 1),
                            (later.start_mark.line + 1, later.start_mark.column + 1),
                        )
                    )
                    continue
                kept_pairs.append((key, value))
                stack.append((value, (*path, name) if name is not None else path))
            node.value = kept_pairs
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    found.sort(key=lambda d: d.dropped)
    return found


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


class _Budget:
    """How many more values `_plain` may copy: in all, and through aliases."""

    __slots__ = ("aliased", "seen", "total")

    def __init__(self) -> None:
        self.total = MAX_NODES
        self.aliased = MAX_ALIASED_NODES
        self.seen: set[int] = set()


def _plain(node: Any, path: NodePath, doc: Document, budget: _Budget, alias: bool = False) -> Any:
    """Copy a round-trip node into plain data, recording positions under `path`.

    An alias is copied at each use, so `budget` bounds what aliases may add in all: that is
    what keeps an alias bomb from growing time and memory."""
    if len(path) > MAX_DEPTH:
        raise RecursionError
    budget.total -= 1
    if isinstance(node, CommentedMap | CommentedSeq):
        if id(node) in budget.seen:
            alias = True
        budget.seen.add(id(node))
    if alias:
        budget.aliased -= 1
    if budget.total < 0 or budget.aliased < 0:
        raise _TooLarge
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
            out[plain_key] = _plain(value, child, doc, budget, alias)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for index, value in enumerate(node):
            child = (*path, index)
            pos = node.lc.data.get(index)
            if pos is not None:
                doc.values[child] = (pos[0] + 1, pos[1] + 1)
            items.append(_plain(value, child, doc, budget, alias))
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
