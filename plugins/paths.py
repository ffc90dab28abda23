"""Where tools and sinks may read and write local files: the data root, when one is set."""

from __future__ import annotations

import os
from pathlib import Path

from noetl.errors import ToolError


def confined(path: str, root: Path | None, who: str) -> str:
    """`path` as a tool should open it: unchanged without a data root; with one, relative
    paths are taken from the root and the real path (symbolic links followed) must lie in it.
    """
    if root is None:
        return path
    candidate = Path(path) if os.path.isabs(path) else root / path
    real = Path(os.path.realpath(candidate))
    base = Path(os.path.realpath(root))
    if not real.is_relative_to(base):
        raise ToolError(
            f"{who}: {path} is outside the data directory {root} (NOETL_DATA_ROOT)",
            error_type="path",
        )
    return str(real)


def file_mode() -> int:
    """The mode a new file gets under this process's umask (as `open` would give it)."""
    return 0o666 & ~_UMASK


def _read_umask() -> int:
    # Read once at import, while one thread runs: os.umask only sets, so it is set back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
