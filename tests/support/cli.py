"""The command line as a user runs it: `noetl-runtime` in a subprocess, on the test's
services."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from noetl.config import Settings

__all__ = ["CLI", "cli", "cli_env"]

#: The installed command line, next to this interpreter.
CLI = str(Path(sys.executable).parent / "noetl-runtime")


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment for the CLI on the services of `settings`: no other
    NOETL_ variable leaks in; `extra` adds or overrides variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env.update(
        NOETL_NATS_URL=str(settings.nats_url),
        NOETL_PG_DSN=str(settings.pg_dsn),
        NOETL_HOME=str(settings.home),
        NOETL_ACK_WAIT=str(settings.ack_wait),
    )
    env.update(extra)
    return env


def cli(settings: Settings, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run the CLI with `args` against the services of `settings` (`cli_env`), capturing
    its output."""
    return subprocess.run(
        [CLI, *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
