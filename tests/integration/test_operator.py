"""The operator against the real control plane: kube-apiserver (RBAC on), the Job
controller, the garbage collector and the scheduler, with kwok GPU nodes
(hack/kwok-stages.yaml: pods stay Running until annotated sim.loraf.dev/exit-code).

The operator runs as a subprocess under the non-admin `loraf-operator` identity with the
generated ClusterRole, watching namespaces t-test-op-* (the `namespace` fixture names
them after the test, so every test here is called test_op_*).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from loraf_operator.api import run_layout, run_manifest
from loraf_operator.api.trainer_config import TrainerConfig

from .operator_fixtures import (
    OperatorHandle,
    operator,
    report_as_run,
    start_operator,
    wait_until,
)

__all__ = ["operator"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(120)

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"huggingFace": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
        "training": {"maxSteps": 10},
        "output": {"s3": f"s3://out/{name}", "credentialsSecretRef": {"name": "s3-creds"}},
        "resources": {"gpus": 1, "gpuType": GPU_PRODUCT},
    }
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def ensure_s3_secret(cluster: Any, ns: str, name: str = "s3-creds") -> None:
    """The Secret manifest() references (the operator creates no Job without it)."""
    if cluster.kubectl("get", "secret", name, "-n", ns, check=False).returncode != 0:
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            # The test S3's real keys: the operator reads a finished run's manifest with them.
            f"--from-literal=AWS_ACCESS_KEY_ID={cluster.s3_access_key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={cluster.s3_secret_key}",
        )


def apply(cluster: Any, obj: dict[str, Any], secret: bool = True) -> None:
    """kubectl apply; with `secret`, first the S3 Secret the manifest references."""
    ref = ((obj.get("spec") or {}).get("output") or {}).get("credentialsSecretRef")
    if secret and ref:
        ensure_s3_secret(cluster, obj["metadata"]["namespace"], ref["name"])
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def get_ft(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    return cluster.get_json("lorafinetune", name, "-n", ns)


def cond(ft: dict[str, Any], type_: str) -> dict[str, Any]:
    conds = (ft.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), {})


def wait_cond(
    cluster: Any,
    ns: str,
    name: str,
    type_: str,
    status: str = "True",
    reason: str | None = None,
    stall: float = 30,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        ft = get_ft(cluster, ns, name)
        c = cond(ft, type_)
        ok = c.get("status") == status and (reason is None or c.get("reason") == reason)
        return ft if ok else None

    try:
        return wait_until(
            f"{name} {type_}={status} ({reason})",
            check,
            stall,
            seen=lambda: get_ft(cluster, ns, name).get("status"),
        )
    except AssertionError as e:
        status_now = get_ft(cluster, ns, name).get("status")
        raise AssertionError(f"{e}\nstatus: {json.dumps(status_now, indent=1)}") from None


def pods(cluster: Any, ns: str, job: str) -> list[dict[str, Any]]:
    items = cluster.get_json("pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job}")["items"]
    return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])


def running_pod(cluster: Any, ns: str, job: str) -> str:
    def check() -> str | None:
        live = [p for p in pods(cluster, ns, job) if p.get("status", {}).get("phase") == "Running"]
        return live[-1]["metadata"]["name"] if live else None

    return wait_until(f"a running pod of {job}", check)


def finish_pod(
    cluster: Any, ns: str, pod: str, code: int, reason: str = "", message: str = ""
) -> None:
    ann = [f"sim.loraf.dev/exit-code={code}"]
    if reason:
        ann.append(f"sim.loraf.dev/reason={reason}")
    if message:
        ann.append(f"sim.loraf.dev/message={message}")
    cluster.kubectl("annotate", "pod", pod, "-n", ns, "--overwrite", *ann)


def upload_run(cluster: Any, ns: str, name: str, run: int = 1) -> str:
    """What the trainer uploads at the end of run `run` (an adapter file, then
    manifest.json last), written to the test S3 like the trainer does; returns the prefix."""
    import boto3
    from botocore.config import Config

    ft = get_ft(cluster, ns, name)
    bucket, _, prefix = ft["spec"]["output"]["s3"].removeprefix("s3://").partition("/")
    root = f"{prefix.strip('/')}/run-{run}"
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        aws_access_key_id=cluster.s3_access_key,
        aws_secret_access_key=cluster.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
    weights = b"w" * 64
    key = f"{run_layout.ADAPTER_DIR}/{run_layout.ADAPTER_WEIGHTS}"
    s3.put_object(Bucket=bucket, Key=f"{root}/{key}", Body=weights)
    manifest = {
        "kind": run_manifest.MANIFEST_KIND,
        "version": run_manifest.MANIFEST_VERSION,
        "resource": {"namespace": ns, "name": name, "uid": ft["metadata"]["uid"], "run": run},
        "metrics": {"evalLossBase": 3.1, "evalLossAdapter": 2.2},
        "files": [{"path": key, "size": len(weights), "sha256": "-"}],
    }
    body = json.dumps(manifest).encode()
    s3.put_object(Bucket=bucket, Key=f"{root}/{run_layout.MANIFEST}", Body=body)
    return f"s3://{bucket}/{root}"


def events(cluster: Any, ns: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get_json(
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=LoRAFineTune",
    )["items"]
    return items


# ---------------------------------------------------------------------------------------------


def test_op_create_run_succeed(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns, name = namespace, "demo"
    apply(cluster, manifest(name, ns, backoffLimit=2, activeDeadlineSeconds=3600))
    ft = wait_cond(cluster, ns, name, "Running")
    uid = ft["metadata"]["uid"]
    st = ft["status"]
    assert st["phase"] == "Running"
    assert st["run"]["number"] == 1 and st["run"]["jobName"] == "demo-r1"
    assert st["observedGeneration"] == 1
    assert cond(ft, "Validated")["status"] == "True"
    assert cond(ft, "Scheduled")["status"] == "True"
    # No kopf bookkeeping in status, no finalizer (children go by owner references).
    assert set(st) <= {"observedGeneration", "phase", "message", "model", "conditions", "run"}
    assert not ft["metadata"].get("finalizers")

    # Children: owned, labelled, as built.
    for kind, child in (
        ("sa", "demo-r1"),
        ("role", "demo-r1"),
        ("rolebinding", "demo-r1"),
        ("configmap", "demo-r1-config"),
        ("job", "demo-r1"),
    ):
        obj = cluster.get_json(kind, child, "-n", ns)
        refs = obj["metadata"]["ownerReferences"]
        assert refs[0]["uid"] == uid and refs[0]["controller"] is True, kind
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loraf"
    role = cluster.get_json("role", "demo-r1", "-n", ns)
    assert role["rules"] == [
        {
            "apiGroups": ["loraf.dev"],
            "resources": ["lorafinetunes/status"],
            "resourceNames": ["demo"],
            "verbs": ["get", "patch"],
        }
    ]
    cm = cluster.get_json("configmap", "demo-r1-config", "-n", ns)
    cfg = TrainerConfig.from_yaml(cm["data"]["config.yaml"])
    assert (cfg.name, cfg.namespace, cfg.run, cfg.uid) == (name, ns, 1, uid)
    job = cluster.get_json("job", "demo-r1", "-n", ns)
    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 3600
    assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == [
        "FailJob",
        "Ignore",
        "Ignore",
    ]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["loraf", "train", "--config", "/etc/loraf/config.yaml"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["AWS_ENDPOINT_URL"]["value"] == cluster.s3_endpoint
    assert pod["serviceAccountName"] == "demo-r1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": GPU_PRODUCT}
    live = pods(cluster, ns, "demo-r1")
    assert len(live) == 1 and live[0]["spec"]["nodeName"].startswith("gpu-node-")

    # The trainer (as the run's own ServiceAccount) reports a result that is not what it
    # uploaded, uploads, then exits 0: the status tells what the manifest in S3 says.
    result = {
        "adapterUri": "s3://elsewhere/forged/adapter/",
        "manifestUri": "s3://elsewhere/forged/manifest.json",
        "sizeBytes": 1234,
        "evalLossBase": 0.1,
        "evalLossAdapter": 0.01,
    }
    prefix = upload_run(cluster, ns, name)
    report_as_run(
        cluster,
        ns,
        name,
        "demo-r1",
        {"runNumber": 1, "stage": "Done", "step": 10, "result": result},
    )
    finish_pod(cluster, ns, live[0]["metadata"]["name"], 0)
    cluster.kubectl(
        "wait", "--for=condition=Succeeded", f"lorafinetune/{name}", "-n", ns, "--timeout=30s"
    )
    ft = get_ft(cluster, ns, name)
    st = ft["status"]
    assert st["phase"] == "Succeeded"
    assert st["artifacts"] == {
        "adapterUri": f"{prefix}/adapter/",
        "manifestUri": f"{prefix}/manifest.json",
        "sizeBytes": 64,
        "sha256": "-",
    }
    assert st["evaluation"] == {"evalLossBase": 3.1, "evalLossAdapter": 2.2}
    assert st["progress"]["step"] == 10  # the trainer's field, left alone
    assert st["run"]["completionTime"]
    assert cond(ft, "Failed")["status"] == "False" and cond(ft, "Running")["status"] == "False"
    reasons = {e["reason"] for e in events(cluster, ns, name)}
    assert {"RunStarted", "PodRunning", "Completed"} <= reasons, reasons


def test_op_run_service_account_is_least_privilege(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, manifest("mine", ns))
    apply(cluster, manifest("other", ns))
    wait_until(
        "both Jobs",
        lambda: all(
            cluster.kubectl("get", "job", j, "-n", ns, check=False).returncode == 0
            for j in ("mine-r1", "other-r1")
        ),
    )
    token = cluster.kubectl("create", "token", "mine-r1", "-n", ns).stdout.strip()
    as_sa = ("--token=" + token, "--kubeconfig=" + cluster.kubeconfig)
    body = json.dumps({"status": {"progress": {"runNumber": 1, "step": 1}}})

    def kc(*args: str) -> Any:
        return cluster.kubectl(*args, *as_sa, check=False)

    own = kc(
        "patch",
        "lorafinetune",
        "mine",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        body,
    )
    assert own.returncode == 0, own.stderr
    other = kc(
        "patch",
        "lorafinetune",
        "other",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        body,
    )
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()
    spec_patch = kc(
        "patch", "lorafinetune", "mine", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    assert spec_patch.returncode != 0 and "forbidden" in spec_patch.stderr.lower()
    secret = kc("get", "secret", "s3-creds", "-n", ns)
    assert secret.returncode != 0 and "forbidden" in secret.stderr.lower()
    assert kc("auth", "can-i", "list", "pods", "-n", ns).stdout.strip() == "no"

    # The trainer's identity cannot forge the outcome: the ValidatingAdmissionPolicy
    # (config/policy/trainer-status.yaml) refuses every status write outside progress.
    wait_cond(cluster, ns, "mine", "Running")
    before = get_ft(cluster, ns, "mine")["status"]
    done = {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    forged = [
        {"phase": "Succeeded"},
        {"conditions": [done]},
        {"artifacts": {"adapterUri": "s3://evil/adapter/"}},
        {"run": {"number": 9, "jobName": "mine-r9"}},
        {"progress": {"step": 2}, "history": []},
    ]
    for status in forged:
        got = kc("patch", "lorafinetune", "mine", "-n", ns, "--subresource=status",
                 "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip
        assert got.returncode != 0, status
        assert "may change only status.progress" in got.stderr, got.stderr
    after = get_ft(cluster, ns, "mine")["status"]
    assert {k: v for k, v in after.items() if k != "progress"} == {
        k: v for k, v in before.items() if k != "progress"
    }
    assert after["progress"]["step"] == 1  # the one allowed write above


def test_op_completed_job_without_a_manifest_fails(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    """Exit 0 is not success: a Job that completes with no valid upload in S3 is Failed."""
    ns = namespace
    apply(cluster, manifest("empty", ns))
    finish_pod(cluster, ns, running_pod(cluster, ns, "empty-r1"), 0)
    ft = wait_cond(cluster, ns, "empty", "Failed", reason="ArtifactsInvalid")
    assert "run-1/manifest.json is missing" in cond(ft, "Failed")["message"]
    assert cond(ft, "Succeeded")["status"] == "False"
    assert not ft["status"].get("artifacts")
    # A manifest of another run copied into this run's prefix does not count either.
    apply(cluster, manifest("copied", ns))
    src = upload_run(cluster, ns, "copied", run=2)
    _copy_prefix(cluster, src, src.replace("/run-2", "/run-1"))
    finish_pod(cluster, ns, running_pod(cluster, ns, "copied-r1"), 0)
    ft = wait_cond(cluster, ns, "copied", "Failed", reason="ArtifactsInvalid")
    assert "resource.run is 2, not 1" in cond(ft, "Failed")["message"]


def _copy_prefix(cluster: Any, src: str, dst: str) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=cluster.s3_endpoint,
                      aws_access_key_id=cluster.s3_access_key,
                      aws_secret_access_key=cluster.s3_secret_key, region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))  # fmt: skip
    bucket, _, sp = src.removeprefix("s3://").partition("/")
    dp = dst.removeprefix("s3://").partition("/")[2]
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=sp + "/").get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        s3.put_object(Bucket=bucket, Key=dp + o["Key"][len(sp) :], Body=body)


def test_op_unschedulable(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns = namespace
    # One GPU (more is refused at apply time) but more memory than any node has (512Gi).
    apply(cluster, manifest("big", ns, resources={"memory": "4Ti"}))
    ft = wait_cond(cluster, ns, "big", "Scheduled", "False", "Unschedulable")
    msg = cond(ft, "Scheduled")["message"]
    assert "Insufficient memory" in msg, msg
    assert ft["status"]["phase"] == "Scheduling"
    assert "Unschedulable" in ft["status"]["message"]
    assert any(
        e["reason"] == "Unschedulable" and e["type"] == "Warning"
        for e in events(cluster, ns, "big")
    )


def test_op_dataset_invalid_fails_fast(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, manifest("bad-data", ns, backoffLimit=3))
    pod = running_pod(cluster, ns, "bad-data-r1")
    msg = "row 7: field 'output' is missing"
    finish_pod(cluster, ns, pod, 65, message=msg)
    ft = wait_cond(cluster, ns, "bad-data", "Failed", "True", "DatasetInvalid")
    assert cond(ft, "Failed")["message"] == msg
    assert ft["status"]["phase"] == "Failed"
    assert (
        len(pods(cluster, ns, "bad-data-r1")) == 1
    )  # failed fast: no retry despite backoffLimit 3


def test_op_oomkilled(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns = namespace
    apply(cluster, manifest("oom", ns, backoffLimit=0))
    pod = running_pod(cluster, ns, "oom-r1")
    finish_pod(cluster, ns, pod, 137, reason="OOMKilled")
    ft = wait_cond(cluster, ns, "oom", "Failed", "True", "OOMKilled")
    assert "backoffLimit 0 exceeded" in cond(ft, "Failed")["message"]


def test_op_image_pull_error(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns = namespace
    apply(cluster, manifest("noimg", ns, resources={"image": "loraf.invalid/unpullable:latest"}))
    ft = wait_cond(cluster, ns, "noimg", "Running", "False", "ErrImagePull")
    assert "loraf.invalid/unpullable" in cond(ft, "Running")["message"]
    assert ft["status"]["phase"] == "Scheduling"
    assert ft["status"]["message"].startswith("ErrImagePull")


def test_op_deadline_exceeded(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns = namespace
    apply(cluster, manifest("slow", ns, activeDeadlineSeconds=2))
    ft = wait_cond(cluster, ns, "slow", "Failed", "True", "DeadlineExceeded", stall=30)
    assert ft["status"]["phase"] == "Failed"


def test_op_preempted_is_retried_not_failed(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, manifest("pre", ns, backoffLimit=0))
    first = running_pod(cluster, ns, "pre-r1")
    finish_pod(cluster, ns, first, 75, message="SIGTERM: checkpoint saved at step 4")

    def retried() -> dict[str, Any] | None:
        ft = get_ft(cluster, ns, "pre")
        c = cond(ft, "Running")
        return ft if c.get("status") == "True" and "Preempted" in c.get("message", "") else None

    ft = wait_until("Running again after preemption", retried)
    assert "not counted against backoffLimit" in cond(ft, "Running")["message"]
    assert cond(ft, "Failed")["status"] == "False"
    # What `retry N` relies on: a failure the podFailurePolicy ignores is not in status.failed.
    assert cluster.get_json("job", "pre-r1", "-n", ns)["status"].get("failed", 0) == 0
    second = running_pod(cluster, ns, "pre-r1")
    assert second != first
    assert any(e["reason"] == "PodRunning" for e in events(cluster, ns, "pre"))
    upload_run(cluster, ns, "pre")
    finish_pod(cluster, ns, second, 0)
    wait_cond(cluster, ns, "pre", "Succeeded")


def test_op_suspend_and_resume(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns = namespace
    apply(cluster, manifest("held", ns, suspend=True))
    ft = wait_cond(cluster, ns, "held", "Suspended", "True", "Queued")
    assert ft["status"]["phase"] == "Queued"
    assert cluster.get_json("job", "held-r1", "-n", ns)["spec"]["suspend"] is True
    assert pods(cluster, ns, "held-r1") == []

    cluster.kubectl(
        "patch",
        "lorafinetune",
        "held",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    ft = wait_cond(cluster, ns, "held", "Running")
    assert ft["status"]["run"]["number"] == 1  # same run: suspend is not a new spec
    assert ft["status"]["observedGeneration"] == 2
    assert cond(ft, "Suspended")["reason"] == "Resumed"

    cluster.kubectl(
        "patch", "lorafinetune", "held", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    ft = wait_cond(cluster, ns, "held", "Suspended", "True", "Suspended")
    assert ft["status"]["phase"] == "Suspended"
    wait_until(
        "pods gone while suspended",
        lambda: (
            not [
                p
                for p in pods(cluster, ns, "held-r1")
                if not p["metadata"].get("deletionTimestamp")
            ]
        ),
    )
    assert ft["status"]["run"]["number"] == 1


def test_op_spec_change_starts_new_run(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, manifest("evolve", ns))
    wait_cond(cluster, ns, "evolve", "Running")
    obj = manifest("evolve", ns)
    obj["spec"]["training"] = {"maxSteps": 20}
    apply(cluster, obj)

    def run2() -> dict[str, Any] | None:
        ft = get_ft(cluster, ns, "evolve")
        return ft if (ft["status"].get("run") or {}).get("number") == 2 else None

    ft = wait_until("run 2", run2)
    assert ft["status"]["run"]["generation"] == 2 and ft["status"]["observedGeneration"] == 2
    hist = ft["status"]["history"]
    assert [h["number"] for h in hist] == [1] and hist[0]["reason"] == "Superseded"
    assert hist[0]["phase"] == "Stopped" and hist[0]["stoppedIn"] != "Stopped"  # never "Running"
    wait_until(
        "old Job gone",
        lambda: cluster.kubectl("get", "job", "evolve-r1", "-n", ns, check=False).returncode != 0,
    )
    assert cluster.kubectl("get", "sa", "evolve-r1", "-n", ns, check=False).returncode != 0
    cfg = TrainerConfig.from_yaml(
        cluster.get_json("configmap", "evolve-r2-config", "-n", ns)["data"]["config.yaml"]
    )
    assert cfg.run == 2 and cfg.spec.training.max_steps == 20
    wait_cond(cluster, ns, "evolve", "Running")


def test_op_new_run_shows_none_of_the_old_runs_progress(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, manifest("fresh", ns))
    wait_cond(cluster, ns, "fresh", "Running")
    old = {"runNumber": 1, "stage": "Training", "step": 10, "totalSteps": 10, "percent": 100.0}
    report_as_run(cluster, ns, "fresh", "fresh-r1", {**old, "loss": 1.5, "eta": "0s"})
    wait_until("run 1's progress", lambda: get_ft(cluster, ns, "fresh")["status"].get("progress"))
    obj = manifest("fresh", ns)
    obj["spec"]["training"] = {"maxSteps": 20}
    apply(cluster, obj)

    def run2() -> dict[str, Any] | None:
        ft = get_ft(cluster, ns, "fresh")
        return ft if (ft["status"].get("run") or {}).get("number") == 2 else None

    ft = wait_until("run 2", run2)
    assert "progress" not in ft["status"], ft["status"]["progress"]
    # the old run's identity can no longer write progress back
    wait_until(
        "run 1's ServiceAccount gone",
        lambda: cluster.kubectl("get", "sa", "fresh-r1", "-n", ns, check=False).returncode != 0,
    )


def test_op_delete_removes_children(cluster: Any, namespace: str, operator: OperatorHandle) -> None:
    ns = namespace
    apply(cluster, manifest("gone", ns))
    wait_cond(cluster, ns, "gone", "Running")
    cluster.kubectl("delete", "lorafinetune", "gone", "-n", ns, "--timeout=20s")

    def no_children() -> bool:
        out = cluster.kubectl(
            "get",
            "job,sa,role,rolebinding,configmap,pods",
            "-n",
            ns,
            "-l",
            "loraf.dev/finetune=gone",
            "-o",
            "name",
        ).stdout.strip()
        return out == ""

    wait_until("garbage collection of the run's children", no_children, stall=30)


def test_op_job_deleted_ends_the_run(
    cluster: Any, namespace: str, operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, manifest("lost", ns))
    wait_cond(cluster, ns, "lost", "Running")
    cluster.kubectl("delete", "job", "lost-r1", "-n", ns, "--wait=false")
    ft = wait_cond(cluster, ns, "lost", "Failed", "True", "JobDeleted")
    assert ft["status"]["phase"] == "Failed"
    time.sleep(1)  # a recreated Job would appear within this second
    assert cluster.kubectl("get", "job", "lost-r1", "-n", ns, check=False).returncode != 0


def test_restart_mid_reconcile_no_duplicate_job(
    cluster: Any, namespace: str, crds: list[str]
) -> None:
    """Kill -9 the operator while it creates runs; a restarted one finishes them, once."""
    ns = namespace
    op = start_operator(cluster, namespaces=[ns])
    names = [f"r{i}" for i in range(6)]
    ensure_s3_secret(cluster, ns)
    try:
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": [manifest(n, ns) for n in names]}
            ),
        )
        wait_until(
            "the first child",
            lambda: cluster.kubectl(
                "get", "sa,job", "-n", ns, "-l", "app.kubernetes.io/managed-by=loraf", "-o", "name"
            ).stdout.strip(),
            every=0.02,
        )
        op.kill()
        before = cluster.kubectl("get", "jobs", "-n", ns, "-o", "name").stdout.split()
        op = start_operator(cluster, namespaces=[ns])
        for n in names:
            wait_cond(cluster, ns, n, "Running")
        jobs = cluster.get_json("jobs", "-n", ns)["items"]
        assert sorted(j["metadata"]["name"] for j in jobs) == sorted(f"{n}-r1" for n in names)
        for n in names:
            ft = get_ft(cluster, ns, n)
            assert ft["status"]["run"]["number"] == 1
            assert len(pods(cluster, ns, f"{n}-r1")) == 1
        print(f"jobs existing at the kill: {len(before)} of {len(names)}")
    finally:
        op.stop()


def test_restart_after_a_forged_run_number_no_second_job(
    cluster: Any, namespace: str, crds: list[str]
) -> None:
    """A status write that rewrites status.run (here as admin: the policy stops the trainer)
    cannot make a restarted operator create a second Job: the run is the Job it owns."""
    ns = namespace
    op = start_operator(cluster, namespaces=[ns])
    try:
        apply(cluster, manifest("forged", ns))
        wait_cond(cluster, ns, "forged", "Running")
        op.stop()
        forged = {"status": {"run": {"number": 7, "jobName": "forged-r7"}}}
        cluster.kubectl("patch", "lorafinetune", "forged", "-n", ns, "--subresource=status",
                        "--type=merge", "-p", json.dumps(forged))  # fmt: skip
        op = start_operator(cluster, namespaces=[ns])
        wait_until(
            "status.run corrected to the owned Job",
            lambda: get_ft(cluster, ns, "forged")["status"]["run"]["number"] == 1,
        )
        run = get_ft(cluster, ns, "forged")["status"]["run"]
        assert run["jobName"] == "forged-r1"
        # The run is still followed through its real Job: it finishes as that Job does.
        upload_run(cluster, ns, "forged")
        finish_pod(cluster, ns, running_pod(cluster, ns, "forged-r1"), 0)
        wait_cond(cluster, ns, "forged", "Succeeded")
        jobs = cluster.get_json("jobs", "-n", ns)["items"]
        assert [j["metadata"]["name"] for j in jobs] == ["forged-r1"]
        assert "does not match the Jobs it owns" in op.logs()
    finally:
        op.stop()
