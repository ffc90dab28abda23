"""Finding Debian's Chromium for the browser tests, and installing it when allowed.

`python -m tests.browser.chromium` (run by `make test`) installs the `chromium` package with
apt-get when it is missing and the user is root; otherwise it only says how to install it,
and the browser tests fail with the same message (never a silent skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HOW_TO_INSTALL = (
    "the browser tests need Debian's Chromium: run `apt-get update && apt-get install -y "
    "chromium` as root (`make test` does it when run as root), or set NOETL_TEST_CHROMIUM to "
    "a Chromium or Chrome executable"
)


def find() -> str | None:
    """The Chromium executable: NOETL_TEST_CHROMIUM, else `chromium` on the PATH."""
    given = os.environ.get("NOETL_TEST_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("chromium")


def ensure() -> int:
    """Install Chromium with apt-get when it is missing and we are root; 0 when present."""
    if find():
        return 0
    chosen = os.environ.get("NOETL_TEST_CHROMIUM")
    if chosen or os.geteuid() != 0 or not shutil.which("apt-get"):
        problem = f"NOETL_TEST_CHROMIUM={chosen} is not an executable; " if chosen else ""
        print(f"warning: {problem}{HOW_TO_INSTALL}", file=sys.stderr)
        return 0  # the browser tests themselves fail with this message
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing chromium with apt-get (for the browser tests)", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return 0 if find() else 1


if __name__ == "__main__":
    sys.exit(ensure())
