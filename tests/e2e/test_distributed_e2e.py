"""More than one rank on the local cluster (the process kubelet runs each pod's torchrun
and its gloo ranks on this CPU; the node advertises GPUs the trainer does not find):

- `resources.gpus: 2`: one pod, two ranks (DDP), status.progress.plan says so;
- `resources.nodes: 2`: an Indexed Job of two pods with a headless Service; torchrun's
  c10d rendezvous meets on the pod of index 0 by its DNS name. Deleting a pod mid-run
  (after a checkpoint) is a preemption of the run: its replacement rejoins, every rank
  resumes from the stored checkpoint, and the run finishes without a counted failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.helpers import apply, cond, get, namespace_state, s3_objects, wait_for

pytestmark = pytest.mark.e2e


def _finished(cluster: Cluster, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        obj = get(cluster, ns, name)
        done = any(cond(obj, t).get("status") == "True" for t in ("Succeeded", "Failed"))
        return obj if done else None

    return check


def _pod_logs(kubelet_dir: Path, pods: list[dict[str, Any]]) -> dict[str, str]:
    """Container logs the process kubelet kept, by pod name."""
    out = {}
    for p in pods:
        f = kubelet_dir / "pods" / p["metadata"]["uid"] / "containers" / "trainer" / "container.log"
        out[p["metadata"]["name"]] = f.read_text(errors="replace") if f.exists() else ""
    return out


# Few eval rows and no generations: this machine's 2 cores run every rank at once.
LEAN = {"training": {"evalPrompts": 0}, "dataset": {"maxRows": 60}}


def test_two_gpus_run_two_ranks_in_one_pod(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]]
) -> None:
    doc = stage("ddp", {"spec": LEAN}, {"spec": {"resources": {"gpus": 2}}})
    apply(cluster, namespace, doc)
    obj = wait_for(
        "finish", _finished(cluster, namespace, "ddp"), seen=namespace_state(cluster, namespace)
    )
    assert cond(obj, "Succeeded").get("status") == "True", obj["status"]
    plan = obj["status"]["progress"]["plan"]
    assert (plan["strategy"], plan["worldSize"]) == ("ddp", 2)
    job = cluster.get_json("job", obj["status"]["run"]["jobName"], "-n", namespace)
    assert job["spec"]["completions"] == 1 and job["spec"]["completionMode"] == "NonIndexed"
    assert job["status"].get("succeeded") == 1


def test_two_pod_indexed_run_resumes_after_losing_a_pod(
    cluster: Cluster,
    namespace: str,
    operator: Any,
    stage: Callable[..., dict[str, Any]],
    s3: Any,
    process_kubelet: Path,
) -> None:
    steps = 6
    doc = stage(
        "nodes",
        {"spec": LEAN},
        {
            "spec": {
                "resources": {"gpus": 1, "nodes": 2, "terminationGracePeriodSeconds": 40},
                "training": {"maxSteps": steps, "checkpointSteps": 2, "perDeviceBatchSize": 1},
                "backoffLimit": 0,  # a counted pod failure would fail the run at once
            }
        },
    )
    apply(cluster, namespace, doc)
    seen = namespace_state(cluster, namespace)
    ckpts = doc["spec"]["output"]["s3"] + "/run-1/checkpoints/"
    done = _finished(cluster, namespace, "nodes")
    ended = wait_for(
        "checkpoint step-2",
        lambda: any(k.endswith("step-2/COMPLETE") for k in s3_objects(s3, ckpts)) or done(),
        seen=seen,
    )
    assert ended is True, ended["status"]  # a checkpoint, not the end of the run
    run = get(cluster, namespace, "nodes")["status"]["run"]
    job_name = run["jobName"]
    job = cluster.get_json("job", job_name, "-n", namespace)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    subdomain = job["spec"]["template"]["spec"]["subdomain"]
    svc = cluster.get_json("service", subdomain, "-n", namespace)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "LoRAFineTune"
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job_name}")["items"]
    victim = next(
        p
        for p in pods
        if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
    )
    cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=false")

    obj = wait_for("finish", _finished(cluster, namespace, "nodes"), seen=seen, every=0.5)
    assert cond(obj, "Succeeded").get("status") == "True", obj["status"]
    progress = obj["status"]["progress"]
    assert progress["step"] == steps
    assert (progress["plan"]["strategy"], progress["plan"]["worldSize"]) == ("ddp", 2)
    js = cluster.get_json("job", job_name, "-n", namespace)["status"]
    assert not js.get("failed"), js  # the deleted pod was a preemption, not a failure
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job_name}")["items"]
    logs = _pod_logs(process_kubelet, pods)
    replacement = [n for n in logs if n != victim["metadata"]["name"]]
    assert any("resuming from" in logs[n] and "step-" in logs[n] for n in replacement), {
        n: t[-1500:] for n, t in logs.items()
    }
