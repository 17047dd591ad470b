"""The Helm chart rendered by real `helm` (no cluster): lint, structure, labels, RBAC rules,
Pod Security "restricted", the values schema and the env contract with settings.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraf_operator.rbac_rules import RULES
from loraf_operator.settings import Settings
from tests.unit.chart_tools import CHART, ROOT, by_kind, env_of, helm, helm_binary, one, render

pytestmark = pytest.mark.skipif(
    helm_binary() is None, reason="helm not fetched yet: run hack/fetch-bins.sh"
)

NAMESPACED = {"rbac.namespaced": "true", "operator.namespaces": "{team-a,team-b}"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)


def rule_set() -> list[dict[str, Any]]:
    return [r.to_dict() for r in RULES]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of Pod Security Standards "restricted" (v1.34) that apply to a pod spec."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        allowed = {
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        }
        if not kinds <= allowed:
            out.append(f"volume {v['name']}: {kinds - allowed}")
    containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{name}: hostPort")
    return out


def test_generated_files_are_current() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart_gen.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "values",
    [
        {},
        NAMESPACED,
        {
            "replicas": "3",
            "leaderElection.enabled": "true",
            "metrics.serviceMonitor.enabled": "true",
        },
    ],
)
def test_helm_lint_is_clean(values: dict[str, str]) -> None:
    args = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    res = helm("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in res.stdout, res.stdout


def test_default_render_structure_and_labels() -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    for o in objs:
        md = o["metadata"]
        assert DNS_LABEL.match(md["name"]) and len(md["name"]) <= 63, md["name"]
        for label in COMMON_LABELS:
            assert md["labels"].get(label), (o["kind"], label)
        if not o["kind"].startswith(("Cluster", "ValidatingAdmission")):
            assert md["namespace"] == "loraf-system"
    deploy = one(objs, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert one(objs, "Service")["spec"]["selector"] == selector
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == sa
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/loraf/operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 8080}


def test_trainer_status_policy_is_the_config_one() -> None:
    """The chart's policy is config/policy/trainer-status.yaml (the dev cluster's), and
    `trainerStatusPolicy.create=false` leaves it out."""
    source = list(yaml.safe_load_all((ROOT / "config/policy/trainer-status.yaml").read_text()))
    rendered = [o for o in render() if o["kind"].startswith("ValidatingAdmission")]
    assert [o["metadata"]["name"] for o in rendered] == ["loraf-loraf-operator-trainer-status"] * 2
    assert rendered[1]["spec"]["policyName"] == rendered[0]["metadata"]["name"]
    source[1]["spec"]["policyName"] = rendered[0]["metadata"]["name"]
    assert [(o["kind"], o["spec"]) for o in rendered] == [(o["kind"], o["spec"]) for o in source]
    off = render({"trainerStatusPolicy.create": "false"})
    assert not [o for o in off if o["kind"].startswith("ValidatingAdmission")]


def test_cluster_role_is_the_rule_set() -> None:
    objs = render()
    role = one(objs, "ClusterRole")
    assert role["rules"] == rule_set()
    generated = yaml.safe_load((ROOT / "config" / "rbac" / "operator.yaml").read_text())
    assert role["rules"] == generated["rules"]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "loraf-loraf-operator", "namespace": "loraf-system"}
    ]


def test_secrets_only_get_and_no_rule_writes_the_spec() -> None:
    for values in ({}, NAMESPACED):
        for o in render(values):
            for rule in o.get("rules", []):
                assert "*" not in rule["resources"]
                if "secrets" in rule["resources"]:
                    # Read by name only (referenced Secrets exist with their keys).
                    assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"]
                assert "*" not in rule["verbs"]
                if "lorafinetunes" in rule["resources"]:
                    assert not {"update", "create", "delete"} & set(rule["verbs"])


def test_namespaced_mode_roles_per_namespace() -> None:
    objs = render(NAMESPACED)
    roles = by_kind(objs, "Role")
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert b["subjects"][0]["namespace"] == "loraf-system"
    # The Role: every namespaced rule of the set; the ClusterRole: only cluster-scoped reads.
    cluster_scoped = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}
    expected = []
    for r in rule_set():
        res = [x for x in r["resources"] if x not in cluster_scoped]
        if res:
            expected.append({**r, "resources": res})
    assert roles[0]["rules"] == expected
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    env = env_of(one(objs, "Deployment"))
    assert env["LORAF_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize("values", [{}, NAMESPACED])
def test_pod_passes_pod_security_restricted(values: dict[str, str]) -> None:
    pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_restricted_check_catches_violations() -> None:
    pod = one(
        render(
            {
                "securityContext.allowPrivilegeEscalation": "true",
                "podSecurityContext.runAsNonRoot": "false",
            }
        ),
        "Deployment",
    )
    problems = restricted_violations(pod["spec"]["template"]["spec"])
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("runAsNonRoot" in p for p in problems)


def test_env_is_the_settings_contract() -> None:
    objs = render(
        {
            "operator.namespaces": "{ns1,ns2}",
            "operator.trainerImage": "registry.example/trainer:1.2",
            "operator.s3.endpoint": "http://minio:9000",
            "operator.s3.region": "eu-west-1",
            "operator.statusIntervalSeconds": "120",
            "operator.logFormat": "json",
            "operator.healthPort": "9091",
            "operator.bindAddress": "127.0.0.1",
            "metrics.port": "9090",
            "replicas": "2",
            "leaderElection.enabled": "true",
            "leaderElection.name": "loraf-peers",
            "extraEnv[0].name": "LORAF_PRIORITY",
        },
        strings={"extraEnv[0].value": "7"},
    )
    env = env_of(one(objs, "Deployment"))
    s = Settings.from_env(env)
    assert s.namespaces == ("ns1", "ns2")
    assert s.trainer_image == "registry.example/trainer:1.2"
    assert (s.s3_endpoint, s.s3_region) == ("http://minio:9000", "eu-west-1")
    assert s.status_interval_seconds == 120
    assert (s.metrics_port, s.health_port) == (9090, 9091)
    assert s.bind_address == "127.0.0.1"
    assert (s.peering, s.priority, s.log_format) == ("loraf-peers", 7, "json")
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "loraf-peers"
    # Defaults: settings.py's own defaults apply where the chart sets nothing.
    d = Settings.from_env(env_of(one(render(), "Deployment")))
    assert d.clusterwide and d.peering == "" and d.trainer_image == Settings().trainer_image


def test_metrics_off_removes_service_and_port() -> None:
    objs = render({"metrics.enabled": "false"})
    assert not by_kind(objs, "Service")
    assert env_of(one(objs, "Deployment"))["LORAF_METRICS_PORT"] == "0"


def test_service_monitor_optional() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    sm = one(
        render(
            {
                "metrics.serviceMonitor.enabled": "true",
                "metrics.serviceMonitor.labels.release": "prom",
            }
        ),
        "ServiceMonitor",
    )
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "prom"


def test_long_release_name_is_cut_to_63() -> None:
    release = "a-very-long-release-name-for-a-platform-team-that-likes-long-names"[:53]
    objs = render({"metrics.enabled": "true"}, release=release)
    for o in objs:
        name = o["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), name
        for v in o["metadata"]["labels"].values():
            assert len(v) <= 63


@pytest.mark.parametrize(
    "bad",
    [
        "replica=2",  # misspelled key
        "operator.logFormat=xml",  # not in the enum
        "operator.s3.bucket=x",  # unknown nested key
        "image.digest=latest",  # not a digest
        "replicas=-1",
        "extraEnv[0].name=X,extraEnv[0].value=7",  # an EnvVar value must be a string
        "operator.s3.endpoint=minio:9000",  # the CRD wants http(s)://, so does the chart
        "resources.requests.cpu=lots",  # not a Kubernetes quantity
        "resources.request.cpu=1",  # misspelled key
    ],
)
def test_schema_rejects_bad_values(bad: str) -> None:
    res = helm("template", "r", str(CHART), "--set", bad, check=False)
    assert res.returncode != 0
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rbac.namespaced": "true"}, "needs operator.namespaces"),
        ({"rbac.namespaced": "true", "operator.namespaces": "{team-*}"}, "exact namespace names"),
        ({"replicas": "2"}, "needs leaderElection.enabled"),
    ],
)
def test_impossible_combinations_fail(values: dict[str, str], message: str) -> None:
    args = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    res = helm("template", "r", str(CHART), *args, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def _leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key == "global" and not prefix:
            continue
        if "properties" in sub:
            assert sub.get("additionalProperties") is False, path
            out += _leaves(sub, path + ".")
        else:
            out.append((path, sub))
    return out


def test_every_value_is_documented_in_values_and_docs() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    leaves = _leaves(schema)
    assert len(leaves) > 30
    doc = (ROOT / "docs" / "helm.md").read_text()
    for path, sub in leaves:
        assert sub.get("description"), f"{path} has no description in values.yaml"
        assert f"`{path}`" in doc, f"docs/helm.md does not list {path}"


def test_chart_crds_include_the_generated_ones() -> None:
    names = {p.name for p in (CHART / "crds").glob("*.yaml")}
    assert {p.name for p in (ROOT / "crds").glob("*.yaml")} <= names
    assert {"clusterkopfpeerings.kopf.dev.yaml", "kopfpeerings.kopf.dev.yaml"} <= names
    for p in (CHART / "crds").glob("*.yaml"):
        doc = yaml.safe_load(p.read_text())
        assert doc["kind"] == "CustomResourceDefinition"
        # Helm never deletes crds/ content; nothing relies on a resource-policy annotation.
        assert Path(p).name == f"{doc['metadata']['name']}.yaml"
