"""The Helm chart: lint, schema, render with every values file, every object valid for the
Kubernetes version the chart declares, and what matters in them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.chart import (
    CHART,
    DOCKERFILE,
    EXAMPLES,
    RELEASE,
    Manifest,
    kube_version,
    load_values,
    named,
    of_kind,
    pod_specs,
    render,
)

FULLNAME = f"{RELEASE}-noetl-runtime"
INLINE_SECRET = {
    "existingSecret": "",
    "pgDsn": "postgresql://noetl:pw@db.example:5432/noetl",
    "apiToken": "token-for-the-chart-test",
    "encryptionKey": "bm9ldGwtY2hhcnQtdGVzdC1rZXktMzItYnl0ZXMhISE=",
}
VALUE_SETS = {"defaults": {}, **{path.name: load_values(path) for path in EXAMPLES}}
WARNING, ERROR = 2, 3

# KEDA's ScaledObject is a custom resource kubernetes-validate has no schema for: the
# fields this chart sets, as KEDA v2 defines them.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "nats-jetstream"},
                            "metadata": {
                                "type": "object",
                                "required": [
                                    "natsServerMonitoringEndpoint",
                                    "account",
                                    "stream",
                                    "consumer",
                                    "lagThreshold",
                                ],
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES} >= {"kind.yaml", "production.yaml"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_finds_no_error(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], kube_version=f"v{kube_version()}")
    assert report["errors"] == []
    warnings = [m["error"] for m in report["messages"] if m["severity"] >= WARNING]
    # The optional NATS chart is fetched by `helm upgrade --dependency-update` into charts/
    # (not committed): lint may see it missing, and nothing else.
    assert set(warnings) <= {"chart directory is missing these dependencies: nats"}


def test_the_nats_dependency_is_optional() -> None:
    with helm.Chart.load(CHART) as chart:
        (dependency,) = chart.metadata["dependencies"]
    assert dependency["name"] == "nats"
    assert dependency["condition"] == "nats.enabled"
    assert (
        VALUE_SETS["defaults"] == {}
        and load_values(CHART / "values.yaml")["nats"]["enabled"] is False
    )


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_object_is_valid_for_the_declared_kubernetes(name: str) -> None:
    objects = render(VALUE_SETS[name])
    assert objects
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
        else:
            kubernetes_validate.validate(obj, kube_version(), strict=True)


def test_a_bad_object_would_be_caught() -> None:
    (deployment, *_) = of_kind(render({}), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kube_version(), strict=True)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"secret": {"existingSecret": ""}}, "/secret/pgDsn"),
        ({"secret": {**INLINE_SECRET, "pgDsn": "mysql://x@y/z"}}, "/secret/pgDsn"),
        ({"api": {"replicas": -1}}, "/api/replicas"),
        ({"api": {"service": {"type": "Ingress"}}}, "/api/service/type"),
        ({"runners": {"pools": {"Heavy_Pool": {"replicas": 1, "concurrency": 1}}}}, "Heavy_Pool"),
        ({"runners": {"pools": {"heavy": {"replicas": 1}}}}, "concurrency"),
        ({"runners": {"kindPools": {"duckdb": "heavy.x"}}}, "kindPools"),
        ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
        ({"nats": {"enabled": False, "url": ""}}, "/nats/url"),
        ({"config": {"partitions": 0}}, "/config/partitions"),
        ({"api": {"replica": 2}}, "replica"),
    ],
)
def test_the_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
        with pytest.raises(helm.HelmValuesError, match=complaint):
            chart.validate_schema(merged)


def test_a_bad_values_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("api:\n  port: http\nrunners:\n  pools:\n    default: {replicas: many}\n")
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(chart.merge_values(load_values(bad)))
    assert "/api/port" in str(caught.value)
    report = helm.lint(CHART, load_values(bad))
    assert any("/api/port" in error for error in report["errors"])


def test_secret_values_beside_an_existing_secret_are_refused() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match="existingSecret"):
        chart.render({"secret": {"pgDsn": "postgresql://x@y/z"}}, name=RELEASE)


# -- what the objects say ------------------------------------------------------------------


def _container(obj: Manifest) -> Manifest:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


RUNNER = ["up", "--role", "runner"]


def test_each_role_runs_the_image_entry_point_with_its_role() -> None:
    objects = render(VALUE_SETS["production.yaml"])
    entrypoint = DockerfileParser(str(DOCKERFILE)).structure
    (entry,) = [i["value"] for i in entrypoint if i["instruction"] == "ENTRYPOINT"]
    roles = {
        f"{FULLNAME}-api": ["up", "--role", "api", "--role", "catalog", "--api-host", "0.0.0.0"],
        f"{FULLNAME}-coordinator": ["up", "--role", "coordinator"],
        f"{FULLNAME}-runner-default": [*RUNNER, "--pool", "default", "--concurrency", "32"],
        f"{FULLNAME}-runner-heavy": [*RUNNER, "--pool", "heavy", "--concurrency", "4"],
    }
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    assert set(deployments) == set(roles)
    for name, args in roles.items():
        container = _container(deployments[name])
        assert container["command"] == ["noetl-runtime"] and entry == '["noetl-runtime"]'
        assert container["args"] == args
        assert container["image"] == "ghcr.io/example/noetl-runtime:0.1.0"
    pools = {
        name: {e["name"]: e.get("value") for e in _container(deployments[name])["env"]}
        for name in roles
        if "runner" in name
    }
    assert pools[f"{FULLNAME}-runner-heavy"]["NOETL_RUNNER_POOL"] == "heavy"
    assert pools[f"{FULLNAME}-runner-heavy"]["NOETL_RUNNER_CONCURRENCY"] == "4"
    assert pools[f"{FULLNAME}-runner-default"]["NOETL_RUNNER_POOL"] == "default"
    # The kind-to-pool map reaches every role through the ConfigMap.
    config = named(objects, "ConfigMap", FULLNAME)["data"]
    assert config["NOETL_RUNNER_POOLS"] == "duckdb=heavy"


def test_replicas_and_resources_come_from_the_values() -> None:
    objects = render(VALUE_SETS["production.yaml"])
    coordinator = named(objects, "Deployment", f"{FULLNAME}-coordinator")
    assert coordinator["spec"]["replicas"] == 3
    assert _container(coordinator)["resources"]["limits"]["memory"] == "2Gi"
    # Pools scaled by KEDA leave the count to it: an upgrade must not reset it.
    assert "replicas" not in named(objects, "Deployment", f"{FULLNAME}-runner-heavy")["spec"]
    kind = render(VALUE_SETS["kind.yaml"])
    assert named(kind, "Deployment", f"{FULLNAME}-runner-default")["spec"]["replicas"] == 1


def test_the_api_is_probed_and_served_on_8082() -> None:
    objects = render({})
    api = _container(named(objects, "Deployment", f"{FULLNAME}-api"))
    assert api["ports"] == [{"name": "http", "containerPort": 8082, "protocol": "TCP"}]
    assert api["livenessProbe"]["httpGet"] == {"path": "/api/health", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/api/ready", "port": "http"}
    service = named(objects, "Service", f"{FULLNAME}-api")
    assert service["spec"]["ports"][0]["port"] == 8082
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"
    config = named(objects, "ConfigMap", FULLNAME)["data"]
    assert config["NOETL_API_PORT"] == "8082"
    # In a pod, loopback is the pod itself: http tools may not reach it (the egress policy).
    assert config["NOETL_HTTP_DENY"] == "127.0.0.0/8,::1"
    kind = named(render(VALUE_SETS["kind.yaml"]), "Service", f"{FULLNAME}-api")
    assert kind["spec"]["type"] == "NodePort" and kind["spec"]["ports"][0]["nodePort"] == 30082


def test_the_schema_hook_runs_db_init_before_install_and_upgrade() -> None:
    objects = render({"secret": INLINE_SECRET})
    job = named(objects, "Job", f"{FULLNAME}-db-init")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = _container(job)
    assert [*container["command"], *container["args"]] == ["noetl-runtime", "db", "init"]
    # The release's Secret does not exist yet when a pre-install hook runs: the Job reads a
    # hook Secret created just before it.
    (dsn,) = [e for e in container["env"] if e["name"] == "NOETL_PG_DSN"]
    hook_secret = named(objects, "Secret", dsn["valueFrom"]["secretKeyRef"]["name"])
    hook = hook_secret["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    # With an existing Secret the Job reads it directly.
    existing = render({})
    (dsn,) = [
        e
        for e in _container(named(existing, "Job", f"{FULLNAME}-db-init"))["env"]
        if e["name"] == "NOETL_PG_DSN"
    ]
    assert dsn["valueFrom"]["secretKeyRef"]["name"] == "noetl-runtime"
    assert of_kind(existing, "Secret") == []


def test_every_role_has_a_disruption_budget() -> None:
    objects = render(VALUE_SETS["production.yaml"])
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "PodDisruptionBudget")}
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        assert budgets[name]["selector"] == deployment["spec"]["selector"], name
        assert budgets[name]["maxUnavailable"] == 1


def test_every_pod_runs_as_non_root_on_a_read_only_root() -> None:
    for name, values in VALUE_SETS.items():
        merged = values if name != "defaults" else {}
        for owner, spec in pod_specs(render(merged)):
            where = f"{name}: {owner['kind']}/{owner['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["runAsUser"] > 0, where
            assert spec["automountServiceAccountToken"] is False, where
            (container,) = spec["containers"]
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            # The one writable place: /tmp, an emptyDir (NOETL_HOME lives there).
            (mount,) = container["volumeMounts"]
            (volume,) = spec["volumes"]
            assert mount["mountPath"] == "/tmp" and "emptyDir" in volume, where


def test_secrets_reach_the_pods_by_reference_and_only_where_needed() -> None:
    variables = {
        "NOETL_PG_DSN": "pg-dsn",
        "NOETL_API_TOKEN": "api-token",
        "NOETL_ENCRYPTION_KEY": "encryption-key",
    }
    needs = {
        "api": set(variables),  # serves the token-guarded API and the credentials routes
        "coordinator": {"NOETL_PG_DSN"},  # secrets never reach a coordinator
        "runner-default": {"NOETL_PG_DSN", "NOETL_ENCRYPTION_KEY"},  # decrypts credentials
    }
    for values, secret_name in (({}, "noetl-runtime"), ({"secret": INLINE_SECRET}, FULLNAME)):
        objects = render(values)
        for deployment in of_kind(objects, "Deployment"):
            role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
            env = {e["name"]: e for e in _container(deployment)["env"]}
            assert set(env) & set(variables) == needs[role], role
            for variable in needs[role]:
                assert "value" not in env[variable]
                ref = env[variable]["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == (secret_name, variables[variable])
        config = named(objects, "ConfigMap", FULLNAME)["data"]
        assert not any(INLINE_SECRET["pgDsn"] in str(v) for v in config.values())
    inline = render({"secret": INLINE_SECRET})
    assert set(named(inline, "Secret", FULLNAME)["data"]) == set(variables.values())


def test_runner_pools_scale_on_jetstream_consumer_lag() -> None:
    objects = render(VALUE_SETS["production.yaml"])
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"] for s in of_kind(objects, "ScaledObject")
    }
    assert set(scaled) == {f"{FULLNAME}-runner-default", f"{FULLNAME}-runner-heavy"}
    heavy = scaled[f"{FULLNAME}-runner-heavy"]
    (trigger,) = heavy["triggers"]
    assert trigger["metadata"]["stream"] == "NOETL_CMD"
    assert trigger["metadata"]["consumer"] == "runner-heavy"
    assert (heavy["minReplicaCount"], heavy["maxReplicaCount"]) == (0, 5)
    assert of_kind(render({}), "ScaledObject") == []  # KEDA is off by default


def test_nats_is_external_unless_the_nats_chart_is_enabled() -> None:
    production = named(render(VALUE_SETS["production.yaml"]), "ConfigMap", FULLNAME)["data"]
    assert production["NOETL_NATS_URL"].count("nats://") == 3
    assert production["NOETL_JS_REPLICAS"] == "3"
    kind = named(render(VALUE_SETS["kind.yaml"]), "ConfigMap", FULLNAME)["data"]
    assert kind["NOETL_NATS_URL"] == "nats://noetl-nats:4222"
