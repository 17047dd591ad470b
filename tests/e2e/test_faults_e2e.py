"""Faults on the local cluster (issue 21):

- a graceful preemption whose running step outlasts the pod's grace period still ends in
  exit 75 (not the kubelet's SIGKILL, 137), so the Job does not count it, and the
  replacement pod finishes the run;
- S3 down (the harness kills it by pid) after training finished: exit 69, not counted,
  and the replacement pod only uploads once S3 is back;
- wrong S3 keys: Failed/StorageAccessDenied from the first pod, no retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from loraf_dev import cluster as cp
from loraf_dev import quickstart as qs
from tests.conftest import Cluster
from tests.e2e.helpers import apply, cond, get, namespace_state, s3_objects, wait_for

pytestmark = pytest.mark.e2e

GRACE_S = 5


def test_preemption_mid_step_within_the_grace_period_is_not_counted(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]], s3: Any
) -> None:
    doc = stage(
        "grace",
        {
            "spec": {
                # Long steps (12 forward/backward passes) against a 5 s grace period.
                "training": {"maxSteps": 2, "checkpointSteps": 1, "gradientAccumulationSteps": 12},
                "resources": {"terminationGracePeriodSeconds": GRACE_S},
                "backoffLimit": 0,  # a counted failure would fail the run at once
            }
        },
    )
    apply(cluster, namespace, doc)
    ckpt_prefix = doc["spec"]["output"]["s3"] + "/run-1/checkpoints/"
    wait_for(
        "checkpoint step-1",
        lambda: any(k.endswith("step-1/COMPLETE") for k in s3_objects(s3, ckpt_prefix)),
        stall=600,
        seen=namespace_state(cluster, namespace),
    )
    job = get(cluster, namespace, "grace")["status"]["run"]["jobName"]
    first = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job}")["items"][0]
    assert first["spec"]["terminationGracePeriodSeconds"] == GRACE_S
    cluster.kubectl("delete", "pod", first["metadata"]["name"], "-n", namespace, "--wait=false")

    def finished() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "grace")
        done = (
            cond(obj, "Succeeded").get("status") == "True"
            or cond(obj, "Failed").get("status") == "True"
        )
        return obj if done else None

    obj = wait_for(
        "finish", finished, stall=600, seen=namespace_state(cluster, namespace), every=0.5
    )
    assert cond(obj, "Succeeded").get("status") == "True", obj["status"]
    js = cluster.get_json("job", job, "-n", namespace)["status"]
    assert not js.get("failed"), js  # the preempted pod was ignored, not counted
    assert obj["status"]["progress"]["step"] == 2


def _finished(cluster: Cluster, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        obj = get(cluster, ns, name)
        done = (
            cond(obj, "Succeeded").get("status") == "True"
            or cond(obj, "Failed").get("status") == "True"
        )
        return obj if done else None

    return check


def _exit_codes(cluster: Cluster, ns: str, job: str) -> list[int]:
    pods = cluster.get_json("pods", "-n", ns, "-l", f"job-name={job}")["items"]
    codes = []
    for p in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
        for cs in p.get("status", {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                codes.append(int(term["exitCode"]))
    return codes


def test_s3_down_after_training_exits_69_uncounted_and_the_retry_only_uploads(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]], s3: Any
) -> None:
    doc = stage(
        "s3down",
        {
            "spec": {
                "training": {"maxSteps": 2},
                "output": {"retry": {"timeoutSeconds": 5}},
                "backoffLimit": 0,  # a counted failure would fail the run at once
            }
        },
    )
    apply(cluster, namespace, doc)
    marker = doc["spec"]["output"]["s3"] + "/run-1/checkpoints/"
    wait_for(
        "final checkpoint step-2",
        lambda: any(k.endswith("step-2/COMPLETE") for k in s3_objects(s3, marker)),
        stall=600,
        seen=namespace_state(cluster, namespace),
        every=0.2,
    )
    cp.stop_process(cluster.state, "s3")  # down for longer than timeoutSeconds
    try:
        job = get(cluster, namespace, "s3down")["status"]["run"]["jobName"]
        wait_for("exit 69", lambda: 69 in _exit_codes(cluster, namespace, job), stall=300)
    finally:
        cp.start_s3(cluster.state)
        cp.wait_for("S3", lambda: cp.s3_listening(cluster.state), timeout=30)
    obj = wait_for(
        "finish",
        _finished(cluster, namespace, "s3down"),
        stall=600,
        seen=namespace_state(cluster, namespace),
    )
    assert cond(obj, "Succeeded").get("status") == "True", obj["status"]
    js = cluster.get_json("job", job, "-n", namespace)["status"]
    assert not js.get("failed"), js  # exit 69 was ignored, not counted
    assert _exit_codes(cluster, namespace, job)[0] == 69
    manifest = json.loads(
        s3.get_object(Bucket=qs.ARTIFACT_BUCKET, Key=_key(doc, "run-1/manifest.json"))[
            "Body"
        ].read()
    )
    assert manifest["metrics"]["steps"] == 2


def _key(doc: dict[str, Any], rel: str) -> str:
    uri = doc["spec"]["output"]["s3"].removeprefix("s3://")
    return f"{uri.split('/', 1)[1]}/{rel}"


def test_wrong_s3_keys_fail_at_once_with_storage_access_denied(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]]
) -> None:
    wrong = qs.s3_secret(cluster.s3_access_key, "wrong-" + cluster.s3_secret_key)
    wrong["metadata"]["name"] = "s3-wrong"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(wrong))
    doc = stage("badkeys", {"spec": {"output": {"credentialsSecretRef": {"name": "s3-wrong"}}}})
    t0 = time.monotonic()
    apply(cluster, namespace, doc)
    obj = wait_for("Failed", _finished(cluster, namespace, "badkeys"), stall=300)
    took = time.monotonic() - t0
    failed = cond(obj, "Failed")
    assert failed.get("status") == "True", obj["status"]
    assert failed["reason"] == "StorageAccessDenied", failed
    assert "S3 denied access" in failed["message"], failed
    job = obj["status"]["run"]["jobName"]
    assert _exit_codes(cluster, namespace, job) == [77]  # one pod, not retried
    print(f"\nwrong keys on the cluster: Failed/StorageAccessDenied {took:.1f} s after apply")
