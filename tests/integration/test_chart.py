"""The Helm chart against the real apiserver, with real helm.

The chart's Deployment pod cannot run the operator here (kwok nodes only pretend to run
pods), so the tests run the operator process locally with the token of the chart's own
ServiceAccount: whatever it can do, the chart's RBAC granted. Two releases: cluster-wide
(watching namespace A) and namespaced mode (a Role in namespace B only).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraf_dev import cluster as cp
from tests.integration.operator_fixtures import start_operator, wait_until

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "loraf-operator"
GITOPS = "gitops-sync"  # field manager standing in for Argo CD / Flux


@dataclass
class Release:
    name: str
    namespace: str  # where the chart is installed
    watched: str  # the namespace the operator watches
    sa: str
    kubeconfig: str  # the chart ServiceAccount's token


@dataclass
class Setup:
    clusterwide: Release
    namespaced: Release
    unwatched: str


def helm(cluster: Any, *args: str, check: bool = True) -> Any:
    import subprocess

    res = subprocess.run(
        [f"{cluster.bin_dir}/helm", "--kubeconfig", cluster.kubeconfig, *args],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=120,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stderr}")
    return res


def sa_kubeconfig(cluster: Any, namespace: str, sa: str, path: Path) -> str:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout
    path.write_text(
        cp.kubeconfig(cluster.state, f"system:serviceaccount:{namespace}:{sa}", token.strip())
    )
    return str(path)


def finetune(name: str, namespace: str) -> dict[str, Any]:
    ft = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    ft["metadata"] = {"name": name, "namespace": namespace}
    return ft


@pytest.fixture(scope="module")
def setup(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tag = uuid.uuid4().hex[:5]
    system, ns_a, ns_b, ns_c = (f"t-chart-{x}-{tag}" for x in ("sys", "a", "b", "c"))
    for ns in (system, ns_a, ns_b, ns_c):
        cluster.kubectl("create", "namespace", ns)
    # The operator's namespace enforces Pod Security "restricted".
    cluster.kubectl("label", "namespace", system, "pod-security.kubernetes.io/enforce=restricted")
    tmp = tmp_path_factory.mktemp("chart")
    rels = []
    for rel, watched, extra in (
        (f"cw-{tag}", ns_a, []),
        (f"ns-{tag}", ns_b, ["--set", "rbac.namespaced=true"]),
    ):
        helm(
            cluster,
            "install",
            rel,
            str(CHART),
            "-n",
            system,
            "--set",
            f"operator.namespaces={{{watched}}}",
            *extra,
        )
        sa = f"{rel}-loraf-operator"
        rels.append(
            Release(
                rel,
                system,
                watched,
                sa,
                sa_kubeconfig(cluster, system, sa, tmp / f"{rel}.kubeconfig"),
            )
        )
    for crd in ("lorafinetunes.loraf.dev", "loraservings.loraf.dev", "kopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    try:
        yield Setup(rels[0], rels[1], ns_c)
    finally:
        for r in rels:
            helm(cluster, "uninstall", r.name, "-n", system, check=False)
        for ns in (system, ns_a, ns_b, ns_c):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def can_i(cluster: Any, rel: Release, *args: str) -> bool:
    res = cluster.kubectl("auth", "can-i", *args, kubeconfig=rel.kubeconfig, check=False)
    return res.stdout.strip() == "yes"


def reconcile_once(cluster: Any, rel: Release, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the operator as the chart's ServiceAccount until `name` has its Job and status.

    Returns the object as the apiserver stored it at apply time, and after the reconcile.
    """
    ft = finetune(name, rel.watched)
    manifest = json.dumps(ft)
    # The Secret the example references: the operator creates no Job without it.
    secret = ft["spec"]["output"]["credentialsSecretRef"]["name"]
    if cluster.kubectl("get", "secret", secret, "-n", rel.watched, check=False).returncode:
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            secret,
            "-n",
            rel.watched,
            "--from-literal=AWS_ACCESS_KEY_ID=id",
            "--from-literal=AWS_SECRET_ACCESS_KEY=x",
        )
    handle = start_operator(cluster, namespaces=[rel.watched], env={"KUBECONFIG": rel.kubeconfig})
    try:
        stored = json.loads(
            cluster.kubectl(
                "apply",
                "--server-side",
                f"--field-manager={GITOPS}",
                "-o",
                "json",
                "-f",
                "-",
                input=manifest,
            ).stdout
        )

        def job_exists() -> bool:
            res = cluster.kubectl("get", "job", f"{name}-r1", "-n", rel.watched, check=False)
            return res.returncode == 0

        def status_written() -> dict[str, Any] | None:
            obj = cluster.get_json("loraf", name, "-n", rel.watched)
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            run = obj.get("status", {}).get("run") or {}
            return obj if conds.get("Validated") == "True" and run else None

        try:
            wait_until(f"Job {name}-r1", job_exists)
            obj: dict[str, Any] = wait_until("status written by the operator", status_written)
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{handle.logs()[-6000:]}") from None
        assert "Forbidden" not in handle.logs() and "403" not in handle.logs(), handle.logs()
        return stored, obj
    finally:
        handle.stop()
        assert "Traceback" not in handle.logs(), handle.logs()[-4000:]


