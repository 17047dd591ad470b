"""The operator's periodic resync on the real control plane: it repairs a transition whose
status write failed (issue 21 item 1), waits without a Job for a missing Secret (issue 21
item 6) and ends a run whose pod the Job controller cannot create (issue 16 item 4).

The operator here runs with a short LORAF_STATUS_INTERVAL_SECONDS and watches namespaces
t-test-resync-* only (every test is called test_resync_*).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from loraf_dev.cluster import OPERATOR_USER

from .operator_fixtures import OperatorHandle, grant_operator_rbac, start_operator, wait_until
from .test_operator import (
    apply,
    cond,
    events,
    finish_pod,
    get_ft,
    manifest,
    running_pod,
    wait_cond,
)

pytestmark = pytest.mark.timeout(180)

INTERVAL = 4  # seconds: LORAF_STATUS_INTERVAL_SECONDS of this module's operator
POD_CREATE_TIMEOUT = 10


@pytest.fixture(scope="module")
def resync_operator(cluster: Any, crds: list[str]) -> Iterator[OperatorHandle]:
    handle = start_operator(
        cluster,
        namespaces=["t-test-resync-*"],
        env={
            "LORAF_STATUS_INTERVAL_SECONDS": str(INTERVAL),
            "LORAF_POD_CREATE_TIMEOUT_SECONDS": str(POD_CREATE_TIMEOUT),
        },
    )
    yield handle
    handle.stop()
    if os.environ.get("LORAF_KEEP_OPERATOR_LOG"):
        print(handle.logs())
    # The tests edit the ClusterRole; leave it as generated for the next module.
    grant_operator_rbac(cluster)


def _can_patch_status(cluster: Any, ns: str) -> bool:
    got = cluster.kubectl(
        "auth",
        "can-i",
        "patch",
        "lorafinetunes.loraf.dev",
        "--subresource=status",
        "-n",
        ns,
        f"--as={OPERATOR_USER}",
        check=False,
    )
    return got.stdout.strip() == "yes"


def _revoke_status_patch(cluster: Any, ns: str) -> None:
    """Admin: drop the operator's `lorafinetunes/status` rule from its ClusterRole."""
    role = cluster.get_json("clusterrole", "loraf-operator")
    role["rules"] = [r for r in role["rules"] if "lorafinetunes/status" not in r["resources"]]
    role["metadata"] = {"name": "loraf-operator", "labels": role["metadata"].get("labels", {})}
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))
    wait_until("the revoke to take effect", lambda: not _can_patch_status(cluster, ns))


def test_resync_heals_a_missed_transition(
    cluster: Any, namespace: str, resync_operator: OperatorHandle
) -> None:
    ns, name = namespace, "heal"
    apply(cluster, manifest(name, ns))
    wait_cond(cluster, ns, name, "Running")
    pod = running_pod(cluster, ns, f"{name}-r1")

    _revoke_status_patch(cluster, ns)
    try:
        finish_pod(cluster, ns, pod, 0)

        def complete() -> bool:
            job = cluster.get_json("job", f"{name}-r1", "-n", ns)
            conds = (job.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)

        wait_until("the Job to complete", complete)
        # The operator's writes (and its retries) fail meanwhile: the status is stale.
        time.sleep(INTERVAL + 4)
        assert get_ft(cluster, ns, name)["status"]["phase"] == "Running"
    finally:
        grant_operator_rbac(cluster)
    wait_until("the permission back", lambda: _can_patch_status(cluster, ns))
    restored = time.monotonic()
    # Healed within one interval (plus slack for a loaded 2-core machine), no restart.
    ft = wait_until(
        "the status to heal",
        lambda: (lambda f: f if cond(f, "Succeeded").get("status") == "True" else None)(
            get_ft(cluster, ns, name)
        ),
        stall=3 * INTERVAL + 10,
        cap=3 * INTERVAL + 10,
    )
    print(f"healed {time.monotonic() - restored:.1f}s after the permission came back")
    assert ft["status"]["phase"] == "Succeeded"
    assert ft["status"]["run"]["completionTime"]
    assert cond(ft, "Running")["status"] == "False"
    assert resync_operator.alive()


