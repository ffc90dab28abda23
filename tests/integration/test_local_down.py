"""`up` on the embedded servers of a home: one log line per execution, `down` refused while
it runs (then `down --force`), and one line per reconnection attempt once they are gone."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import fixture
from tests.support.cli import CLI
from tests.support.services import free_port, local_mode_stopped

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def home(noetl_home: Path) -> Iterator[Path]:
    with local_mode_stopped(noetl_home):
        yield noetl_home


def test_down_refuses_while_up_runs_and_reconnects_log_one_line(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env.update(NOETL_HOME=str(home), NOETL_API_PORT=str(free_port()), NO_COLOR="1")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    log = home / "up.log"
    with open(log, "w") as sink:
        up = subprocess.Popen([CLI, "up"], env=env, stderr=sink, stdout=sink)
    try:
        deadline = time.monotonic() + 120
        while "mesh up" not in log.read_text():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert cli("run", str(fixture("hello_world"))).returncode == 0
        refused = cli("down")
        assert refused.returncode == 1
        assert "in use by a running mesh" in refused.stderr and "--force" in refused.stderr
        assert "stopped" in cli("down", "--force").stderr
        time.sleep(5)  # `up` keeps trying to reconnect meanwhile
    finally:
        up.terminate()
        up.wait(60)
    lines = log.read_text().splitlines()
    assert any(line.endswith("started") and "noetl: execution" in line for line in lines)
    assert any(line.endswith("completed") and "noetl: execution" in line for line in lines)
    # One line per reconnection attempt, whatever the event loop calls the refusal.
    assert any(line.startswith("nats: encountered error") for line in lines), "\n".join(lines)
    assert not any(line.startswith("Traceback") for line in lines), "\n".join(lines)
