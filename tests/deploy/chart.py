"""The Helm chart rendered by Helm's own engine (helm-python-sdk: Helm's Go library, no
`helm` binary), and the rendered objects as a pod would see them."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "noetl-runtime"
EXAMPLES = sorted((ROOT / "deploy" / "helm" / "examples").glob("*.yaml"))
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
RELEASE = "noetl"
NAMESPACE = "noetl"

Manifest = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    """A values file as Helm reads it."""
    return helm.values_from_yaml(path.read_text(encoding="utf-8"))


def kube_version() -> str:
    """The minimum Kubernetes version the chart declares (`kubeVersion: ">=1.27.0-0"`)."""
    declared = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    found = re.match(r">=\s*v?(\d+\.\d+\.\d+)", declared)
    assert found, f"kubeVersion {declared!r} has no lower bound"
    return found.group(1)


def render(values: dict[str, Any]) -> list[Manifest]:
    """Validate `values` against values.schema.json, render an install of the release and
    return every object (NOTES.txt aside)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(values))
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".txt"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(owner, pod spec) of every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]["spec"]


def container_env(objects: list[Manifest], container: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet builds it: `envFrom` ConfigMaps and
    Secrets, then `env` (values, secretKeyRef, configMapKeyRef; an optional missing key is
    left out, a required one fails the test)."""

    def data(kind: str, name: str) -> dict[str, str]:
        obj = named(objects, kind, name)
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
        return dict(obj.get("data", {}))

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(data("ConfigMap", source["configMapRef"]["name"]))
        else:
            env.update(data("Secret", source["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        kind, key_ref = (
            ("Secret", ref["secretKeyRef"])
            if "secretKeyRef" in ref
            else ("ConfigMap", ref["configMapKeyRef"])
        )
        values = data(kind, key_ref["name"])
        if key_ref["key"] in values:
            env[var["name"]] = values[key_ref["key"]]
        else:
            assert key_ref.get("optional"), f"{var['name']}: no key {key_ref['key']}"
    return env
