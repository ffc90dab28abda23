"""What every command of the `noetl-runtime` CLI shares: settings from the root flags and the
environment, running a command's coroutine, mapping our exceptions to exit codes, `--json`
output and rich tables, and opening a client or a store.

Exit codes (every command): `EXIT_OK` 0 success; `EXIT_FAILED` 1 an execution failed or was
cancelled, something asked for does not exist, or a runtime error (any other NoetlError);
`EXIT_USAGE` 2 invalid playbook (PlaybookError), usage (click) or configuration
(ConfigError: bad flags or environment, invalid data, an unusable encryption key);
`EXIT_INTERRUPTED` 130 Ctrl-C.

Adding the commands of an area: write `noetl/cli_<area>.py` holding one click group (or
command) built only on this module (never import `noetl.cli`: it imports the areas), e.g.

    import click
    from noetl.cli_core import EXIT_OK, json_option, print_json, print_table, run_command, settings
    from noetl.cli_core import with_client
    from noetl.client import Client

    @click.group()
    def widget() -> None:
        \"\"\"Manage widgets.\"\"\"

    @widget.command(name="list")
    @json_option()
    def list_widgets(as_json: bool) -> None:
        \"\"\"List widgets.\"\"\"

        async def body(client: Client) -> int:
            rows = await client.store.list_widgets()
            if as_json:
                print_json(rows)
            else:
                print_table(("name", "size"), [(r["name"], str(r["size"])) for r in rows])
            return EXIT_OK

        run_command(with_client(settings(), body))

then register it with one line at the end of `noetl/cli.py`: `main.add_command(widget)`.
Commands read the root flags (`--nats-url`, `--pg-dsn`, `--home`) through `settings()`; a
command raises NoetlError subclasses (or returns an exit code) and lets `run_command` turn them
into a message on stderr and the documented code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click
import msgspec
from rich.console import Console
from rich.table import Table

from noetl import local
from noetl.client import Client
from noetl.config import Settings
from noetl.errors import ConfigError, NoetlError, PlaybookError
from noetl.store import Store

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliState",
    "err",
    "fail",
    "json_option",
    "one_line_reconnects",
    "out",
    "print_json",
    "print_table",
    "read_json",
    "run_command",
    "say",
    "settings",
    "with_client",
    "with_store",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

# Results go to stdout, everything said to the user (progress, notices, errors) to stderr,
# so `--json` output can be piped.
err: Final = Console(stderr=True, highlight=False, soft_wrap=True)
out: Final = Console(highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


class CliState(msgspec.Struct):
    """The root command's options (`--nats-url`, `--pg-dsn`, `--home`), None when not given."""

    overrides: dict[str, Any]

    def settings(self) -> Settings:
        return Settings.from_env(**self.overrides)


def settings() -> Settings:
    """Settings from the environment and the root command's flags (flags win)."""
    root = click.get_current_context().find_root()
    state = root.obj
    return state.settings() if isinstance(state, CliState) else Settings.from_env()


# -- output ---------------------------------------------------------------------------------


def say(line: str) -> None:
    """Tell the user `line` on stderr, verbatim (no rich markup)."""
    err.print(line, markup=False)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    say(f"error: {message}")
    sys.exit(code)


def print_json(value: Any) -> None:
    """`value` as indented JSON on stdout (what `--json` prints)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None
) -> None:
    """A rich table on a terminal; tab-separated lines (a header line, then one per row,
    nothing cut) when stdout is not one, so pipes and scripts get every id whole. Id
    columns never wrap nor shrink."""
    if not out.is_terminal:
        lines = ["\t".join(columns), *("\t".join(_cell(c) for c in row) for row in rows)]
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        return
    table = Table(title=title)
    for name in columns:
        is_id = name == "id" or name.endswith("_id")
        table.add_column(name, no_wrap=is_id, overflow="fold", min_width=19 if is_id else None)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _cell(value: str) -> str:
    return value.replace("\t", " ").replace("\n", " ")


def json_option(help: str = "Print JSON.") -> Callable[[F], F]:
    """The `--json` flag, passed to the command as `as_json`."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def read_json(value: str, option: str, *, stdin: bool = False) -> Any:
    """An option's JSON: the text itself, `@file.json`, or (when `stdin`) `@-` for standard
    input. Raises click.UsageError (exit 2) naming `option`."""
    text = value
    if stdin and value == "@-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"{option} {value}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"{option} is not valid JSON: {exc}") from exc


class _OneLine(logging.Filter):
    """A connection failure logged with its traceback becomes one line: what failed and
    why. Other errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _connection_failure(exc):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def _connection_failure(exc: BaseException) -> bool:
    import asyncpg
    import nats.errors

    return isinstance(
        exc,
        OSError
        | nats.errors.Error
        | asyncpg.CannotConnectNowError
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.InterfaceError,
    )


def one_line_reconnects() -> None:
    """While a server is away, each reconnection attempt of the NATS and PostgreSQL clients
    (and each sweep failing for it) logs one line instead of a traceback."""
    # Filters of a logger see only its own records, so each logger that reports them.
    one_line = _OneLine()
    for name in ("nats.aio.client", "asyncpg.pool", "noetl.bus", "noetl.mesh", *_ACTORS):
        logging.getLogger(name).addFilter(one_line)


_ACTORS: Final = ("noetl.catalog", "noetl.coordinator", "noetl.runner", "noetl.api")


# -- running --------------------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (less CPU per message on the mesh's hot
    path: see documentation/docs/operations/performance.md), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_command(coro: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a command's coroutine and exit with the code it returns; our exceptions become a
    message on stderr and their documented exit code (see the module docstring)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            code = runner.run(coro)
    except PlaybookError as exc:
        for problem in exc.problems:
            say(problem)
        sys.exit(EXIT_USAGE)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except NoetlError as exc:
        fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code)


async def with_client(
    settings: Settings, body: Callable[[Client], Awaitable[int]], *, relaxed: bool = False
) -> int:
    """Connect a client (NATS and PostgreSQL; embedded servers in local mode), run `body`,
    close. `relaxed` when this process may host a runner."""
    client = await Client.connect(settings, announce=say, relaxed=relaxed)
    try:
        return await body(client)
    finally:
        try:
            await client.close()
        except Exception as exc:
            if not _connection_failure(exc):
                raise
            # The servers went away (`down --force`): nothing is left to flush.
            say(f"noetl: closing the connections: {type(exc).__name__}: {exc}")


async def with_store(settings: Settings, body: Callable[[Store], Awaitable[int]]) -> int:
    """Connect to PostgreSQL only (the embedded one in local mode), run `body`, close. The
    schema is left as it is: `body` initialises or checks it as it needs."""
    services = await asyncio.to_thread(local.resolve, settings, announce=say)
    store = await Store.connect(services.pg_dsn, max_size=2)
    try:
        return await body(store)
    finally:
        await store.close()
