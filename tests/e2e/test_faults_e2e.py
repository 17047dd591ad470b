"""Faults on the local cluster (issue 21): a graceful preemption whose running step
outlasts the pod's grace period still ends in exit 75 (not the kubelet's SIGKILL, 137),
so the Job does not count it, and the replacement pod finishes the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.helpers import apply, cond, get, s3_objects, wait_for

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
        timeout=900,
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

    obj = wait_for("finish", finished, timeout=900, every=0.5)
    assert cond(obj, "Succeeded").get("status") == "True", obj["status"]
    js = cluster.get_json("job", job, "-n", namespace)["status"]
    assert not js.get("failed"), js  # the preempted pod was ignored, not counted
    assert obj["status"]["progress"]["step"] == 2
