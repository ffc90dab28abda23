"""The chart starts a working mesh: each rendered pod's command, arguments and environment
run as local processes against the test's NATS and PostgreSQL, and a playbook started
through the API they serve completes.

What a cluster would add is done by hand, as the kubelet would: the environment is built
from the rendered ConfigMap and Secrets, the emptyDir mounted at /tmp becomes a temporary
directory, and each container port is moved to a free one. The hook Job (`db init`) runs
first, to completion, as Helm runs it before the Deployments.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from dockerfile_parse import DockerfileParser

from tests.deploy.chart import (
    DOCKERFILE,
    EXAMPLES,
    Manifest,
    container_env,
    load_values,
    of_kind,
    render,
)
from tests.support.services import free_port, stop_process

BIN = Path(sys.executable).parent
HELLO = Path(__file__).resolve().parents[1] / "fixtures/playbooks/hello_world/hello_world.yaml"


@dataclass
class Pod:
    """One rendered pod run as a process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # container port name → local port
    log: Path


def _image_env() -> dict[str, str]:
    """The ENV of the image's final stage (PATH aside: the local one is used)."""
    env = DockerfileParser(str(DOCKERFILE)).envs
    return {k: v for k, v in env.items() if k != "PATH"}


def as_process(objects: list[Manifest], owner: Manifest, scratch: Path) -> Pod:
    """The process the kubelet would start for `owner`'s (single) container."""
    name = owner["metadata"]["name"]
    spec = owner["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = [*container["command"], *container.get("args", [])]
    # The image puts the CLI on PATH; here it is this virtual environment's.
    argv = [str(BIN / command[0]), *command[1:]]
    env = {**_image_env(), **container_env(objects, container)}
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for mount in container["volumeMounts"]:
        if mount["name"] in empty_dirs:
            local = scratch / name / mount["name"]
            local.mkdir(parents=True)
            env = {
                k: v.replace(mount["mountPath"], str(local), 1)
                if v.startswith(mount["mountPath"])
                else v
                for k, v in env.items()
            }
    ports: dict[str, int] = {}
    for port in container.get("ports", []):
        ports[port["name"]] = free_port()
        env = {
            k: str(ports[port["name"]]) if v == str(port["containerPort"]) else v
            for k, v in env.items()
        }
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return Pod(name, argv, env, ports, scratch / f"{name}.log")


def start(pod: Pod) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        pod.argv,
        env=pod.env,
        stdout=pod.log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def wait_ready(http: aiohttp.ClientSession, base: str, container: Manifest) -> None:
    """Wait until the readiness probe answers 200, then check the liveness probe. Neither
    may need the token: the kubelet sends none."""
    ready, live = (
        container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")
    )
    async with asyncio.timeout(120):
        while True:
            try:
                async with http.get(base + ready) as response:
                    assert response.status not in (401, 404), f"{ready}: {response.status}"
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.3)
    async with http.get(base + live) as response:
        assert response.status == 200, f"liveness {live}: {response.status}"


async def run_hello_world(http: aiohttp.ClientSession, base: str, token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    async with http.post(
        f"{base}/api/playbooks",
        data=HELLO.read_bytes(),
        headers={**auth, "Content-Type": "text/yaml"},
    ) as registered:
        assert registered.status == 201, await registered.text()
        playbook = await registered.json()
    async with http.post(
        f"{base}/api/executions",
        json={"path": playbook["path"], "workload": {"message": "Hi"}},
        headers=auth,
    ) as started:
        assert started.status == 202, await started.text()
        execution_id = (await started.json())["execution_id"]
    async with asyncio.timeout(120):
        while True:
            async with http.get(f"{base}/api/executions/{execution_id}", headers=auth) as got:
                if got.status == 200:
                    doc: dict[str, Any] = await got.json()
                    if doc["status"] != "running":
                        return doc
            await asyncio.sleep(0.3)


async def test_the_rendered_pods_run_a_playbook_through_their_api(
    nats_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    values = load_values(next(p for p in EXAMPLES if p.name == "kind.yaml"))
    values["nats"] = {"enabled": False, "url": nats_url}
    values["config"]["jsReplicas"] = 1  # one test NATS server
    values["secret"] = {
        "existingSecret": "",
        "pgDsn": pg_dsn,
        "apiToken": token,
        "encryptionKey": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    objects = render(values)

    (job,) = of_kind(objects, "Job")
    hook = as_process(objects, job, tmp_path)
    done = await asyncio.to_thread(subprocess.run, hook.argv, env=hook.env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()

    pods = [as_process(objects, d, tmp_path) for d in of_kind(objects, "Deployment")]
    assert sorted(p.name.rsplit("-", 1)[-1] for p in pods) == ["api", "coordinator", "default"]
    procs = [start(pod) for pod in pods]
    try:
        (api,) = [
            (pod, d)
            for pod, d in zip(pods, of_kind(objects, "Deployment"), strict=True)
            if "http" in pod.ports
        ]
        pod, deployment = api
        base = f"http://127.0.0.1:{pod.ports['http']}"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, base, container)
            doc = await run_hello_world(http, base, token)
            assert doc["status"] == "completed", doc
            assert doc["result"] == {"final": "Hi!", "length": 3}
            # `k8s smoke` (what `k8s reset` ends with) passes against the same API.
            smoke = await asyncio.to_thread(
                subprocess.run,
                [str(BIN / "noetl-runtime"), "k8s", "smoke", "--api-url", base],
                env={**os.environ, "NOETL_API_TOKEN": token},
                capture_output=True,
                text=True,
            )
            assert smoke.returncode == 0, smoke.stderr
            assert "completed" in smoke.stdout
        # Pods stop on SIGTERM (a rollout, a drain) and drain cleanly.
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(proc.wait, 60) for proc in procs]
        assert codes == [0, 0, 0], "\n".join(p.log.read_text() for p in pods)
    finally:
        for proc in procs:
            stop_process(proc, signal.SIGKILL)
