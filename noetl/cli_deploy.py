"""`noetl-runtime build` and `noetl-runtime k8s deploy|redeploy|remove|reset|smoke`.

Each command is a plan of external commands (docker or podman, kind, helm, kubectl). Before
running one, the command checks that every tool of its plan is installed and, if not, names
each missing tool and where to get it (exit 2). `--dry-run` prints the plan, one exact
command per line, and runs nothing. A failing step stops the plan (exit 1).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, NoReturn

import click

__all__ = ["SMOKE_PLAYBOOK", "build", "k8s"]

DEFAULT_IMAGE: Final = "noetl-runtime:dev"
DEFAULT_RELEASE: Final = "noetl"
DEFAULT_NAMESPACE: Final = "noetl"
DEFAULT_CLUSTER: Final = "noetl"
DEFAULT_API_URL: Final = "http://127.0.0.1:8082"

#: Where to get each tool, said when it is missing.
INSTALL_HINTS: Final = {
    "docker": "Docker Engine or Desktop, https://docs.docker.com/get-docker/ "
    "(or podman, https://podman.io/docs/installation)",
    "podman": "https://podman.io/docs/installation",
    "helm": "Helm 3.13 or later, https://helm.sh/docs/intro/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
}

#: A two-step playbook `k8s smoke` registers and runs: the API, the catalog, a coordinator
#: and a runner of the default pool all take part.
SMOKE_PLAYBOOK: Final = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata:
  name: smoke
  path: noetl/smoke
workload:
  name: kubernetes
workflow:
  - step: start
    tool:
      kind: python
      args:
        name: "{{ workload.name }}"
      code: |
        result = {"greeting": "hello " + name}
    next:
      - step: end
  - step: end
    tool:
      kind: python
      args:
        greeting: "{{ start.greeting }}"
      code: |
        result = {"greeting": greeting, "ok": True}
"""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@dataclass(frozen=True)
class Step:
    """One command of a plan; `action` runs it in this process instead of a subprocess."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    action: Callable[[], int] | None = None

    def line(self) -> str:
        """The exact shell command, as `--dry-run` prints it."""
        prefix = [f"{name}={shlex.quote(value)}" for name, value in self.env.items()]
        return " ".join([*prefix, shlex.join(self.argv)])


def _tools(steps: Iterable[Step]) -> list[str]:
    """The external tools a plan runs, in first-use order."""
    seen: dict[str, None] = {}
    for step in steps:
        if step.action is None:
            seen.setdefault(step.argv[0], None)
    return list(seen)


def missing_tools(tools: Iterable[str]) -> list[str]:
    """The tools not found on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def _execute(what: str, steps: Sequence[Step], dry_run: bool) -> None:
    """Print (dry run) or run the plan: tools checked first, each step echoed, the first
    failure ends it."""
    if dry_run:
        for step in steps:
            click.echo(step.line())
        return
    missing = missing_tools(_tools(steps))
    if missing:
        lines = "\n".join(f"  {tool}: {INSTALL_HINTS.get(tool, 'install it')}" for tool in missing)
        _fail(f"`{what}` needs tools that are not installed:\n{lines}", 2)
    for step in steps:
        click.echo(f"+ {step.line()}", err=True)
        if step.action is not None:
            code = step.action()
        else:
            code = subprocess.run(step.argv, env={**os.environ, **step.env}, check=False).returncode
        if code != 0:
            _fail(f"`{step.line()}` exited with {code}", 1)


# -- where things are ---------------------------------------------------------------------


def source_root(given: str | None) -> Path:
    """The source checkout holding deploy/: `given`, else the one this package runs from,
    else the current directory."""
    candidates = [Path(given)] if given else [Path(__file__).resolve().parents[1], Path.cwd()]
    for root in candidates:
        if (root / "deploy" / "docker" / "Dockerfile").is_file():
            return root.resolve()
    _fail(
        f"no deploy/docker/Dockerfile under {', '.join(str(c) for c in candidates)}: "
        "run from a noetl-runtime source checkout or pass --source",
        2,
    )


def _engine(given: str | None) -> str:
    """docker, or podman when only podman is installed (docker when neither is)."""
    if given:
        return given
    if shutil.which("docker") is None and shutil.which("podman") is not None:
        return "podman"
    return "docker"


def _split_image(image: str) -> tuple[str, str]:
    """`repo[:tag]` → (repo, tag); a registry port (`host:5000/repo`) is not a tag."""
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repo, tag


# -- plans ----------------------------------------------------------------------------------


def build_steps(root: Path, engine: str, tag: str, no_cache: bool) -> list[Step]:
    """Build the image from deploy/docker/Dockerfile with the checkout as context."""
    argv = [engine, "build", "--file", str(root / "deploy/docker/Dockerfile"), "--tag", tag]
    if no_cache:
        argv.append("--no-cache")
    return [Step((*argv, str(root)))]


