"""Proof that the local control plane is real: scheduler, GPU nodes, Job controller, GC,
RBAC and an authenticating S3 server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Cluster
from tests.waiting import wait_progress

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_job(name: str, gpus: int, backoff: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "train",
                            "image": "example.invalid/trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                }
            },
        },
    }


def wait_until(what: str, fn: Any, stall: float = 60) -> Any:
    return wait_progress(what, fn, stall=stall)


def job_pod(cluster: Cluster, ns: str, job: str) -> dict[str, Any] | None:
    pods = cluster.get_json("pods", "-n", ns, "-l", f"job-name={job}")["items"]
    return pods[0] if pods else None


def job_condition(cluster: Cluster, ns: str, job: str, ctype: str) -> bool:
    conds = cluster.get_json("job", job, "-n", ns)["status"].get("conditions", [])
    return any(c["type"] == ctype and c["status"] == "True" for c in conds)


def test_kubectl_lists_gpu_nodes(cluster: Cluster) -> None:
    nodes = cluster.get_json("nodes")["items"]
    gpu = {n["metadata"]["name"]: n["status"]["allocatable"].get("nvidia.com/gpu") for n in nodes}
    assert gpu["gpu-node-0"] == "8" and gpu["gpu-node-1"] == "8"
    assert gpu["cpu-node-0"] is None
    out = cluster.kubectl("get", "nodes", "-l", "nvidia.com/gpu.present=true").stdout
    assert "gpu-node-0" in out and "gpu-node-1" in out and "cpu-node-0" not in out
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.")


def test_gpu_job_scheduled_running_then_succeeds(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_job("ok", 1)))
    pod = wait_until(
        "pod Running",
        lambda: (
            (p := job_pod(cluster, namespace, "ok")) and p["status"].get("phase") == "Running" and p
        ),
    )
    assert pod["spec"]["nodeName"] in ("gpu-node-0", "gpu-node-1")
    name = pod["metadata"]["name"]
    # The test decides when the container ends.
    cluster.kubectl("annotate", "pod", name, "-n", namespace, "sim.loraf.dev/exit-code=0")
    wait_until("job Complete", lambda: job_condition(cluster, namespace, "ok", "Complete"))


def test_failing_exit_code_fails_the_job(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_job("bad", 1)))
    pod = wait_until(
        "pod Running",
        lambda: (
            (p := job_pod(cluster, namespace, "bad"))
            and p["status"].get("phase") == "Running"
            and p
        ),
    )
    cluster.kubectl(
        "annotate",
        "pod",
        pod["metadata"]["name"],
        "-n",
        namespace,
        "sim.loraf.dev/exit-code=137",
        "sim.loraf.dev/reason=OOMKilled",
    )
    wait_until("job Failed", lambda: job_condition(cluster, namespace, "bad", "Failed"))
    term = cluster.get_json("pod", pod["metadata"]["name"], "-n", namespace)["status"][
        "containerStatuses"
    ][0]["state"]["terminated"]
    assert term["exitCode"] == 137 and term["reason"] == "OOMKilled"


def test_too_many_gpus_stays_pending_unschedulable(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(gpu_job("huge", 16)))

    def unschedulable() -> dict[str, Any] | None:
        p = job_pod(cluster, namespace, "huge")
        for c in (p or {}).get("status", {}).get("conditions", []):
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                return c
        return None

    cond = wait_until("Unschedulable", unschedulable)
    assert "nvidia.com/gpu" in cond["message"]
    assert job_pod(cluster, namespace, "huge")["status"]["phase"] == "Pending"  # type: ignore[index]


def test_deleting_owner_garbage_collects_child(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.get_json("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(child))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_until(
        "child collected",
        lambda: (
            cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode
            != 0
        ),
    )


def test_rbac_is_enforced_for_the_operator_identity(cluster: Cluster, namespace: str) -> None:
    denied = cluster.kubectl(
        "get", "secrets", "-n", namespace, kubeconfig=cluster.operator_kubeconfig, check=False
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    # The same request as admin succeeds: the denial is authorization, not a broken client.
    assert cluster.kubectl("get", "secrets", "-n", namespace).returncode == 0
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=cluster.operator_kubeconfig)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "loraf-operator"


def test_s3_rejects_wrong_secret_and_round_trips_with_right_one(
    cluster: Cluster, s3: Any, s3_bucket: str
) -> None:
    import boto3
    from botocore.config import Config

    wrong = boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        aws_access_key_id=cluster.s3_access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as err:
        wrong.put_object(Bucket=s3_bucket, Key="x", Body=b"nope")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    s3.put_object(Bucket=s3_bucket, Key="dir/hello.txt", Body=b"hello loraf")
    assert s3.get_object(Bucket=s3_bucket, Key="dir/hello.txt")["Body"].read() == b"hello loraf"
    with pytest.raises(ClientError):
        wrong.get_object(Bucket=s3_bucket, Key="dir/hello.txt")


def test_helm_and_kubectl_on_path(cluster: Cluster) -> None:
    import subprocess

    out = subprocess.run(
        ["helm", "version", "--short"], env=cluster.env, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("v")
