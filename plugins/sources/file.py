"""Scripts from files: those that travel with the playbook, then the runner's script root.

A relative uri may not climb out of the root with `..`; an absolute path (or `file:///...`)
is read only where the runner allows absolute scripts.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noetl.errors import ToolError
from plugins.base import ToolContext


async def read(uri: str, source: Mapping[str, Any], ctx: ToolContext) -> bytes:
    """The bytes of the file script `uri`."""
    path = uri.removeprefix("file://")
    if posixpath.isabs(path):
        if not ctx.allow_absolute_scripts:
            raise ToolError(
                f"script {uri}: absolute script paths are not allowed on this runner; ship the "
                "script with the playbook and give its path relative to the playbook, or start "
                "the runner with NOETL_ALLOW_ABSOLUTE_SCRIPTS=true",
                error_type="script",
            )
        return await _read(Path(path), uri)
    relative = posixpath.normpath(path)
    if relative == "." or relative == ".." or relative.startswith("../"):
        raise ToolError(
            f"script {uri}: a relative script path must name a file inside the "
            "playbook's directory (no leading `..`)",
            error_type="script",
        )
    # Keys are normalised here too, so `./lib/a.py` and `lib/a.py` name the same file.
    files = {posixpath.normpath(key): text for key, text in ctx.files.items()}
    if relative in files:
        return files[relative].encode("utf-8")
    if ctx.script_root is None:
        raise ToolError(
            f"script {uri}: not among the playbook's files, and this runner has no "
            "script directory to look in",
            error_type="script",
        )
    root = ctx.script_root.resolve()
    full = (root / relative).resolve()
    # resolve() follows symlinks: a link pointing outside the root is refused as well.
    if not full.is_relative_to(root):
        raise ToolError(f"script {uri}: resolves outside the script directory", error_type="script")
    return await _read(full, uri)


async def _read(path: Path, uri: str) -> bytes:
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError as exc:
        raise ToolError(f"script {uri}: no such file {path}", error_type="script") from exc
    except OSError as exc:
        raise ToolError(
            f"script {uri}: cannot read {path}: {exc.strerror or exc}", error_type="script"
        ) from exc