def test_install_creates_the_release(cluster: Any, setup: Setup) -> None:
    for rel in (setup.clusterwide, setup.namespaced):
        st = json.loads(helm(cluster, "status", rel.name, "-n", rel.namespace, "-o", "json").stdout)
        assert st["info"]["status"] == "deployed"
        cluster.kubectl("get", "deployment", f"{rel.name}-loraf-operator", "-n", rel.namespace)
        # The trainer-status policy, accepted by the apiserver (its CEL compiled, no
        # type-checking warning) and bound.
        name = f"{rel.name}-loraf-operator-trainer-status"
        policy = cluster.get_json("validatingadmissionpolicy", name)
        assert not (policy.get("status") or {}).get("typeChecking", {}).get("expressionWarnings")
        binding = cluster.get_json("validatingadmissionpolicybinding", name)
        assert binding["spec"]["policyName"] == name
    cw = setup.clusterwide.name
    cluster.kubectl("get", "clusterrole", f"{cw}-loraf-operator")
    role = cluster.get_json(
        "role", f"{setup.namespaced.name}-loraf-operator", "-n", setup.namespaced.watched
    )
    assert any("jobs" in r["resources"] for r in role["rules"])


def test_pod_is_admitted_under_restricted(cluster: Any, setup: Setup) -> None:
    rel = setup.clusterwide
    deploy = cluster.get_json("deployment", f"{rel.name}-loraf-operator", "-n", rel.namespace)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "psa-check", "namespace": rel.namespace},
        "spec": deploy["spec"]["template"]["spec"],
    }
    ok = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert ok.returncode == 0 and "Warning" not in ok.stderr, ok.stderr
    # The check is real: the same pod running as root is refused in this namespace.
    pod["spec"] = {**pod["spec"], "securityContext": {"runAsNonRoot": False}}
    bad = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert bad.returncode != 0 and "restricted" in bad.stderr, bad.stderr


@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_chart_identity_reconciles_and_never_writes_spec(
    cluster: Any, setup: Setup, mode: str
) -> None:
    rel: Release = getattr(setup, mode)
    name = f"chart-{mode[:2]}"
    applied = finetune(name, rel.watched)
    stored, obj = reconcile_once(cluster, rel, name)
    job = cluster.get_json("job", f"{name}-r1", "-n", rel.watched)
    assert job["metadata"]["ownerReferences"][0]["name"] == name
    assert obj["status"]["run"]
    # No GitOps drift: the spec is what was applied, byte for byte, and owned by the sync.
    after = cluster.get_json("loraf", name, "-n", rel.watched, "--show-managed-fields")
    assert after["metadata"]["generation"] == 1
    spec_owners = [
        m["manager"]
        for m in after["metadata"]["managedFields"]
        if "f:spec" in m.get("fieldsV1", {})
    ]
    assert spec_owners == [GITOPS]
    diff = cluster.kubectl(
        "diff",
        "--server-side",
        f"--field-manager={GITOPS}",
        "-f",
        "-",
        input=json.dumps(applied),
        check=False,
    )
    assert diff.returncode == 0, diff.stdout
    # Byte-identical: the spec as stored at apply time (defaults included), serialised
    # the same way, equals the spec after the run.
    assert json.dumps(after["spec"], sort_keys=True) == json.dumps(stored["spec"], sort_keys=True)


