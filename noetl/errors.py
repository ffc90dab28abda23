"""Every exception noetl-runtime raises on purpose, each with a message meant for the user."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class NoetlError(Exception):
    """Base of every error raised by noetl-runtime on purpose."""


class ConfigError(NoetlError):
    """The configuration (environment or flags) is unusable."""


class MissingKeyError(ConfigError):
    """Credentials are stored but the key file that encrypted them is gone (and
    NOETL_ENCRYPTION_KEY is unset): generating a new key would orphan every one of them."""

    def __init__(self, path: str, stored: int) -> None:
        self.path = path
        self.stored = stored
        super().__init__(
            f"the encryption key file {path} is missing, but {stored} stored credential(s) "
            f"were encrypted with a key: restore the file from your backup to {path} "
            "(mode 0600), or set NOETL_ENCRYPTION_KEY to the key they were encrypted with. "
            "No new key is generated, since the stored credentials could never be decrypted "
            "with it; to start over, delete them with `noetl-runtime credential delete NAME`"
        )


class LocalModeError(NoetlError):
    """The embedded NATS or PostgreSQL server could not be started or reached."""


class PlaybookError(NoetlError):
    """A playbook is invalid; `problems` holds every `FILE:LINE:COL: message` found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RenderError(NoetlError):
    """A Jinja2 template could not be rendered (syntax, undefined name, sandbox);
    `error_type` is the type of the step error it causes."""

    error_type: str = "render"


class RenderTimeout(RenderError):
    """A template ran longer than its time limit (`NOETL_RENDER_TIMEOUT`)."""

    error_type = "render_timeout"


class TooManyItems(NoetlError):
    """A template produced (or was about to produce) a sequence longer than its limit:
    `count` items when known, else at least `limit + 1`."""

    def __init__(self, what: str, count: int | None, limit: int) -> None:
        self.what = what
        self.count = count
        self.limit = limit
        has = f"{count:,} items" if count is not None else f"more than {limit:,} items"
        super().__init__(f"{what} has {has}, more than the limit of {limit:,}")


class ToolError(NoetlError):
    """A tool failed; `error_type` and `details` go into the step's error record."""

    def __init__(self, message: str, *, error_type: str = "tool", **details: Any) -> None:
        self.error_type = error_type
        self.details = details
        super().__init__(message)


class ToolTimeout(ToolError):
    """A tool call ran past the step's timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_type="timeout")


class ResultTooLarge(ToolError):
    """A step's result, encoded as JSON, is larger than `NOETL_RESULT_MAX_MB` allows (`size`
    and `limit` in bytes): the step fails before the runner decodes, masks or stores it."""

    def __init__(self, size: int, limit: int, *, what: str = "the step's result") -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} is {size:,} bytes ({size / 2**20:.1f} MiB) as JSON, over the limit of "
            f"{limit:,} bytes ({limit / 2**20:g} MiB, NOETL_RESULT_MAX_MB): return less (a "
            "summary, a page), or have the tool write the data out (a table, a file) and "
            "return where it went",
            error_type="result_too_large",
            size=size,
            limit=limit,
        )


class UnknownToolKind(NoetlError):
    """No plugin is registered for a tool kind."""


class CatalogError(NoetlError):
    """A playbook could not be registered or found in the catalog."""


class ExecutionNotFound(NoetlError):
    """No execution has the given id."""


class StoreError(NoetlError):
    """The PostgreSQL store is missing, outdated or refused an operation."""


class VersionConflict(StoreError):
    """Another coordinator wrote a decision for the same execution first."""


class ArchiveError(NoetlError):
    """`db prune --archive` could not write an execution's events where it was told to."""


class MessageError(NoetlError):
    """A message on the bus could not be decoded or has no meaning here."""


class CatalogUnavailable(NoetlError):
    """No catalog actor answered a registration (`timed_out`: one is there but too slow)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        self.timed_out = timed_out
        super().__init__(message)
