"""`noetl-runtime build` and `k8s *`: the exact commands, and clear failures without tools.

No Docker daemon, kind, Helm or cluster can run here. The dry runs are checked as printed;
the real runs go through stand-in executables (shell scripts named docker, kind, helm,
kubectl that record their arguments): they prove that a run executes exactly what the dry
run prints, in order, and stops at the first failure.
"""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from noetl.cli import main
from tests.deploy.chart import CHART, DOCKERFILE, ROOT

KIND_VALUES = str(ROOT / "deploy/helm/examples/kind.yaml")
HELM_INSTALL = (
    f"helm upgrade --install noetl {CHART} --namespace noetl --create-namespace "
    "--dependency-update --wait --timeout 10m"
)
ROLLOUT = "deployment --selector app.kubernetes.io/instance=noetl --namespace noetl"


def cli(*args: str, path: Path | None = None, monkeypatch: pytest.MonkeyPatch) -> Result:
    if path is not None:
        monkeypatch.setenv("PATH", str(path))
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def test_build_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("build", "--engine", "docker", "--no-cache", "--dry-run", monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert lines(result) == [
        f"docker build --file {DOCKERFILE} --tag noetl-runtime:dev --no-cache {ROOT}"
    ]
    tagged = cli(
        "build", "--tag", "reg.example:5000/noetl:1.2", "--dry-run", monkeypatch=monkeypatch
    )
    assert "--tag reg.example:5000/noetl:1.2" in tagged.stdout


def test_deploy_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli(
        *("k8s", "deploy", "-f", KIND_VALUES, "--set", "api.replicas=3"),
        *("--image", "reg.example:5000/noetl:1.2", "--dry-run"),
        monkeypatch=monkeypatch,
    )
    assert result.exit_code == 0, result.output
    assert lines(result) == [
        f"{HELM_INSTALL} --values {KIND_VALUES} --set api.replicas=3 "
        "--set image.repository=reg.example:5000/noetl --set image.tag=1.2"
    ]


def test_redeploy_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("k8s", "redeploy", "--engine", "docker", "--dry-run", monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert lines(result) == [
        f"docker build --file {DOCKERFILE} --tag noetl-runtime:dev {ROOT}",
        "kind load docker-image noetl-runtime:dev --name noetl",
        f"{HELM_INSTALL} --set image.repository=noetl-runtime --set image.tag=dev",
        f"kubectl rollout restart {ROLLOUT}",
        f"kubectl rollout status {ROLLOUT} --timeout 10m",
    ]


def test_redeploy_with_podman_loads_an_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli(
        "k8s",
        "redeploy",
        "--engine",
        "podman",
        "--cluster",
        "dev",
        "--dry-run",
        monkeypatch=monkeypatch,
    )
    build, save, load, *_ = lines(result)
    assert build.startswith("podman build ")
    archive = shlex.split(save)[-2]
    assert save == f"podman save --format docker-archive --output {archive} noetl-runtime:dev"
    assert load == f"KIND_EXPERIMENTAL_PROVIDER=podman kind load image-archive {archive} --name dev"


def test_remove_and_reset_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    remove = cli(
        "k8s", "remove", "--release", "r1", "-n", "ns1", "--dry-run", monkeypatch=monkeypatch
    )
    assert lines(remove) == ["helm uninstall r1 --namespace ns1 --wait --ignore-not-found"]
    reset = cli("k8s", "reset", "--dry-run", monkeypatch=monkeypatch)
    assert reset.exit_code == 0, reset.output
    assert lines(reset) == [
        "helm uninstall noetl --namespace noetl --wait --ignore-not-found",
        HELM_INSTALL,
        f"kubectl rollout status {ROLLOUT} --timeout 10m",
        "noetl-runtime k8s smoke --api-url http://127.0.0.1:8082 --timeout 180",
    ]


@pytest.mark.parametrize(
    ("command", "tools"),
    [
        (["build"], ["docker"]),
        (["k8s", "deploy"], ["helm"]),
        (["k8s", "redeploy"], ["docker", "kind", "helm", "kubectl"]),
        (["k8s", "remove"], ["helm"]),
        (["k8s", "reset"], ["helm", "kubectl"]),
    ],
)
def test_missing_tools_are_named_with_where_to_get_them(
    command: list[str], tools: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli(*command, path=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 2
    named = [line.split(":")[0].strip() for line in result.stderr.splitlines()[1:]]
    assert named == tools
    assert "needs tools that are not installed" in result.stderr
    assert "https://" in result.stderr
    assert result.stdout == ""


def _stand_ins(directory: Path, log: Path, fail: str | None = None) -> None:
    """Executables that append their name and arguments to `log` (`fail` exits 3)."""
    for tool in ("docker", "kind", "helm", "kubectl"):
        script = directory / tool
        code = 3 if tool == fail else 0
        script.write_text(
            f'#!/bin/sh\nfor a in {tool} "$@"; do printf "%s\\0" "$a"; done >> {log}\n'
            f'printf "\\n" >> {log}\nexit {code}\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)


def _recorded(log: Path) -> list[str]:
    return [shlex.join(line.split("\0")[:-1]) for line in log.read_text().splitlines()]


def test_a_run_executes_what_the_dry_run_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["k8s", "redeploy", "-f", KIND_VALUES, "--tag", "noetl-runtime:t1"]
    planned = lines(cli(*args, "--dry-run", monkeypatch=monkeypatch))
    log = tmp_path / "calls.log"
    _stand_ins(tmp_path, log)
    result = cli(*args, path=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert _recorded(log) == planned
    assert [line.removeprefix("+ ") for line in result.stderr.splitlines()] == planned


def test_a_failing_step_stops_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.log"
    _stand_ins(tmp_path, log, fail="kind")
    result = cli("k8s", "redeploy", path=tmp_path, monkeypatch=monkeypatch)
    assert result.exit_code == 1
    assert [call.split()[0] for call in _recorded(log)] == ["docker", "kind"]
    assert "kind load docker-image noetl-runtime:dev --name noetl` exited with 3" in result.stderr


def test_build_uses_podman_when_only_podman_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    podman = tmp_path / "podman"
    podman.write_text("#!/bin/sh\nexit 0\n")
    podman.chmod(0o755)
    result = cli("build", "--dry-run", path=tmp_path, monkeypatch=monkeypatch)
    assert lines(result)[0].startswith("podman build ")