def test_chart_identity_is_denied_what_it_must_not_do(cluster: Any, setup: Setup) -> None:
    for rel in (setup.clusterwide, setup.namespaced):
        ns = rel.watched
        assert can_i(cluster, rel, "create", "jobs.batch", "-n", ns)
        assert can_i(cluster, rel, "patch", "lorafinetunes.loraf.dev/status", "-n", ns)
        # Secrets: `get` by name only (referenced Secrets exist with their keys); no
        # list/watch (every value in the namespace), no write.
        assert can_i(cluster, rel, "get", "secrets", "-n", ns)
        for verb in ("list", "watch", "create", "update", "patch", "delete"):
            assert not can_i(cluster, rel, verb, "secrets", "-n", ns), verb
        for verb in ("update", "create", "delete"):
            assert not can_i(cluster, rel, verb, "lorafinetunes.loraf.dev", "-n", ns), verb
        assert not can_i(cluster, rel, "create", "pods", "-n", ns)
        assert not can_i(cluster, rel, "escalate", "roles", "-n", ns)
        assert not can_i(cluster, rel, "create", "clusterroles")
        # A real request, not only the review: listing Secrets is refused.
        res = cluster.kubectl("get", "secrets", "-n", ns, kubeconfig=rel.kubeconfig, check=False)
        assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    rel = setup.namespaced
    for other in (setup.unwatched, setup.clusterwide.watched):
        for verb, what in (
            ("create", "jobs.batch"),
            ("create", "configmaps"),
            ("create", "roles.rbac.authorization.k8s.io"),
            ("list", "lorafinetunes.loraf.dev"),
            ("list", "pods"),
        ):
            assert not can_i(cluster, rel, verb, what, "-n", other), (verb, what, other)
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "should-not-exist", "namespace": other},
        }
        res = cluster.kubectl(
            "create", "-f", "-", input=json.dumps(cm), kubeconfig=rel.kubeconfig, check=False
        )
        assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    assert not can_i(cluster, rel, "list", "lorafinetunes.loraf.dev", "--all-namespaces")
    # The cluster-wide release may act in any namespace, which namespaced mode may not.
    assert can_i(cluster, setup.clusterwide, "create", "jobs.batch", "-n", setup.unwatched)


def test_upgrade_with_changed_values(cluster: Any, setup: Setup) -> None:
    rel = setup.clusterwide
    helm(
        cluster,
        "upgrade",
        rel.name,
        str(CHART),
        "-n",
        rel.namespace,
        "--reuse-values",
        "--set",
        "operator.trainerImage=registry.example/loraf-trainer:9.9",
        "--set",
        "replicas=2",
        "--set",
        "leaderElection.enabled=true",
        "--set",
        "metrics.enabled=false",
    )
    st = json.loads(helm(cluster, "status", rel.name, "-n", rel.namespace, "-o", "json").stdout)
    assert (st["info"]["status"], st["version"]) == ("deployed", 2)
    deploy = cluster.get_json("deployment", f"{rel.name}-loraf-operator", "-n", rel.namespace)
    assert deploy["spec"]["replicas"] == 2
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["LORAF_TRAINER_IMAGE"] == "registry.example/loraf-trainer:9.9"
    assert env["LORAF_PEERING"] == f"{rel.name}-loraf-operator"
    assert env["LORAF_NAMESPACES"] == rel.watched  # --reuse-values kept it
    cluster.kubectl("get", "clusterkopfpeering", f"{rel.name}-loraf-operator")
    svc = cluster.kubectl(
        "get", "service", f"{rel.name}-loraf-operator-metrics", "-n", rel.namespace, check=False
    )
    assert svc.returncode != 0  # metrics off removed the Service
    # A misspelled value is refused by the schema and leaves the release as it was.
    bad = helm(
        cluster,
        "upgrade",
        rel.name,
        str(CHART),
        "-n",
        rel.namespace,
        "--reuse-values",
        "--set",
        "replica=3",
        check=False,
    )
    assert bad.returncode != 0 and "schema" in bad.stderr
    st = json.loads(helm(cluster, "status", rel.name, "-n", rel.namespace, "-o", "json").stdout)
    assert st["version"] == 2


def test_uninstall_keeps_crds_and_resources(cluster: Any, setup: Setup) -> None:
    for rel in (setup.clusterwide, setup.namespaced):
        helm(cluster, "uninstall", rel.name, "-n", rel.namespace, "--wait")
    cw, nsr = setup.clusterwide, setup.namespaced
    for crd in ("lorafinetunes.loraf.dev", "loraservings.loraf.dev", "kopfpeerings.kopf.dev"):
        cluster.kubectl("get", "crd", crd)
    # The LoRAFineTunes (and so their Jobs) survive the operator's removal.
    cluster.kubectl("get", "loraf", "chart-cl", "-n", cw.watched)
    cluster.kubectl("get", "job", "chart-na-r1", "-n", nsr.watched)
    for args in (
        ("clusterrole", f"{cw.name}-loraf-operator"),
        ("clusterrolebinding", f"{nsr.name}-loraf-operator"),
        ("role", f"{nsr.name}-loraf-operator", "-n", nsr.watched),
        ("serviceaccount", cw.sa, "-n", cw.namespace),
        ("deployment", f"{cw.name}-loraf-operator", "-n", cw.namespace),
        ("clusterkopfpeering", f"{cw.name}-loraf-operator"),
        ("validatingadmissionpolicy", f"{cw.name}-loraf-operator-trainer-status"),
    ):
        res = cluster.kubectl("get", *args, check=False)
        assert res.returncode != 0 and "NotFound" in res.stderr, args