def test_resync_missing_secret_holds_no_job(
    cluster: Any, namespace: str, resync_operator: OperatorHandle
) -> None:
    ns, name = namespace, "nosecret"
    apply(cluster, manifest(name, ns), secret=False)
    ft = wait_cond(cluster, ns, name, "Running", "False", "SecretNotFound")
    msg = cond(ft, "Running")["message"]
    assert "s3-creds" in msg and "spec.output.credentialsSecretRef" in msg, msg
    assert ft["status"]["phase"] == "Scheduling"
    assert ft["status"]["message"].startswith("SecretNotFound")
    assert cond(ft, "Failed")["status"] == "False"  # the user may still create it
    assert ft["status"]["run"]["number"] == 1
    for kind in ("job", "sa", "configmap"):
        got = cluster.kubectl("get", kind, "-n", ns, "-o", "name", "-l", "loraf.dev/run")
        assert got.stdout.strip() == "", (kind, got.stdout)
    warnings = [e for e in events(cluster, ns, name) if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["SecretNotFound"], warnings

    # The Secret appears without its secret key: the resync notices, still no Job.
    secret_value = "do-not-copy-me-" + ns
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3-creds",
        "-n",
        ns,
        f"--from-literal=AWS_ACCESS_KEY_ID={secret_value}",
    )
    ft = wait_cond(cluster, ns, name, "Running", "False", "SecretKeyMissing", stall=3 * INTERVAL)
    assert "AWS_SECRET_ACCESS_KEY" in cond(ft, "Running")["message"]
    assert cluster.kubectl("get", "job", f"{name}-r1", "-n", ns, check=False).returncode != 0

    # With the key the run starts by itself: same run, one Job, a running pod.
    cluster.kubectl(
        "patch",
        "secret",
        "s3-creds",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"stringData": {"AWS_SECRET_ACCESS_KEY": "x"}}),
    )
    ft = wait_cond(cluster, ns, name, "Running", "True", stall=3 * INTERVAL + 30)
    assert ft["status"]["run"]["number"] == 1
    assert cond(ft, "Scheduled")["reason"] == "PodScheduled"
    jobs = cluster.get_json("jobs", "-n", ns)["items"]
    assert [j["metadata"]["name"] for j in jobs] == [f"{name}-r1"]
    # No value was copied anywhere the operator writes.
    dump = json.dumps(ft) + json.dumps(events(cluster, ns, name))
    assert secret_value not in dump
    assert secret_value not in resync_operator.logs()


def test_resync_pod_creation_refused_fails_the_run(
    cluster: Any, namespace: str, resync_operator: OperatorHandle
) -> None:
    ns, name = namespace, "noprio"
    apply(cluster, manifest(name, ns, resources={"priorityClassName": "does-not-exist"}))
    ft = wait_cond(cluster, ns, name, "Running", "False", "FailedCreate", stall=3 * INTERVAL + 10)
    msg = cond(ft, "Running")["message"]
    assert "does-not-exist" in msg and "the run fails at" in msg, msg
    assert cond(ft, "Scheduled")["reason"] == "FailedCreate"
    assert ft["status"]["message"].startswith("FailedCreate")

    ft = wait_cond(
        cluster, ns, name, "Failed", "True", "PodCreationRefused", stall=POD_CREATE_TIMEOUT + 30
    )
    assert "does-not-exist" in cond(ft, "Failed")["message"]
    assert ft["status"]["phase"] == "Failed"
    assert ft["status"]["run"]["completionTime"]
    wait_until(
        "the Job deleted (no more retries by the Job controller)",
        lambda: cluster.kubectl("get", "job", f"{name}-r1", "-n", ns, check=False).returncode != 0,
    )
    failed = [
        e
        for e in events(cluster, ns, name)
        if e["type"] == "Warning" and e["reason"] == "PodCreationRefused"
    ]
    assert len(failed) == 1, failed
