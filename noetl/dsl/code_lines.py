"""Where each line of a python `code` block sits in its playbook file.

A run-time error names the file's line, not the code's: the map travels with the command
(`CommandIssued.code_lines`) down to the worker, which rewrites its traceback's frames.

A literal block (`|`) maps linearly. Folded (`>`), quoted and plain scalars fold lines (a
double-quoted one-liner may hold every line of the code through `\\n` escapes), so their map
is found with the YAML parser itself: the scalar cut after each file line is parsed again,
and a code line sits on the first file line whose prefix already holds it.
"""

from __future__ import annotations

import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from noetl.dsl.loader import Document, NodePath
from noetl.messages import CodeLines

# A block scalar's header: style, then indentation and chomping indicators in either order.
_HEADER = re.compile(r"([|>])([1-9]?)[+-]?([1-9]?)(.*)")
# Folded or quoted code longer than this many file lines maps linearly (parsing each prefix
# costs a parse per line).
MAX_FOLDED_LINES = 2000


def code_lines(doc: Document, path: NodePath, filename: str, code: str) -> CodeLines:
    """The file line of each line of the python `code` found at `path` of `doc`."""
    line = doc.value_at(path)[0]
    text = doc.lines[line - 1] if line <= len(doc.lines) else ""
    col = doc.value_at(path)[1]
    indicator = text[col - 1 : col]
    if indicator == "|":
        return CodeLines(file=filename, first=line + 1)
    found = _folded_lines(doc, path, code)
    if found is None and indicator == ">":
        return CodeLines(file=filename, first=line + 1)
    if found is None:  # in a flow mapping, say: the line where the value starts is known
        return CodeLines(file=filename, first=line, lines=(line,))
    if all(n == found[0] + i for i, n in enumerate(found)):
        return CodeLines(file=filename, first=found[0])
    return CodeLines(file=filename, first=found[0], lines=tuple(_trimmed(found)))


def python_code_paths(data: Any, path: NodePath = ()) -> list[tuple[NodePath, str]]:
    """Every `code` string of a `kind: python` mapping in `data`, with its path."""
    found: list[tuple[NodePath, str]] = []
    if isinstance(data, dict):
        if data.get("kind") == "python" and isinstance(data.get("code"), str):
            found.append(((*path, "code"), data["code"]))
        for key, value in data.items():
            found += python_code_paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += python_code_paths(value, (*path, index))
    return found


def _trimmed(lines: list[int]) -> list[int]:
    """`lines` without the repeats at its end (code lines past the end take the last)."""
    end = len(lines)
    while end > 1 and lines[end - 2] == lines[end - 1]:
        end -= 1
    return lines[:end]


def _folded_lines(doc: Document, path: NodePath, code: str) -> list[int] | None:
    """The file line of each code line of a folded, quoted or plain scalar, or None when
    the scalar cannot be cut and parsed again on its own (a flow mapping, say)."""
    key_line, key_col = doc.key_at(path)
    value_line, value_col = doc.value_at(path)
    if key_line != value_line:
        head = [" " * (key_col - 1) + "k:"]
        first = doc.lines[value_line - 1]
    else:
        source = doc.lines[value_line - 1]
        head = []
        first = " " * (key_col - 1) + "k:".ljust(value_col - key_col) + source[value_col - 1 :]
    block = _HEADER.fullmatch(first[value_col - 1 :])
    if block is not None:
        # Strip chomping: a prefix's trailing line breaks are no code line of their own.
        style, indent, indent2, rest = block.groups()
        first = first[: value_col - 1] + f"{style}{indent or indent2}-{rest}"
    quote = first[value_col - 1 : value_col]
    lines_of = [0] * len(code.splitlines() or [""])
    want = code.rstrip("\n") if block is not None else code
    prefix = [*head, first]
    file_line = value_line
    if block is not None and file_line < len(doc.lines):
        file_line += 1  # a block scalar's text starts on the line after its header
        prefix.append(doc.lines[file_line - 1])
    known = 0  # code lines placed so far
    for _ in range(MAX_FOLDED_LINES):
        value, whole = _parse_prefix(prefix, quote if block is None else "")
        if value is None:
            return None
        breaks = value.count("\n") if whole else value.rstrip().count("\n")
        while known <= min(breaks, len(lines_of) - 1):
            lines_of[known] = file_line
            known += 1
        if whole and value == want:
            return lines_of
        if file_line >= len(doc.lines):
            return None
        file_line += 1
        prefix.append(doc.lines[file_line - 1])
    return None


_yaml = YAML(typ="safe", pure=True)


def _parse_prefix(prefix: list[str], quote: str) -> tuple[str | None, bool]:
    """The value of `k` in `prefix` parsed as it is (whole: True) or, for a quoted scalar
    not closed yet, with its quote closed at the end of the last line (whole: False)."""
    text = "\n".join(prefix) + "\n"
    value = _load(text)
    if value is not None:
        return value, True
    if not quote:
        return None, False
    last = prefix[-1]
    if quote == '"' and (len(last) - len(last.rstrip("\\"))) % 2:
        last = last[:-1]  # an escaped line break: it adds nothing, and would escape the quote
    return _load("\n".join([*prefix[:-1], last + quote]) + "\n"), False


def _load(text: str) -> str | None:
    try:
        data = _yaml.load(text)
    except YAMLError:
        return None
    value = data.get("k") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