def kind_load_steps(engine: str, image: str, cluster: str) -> list[Step]:
    """Copy a local image into the kind cluster's nodes."""
    if engine == "docker":
        return [Step(("kind", "load", "docker-image", image, "--name", cluster))]
    archive = str(Path(tempfile.gettempdir()) / "noetl-runtime-image.tar")
    provider = {"KIND_EXPERIMENTAL_PROVIDER": "podman"}
    return [
        Step((engine, "save", "--format", "docker-archive", "--output", archive, image)),
        Step(("kind", "load", "image-archive", archive, "--name", cluster), env=provider),
    ]


@dataclass(frozen=True)
class Release:
    """The Helm release a k8s command works on; `source` is the checkout with its chart."""

    name: str
    namespace: str
    source: Path
    values: tuple[str, ...] = ()
    assignments: tuple[str, ...] = ()
    image: str | None = None
    timeout: str = "10m"

    @property
    def chart(self) -> Path:
        return self.source / "deploy/helm/noetl-runtime"

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"

    def install(self) -> Step:
        """`helm upgrade --install`: the pre-install/pre-upgrade hook runs `db init`."""
        argv = ["helm", "upgrade", "--install", self.name, str(self.chart)]
        argv += ["--namespace", self.namespace, "--create-namespace"]
        # Helm refuses a chart whose declared dependencies (the optional NATS chart) are not
        # in charts/, enabled or not; this fetches them.
        argv += ["--dependency-update", "--wait", "--timeout", self.timeout]
        for file in self.values:
            argv += ["--values", file]
        for assignment in self.assignments:
            argv += ["--set", assignment]
        if self.image:
            repo, tag = _split_image(self.image)
            argv += ["--set", f"image.repository={repo}", "--set", f"image.tag={tag}"]
        return Step(tuple(argv))

    def uninstall(self) -> Step:
        argv = ("helm", "uninstall", self.name, "--namespace", self.namespace)
        return Step((*argv, "--wait", "--ignore-not-found"))

    def restart(self) -> list[Step]:
        """Restart every Deployment of the release (a reloaded image under the same tag) and
        wait until each has rolled out."""
        scope = ("deployment", "--selector", self.selector, "--namespace", self.namespace)
        return [
            Step(("kubectl", "rollout", "restart", *scope)),
            Step(("kubectl", "rollout", "status", *scope, "--timeout", self.timeout)),
        ]


def smoke_step(api_url: str, timeout: float, token: str | None) -> Step:
    """Run the smoke playbook through the API (in this process)."""
    argv = ("noetl-runtime", "k8s", "smoke", "--api-url", api_url, "--timeout", f"{timeout:g}")
    return Step(argv, action=lambda: run_smoke(api_url, token, timeout))


# -- the smoke run ------------------------------------------------------------------------


def _call(
    url: str,
    token: str | None,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, text


def run_smoke(api_url: str, token: str | None, timeout: float) -> int:
    """Register SMOKE_PLAYBOOK through the API, start it and wait for its end: 0 when it
    completed with the expected result, 1 otherwise (with the reason on stderr)."""
    base = api_url.rstrip("/")
    try:
        status, reply = _call(
            f"{base}/api/playbooks", token, "POST", SMOKE_PLAYBOOK.encode(), "text/yaml"
        )
        if status not in (200, 201):
            click.echo(f"smoke: registering the playbook answered {status}: {reply}", err=True)
            return 1
        body = json.dumps({"path": reply["path"], "version": reply["version"]}).encode()
        status, reply = _call(f"{base}/api/executions", token, "POST", body)
        if status != 202:
            click.echo(f"smoke: starting the execution answered {status}: {reply}", err=True)
            return 1
        execution_id = reply["execution_id"]
        deadline = time.monotonic() + timeout
        doc: Any = None
        while time.monotonic() < deadline:
            status, doc = _call(f"{base}/api/executions/{execution_id}", token)
            # 404: accepted but not yet recorded by its coordinator.
            if status == 200 and doc["status"] != "running":
                break
            time.sleep(0.5)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"smoke: cannot reach the API at {base}: {exc}", err=True)
        return 1
    if not isinstance(doc, dict) or doc.get("status") != "completed":
        state = doc.get("status") if isinstance(doc, dict) else "not recorded"
        click.echo(f"smoke: execution {execution_id} is {state} after {timeout:g}s", err=True)
        return 1
    if doc.get("result", {}).get("greeting") != "hello kubernetes":
        click.echo(f"smoke: unexpected result {doc.get('result')}", err=True)
        return 1
    click.echo(f"smoke: execution {execution_id} of noetl/smoke completed")
    return 0


# -- commands -------------------------------------------------------------------------------

_dry_run = click.option(
    "--dry-run", is_flag=True, help="Print the exact commands instead of running them."
)
_source = click.option(
    "--source", type=click.Path(file_okay=False), help="Source checkout (default: found)."
)
_engine_option = click.option(
    "--engine",
    type=click.Choice(["docker", "podman"]),
    help="Container tool (default: docker, or podman when only podman is installed).",
)


@click.command()
@click.option("--tag", default=DEFAULT_IMAGE, show_default=True, help="Image name and tag.")
@click.option("--no-cache", is_flag=True, help="Build every layer anew.")
@_engine_option
@_source
@_dry_run
def build(tag: str, no_cache: bool, engine: str | None, source: str | None, dry_run: bool) -> None:
    """Build the image (deploy/docker/Dockerfile): one image for every role."""
    _execute("build", build_steps(source_root(source), _engine(engine), tag, no_cache), dry_run)


def _release_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the release options to a command, which receives them as one `Release` (its
    image unset), then `dry_run` and its own options."""

    @functools.wraps(command)
    def run(
        release: str,
        namespace: str,
        values: tuple[str, ...],
        assignments: tuple[str, ...],
        timeout: str,
        source: str | None,
        dry_run: bool,
        **rest: Any,
    ) -> None:
        plan = Release(
            name=release,
            namespace=namespace,
            source=source_root(source),
            values=values,
            assignments=assignments,
            timeout=timeout,
        )
        command(plan, dry_run, **rest)

    options = [
        click.option("--release", default=DEFAULT_RELEASE, show_default=True),
        click.option("--namespace", "-n", default=DEFAULT_NAMESPACE, show_default=True),
        click.option(
            "--values",
            "-f",
            "values",
            multiple=True,
            type=click.Path(exists=True, dir_okay=False),
            help="Values file (repeatable).",
        ),
        click.option("--set", "assignments", multiple=True, help="key=value (repeatable)."),
        click.option("--timeout", default="10m", show_default=True, help="Helm/kubectl wait."),
        _source,
        _dry_run,
    ]
    for option in reversed(options):
        run = option(run)
    return run


@click.group()
def k8s() -> None:
    """Deploy to Kubernetes with the Helm chart deploy/helm/noetl-runtime."""


@k8s.command()
@_release_options
@click.option("--image", help="Image to deploy, e.g. noetl-runtime:dev (default: the chart's).")
def deploy(release: Release, dry_run: bool, image: str | None) -> None:
    """Install or upgrade the release (helm upgrade --install; the hook runs `db init`)."""
    _execute("k8s deploy", [replace(release, image=image).install()], dry_run)


@k8s.command()
@_release_options
@click.option("--tag", default=DEFAULT_IMAGE, show_default=True, help="Image name and tag.")
@click.option("--no-cache", is_flag=True, help="Build every layer anew.")
@click.option("--cluster", default=DEFAULT_CLUSTER, show_default=True, help="kind cluster.")
@_engine_option
def redeploy(
    release: Release, dry_run: bool, tag: str, no_cache: bool, cluster: str, engine: str | None
) -> None:
    """Rebuild the image, load it into kind, upgrade the release and restart its pods."""
    tool = _engine(engine)
    plan = replace(release, image=tag)
    steps = [
        *build_steps(release.source, tool, tag, no_cache),
        *kind_load_steps(tool, tag, cluster),
        plan.install(),
        *plan.restart(),
    ]
    _execute("k8s redeploy", steps, dry_run)


@k8s.command()
@click.option("--release", default=DEFAULT_RELEASE, show_default=True)
@click.option("--namespace", "-n", default=DEFAULT_NAMESPACE, show_default=True)
@_source
@_dry_run
def remove(release: str, namespace: str, source: str | None, dry_run: bool) -> None:
    """Uninstall the release (the database and NATS streams are kept)."""
    plan = Release(name=release, namespace=namespace, source=source_root(source))
    _execute("k8s remove", [plan.uninstall()], dry_run)


_api_url = click.option("--api-url", default=DEFAULT_API_URL, show_default=True, help="The API.")
_token = click.option("--token", envvar="NOETL_API_TOKEN", help="API token (NOETL_API_TOKEN).")


@k8s.command()
@_release_options
@click.option("--image", help="Image to deploy (default: the chart's).")
@_api_url
@_token
@click.option("--smoke-timeout", default=180.0, show_default=True, help="Seconds to wait.")
def reset(
    release: Release,
    dry_run: bool,
    image: str | None,
    api_url: str,
    token: str | None,
    smoke_timeout: float,
) -> None:
    """Uninstall and install the release again (its pre-install hook re-applies the schema
    with `db init`), wait for every Deployment, then run the smoke playbook through the API."""
    plan = replace(release, image=image)
    steps = [
        plan.uninstall(),
        plan.install(),
        plan.restart()[1],
        smoke_step(api_url, smoke_timeout, token),
    ]
    _execute("k8s reset", steps, dry_run)


@k8s.command()
@_api_url
@_token
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait.")
def smoke(api_url: str, token: str | None, timeout: float) -> None:
    """Register and run a two-step playbook through the API; exit 0 once it completed."""
    sys.exit(run_smoke(api_url, token, timeout))
