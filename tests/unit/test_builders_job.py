"""The run's Job, table-tested: one spec in, the exact fields that matter out."""

from __future__ import annotations

from typing import Any

import pytest

from loraf_operator.api.models import LoRAFineTune, LoRAServing
from loraf_operator.builders import (
    RUN_CHILD_KINDS,
    BuildDefaults,
    build_job,
    build_run,
    run_child_name,
    run_spec_hash,
    serving,
)
from loraf_operator.builders.labels import RUN_SELECTOR
from loraf_operator.builders.pod import GPU_TOLERATION

DEFAULTS = BuildDefaults("registry.local/trainer:1", "http://s3.local:9000", "eu-west-1")


def ft(spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None) -> LoRAFineTune:
    base: dict[str, Any] = {
        "baseModel": {"huggingFace": "org/model"},
        "dataset": {"s3": "s3://bkt/train.jsonl", "format": "alpaca"},
        "training": {"maxSteps": 10},
        "output": {"s3": "s3://bkt/out"},
    }
    base.update(spec or {})
    meta = {
        "name": "demo",
        "namespace": "ns",
        "uid": "uid-1",
        "generation": 3,
        "labels": labels or {},
    }
    return LoRAFineTune.model_validate({"metadata": meta, "spec": base})


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def container(job: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(job)["containers"][0]


def env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(job)["env"]}


def test_defaults() -> None:
    job = build_job(ft(), 2, DEFAULTS)
    assert job["metadata"]["name"] == "demo-r2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    s = job["spec"]
    assert (s["backoffLimit"], s["suspend"], s["completions"], s["parallelism"]) == (3, False, 1, 1)
    assert "activeDeadlineSeconds" not in s and "ttlSecondsAfterFinished" not in s
    rules = s["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [64, 65, 66, 77]},
    }
    # 69: the trainer waited out an S3 outage for output.retry.timeoutSeconds; 75: preempted.
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [69, 75]
    assert rules[2] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    p = pod_spec(job)
    assert p["restartPolicy"] == "Never"
    assert p["terminationGracePeriodSeconds"] == 120  # the trainer plans its shutdown in it
    assert p["serviceAccountName"] == "demo-r2" and p["automountServiceAccountToken"] is True
    assert (
        p["securityContext"]["runAsNonRoot"] is True and p["securityContext"]["runAsUser"] == 1000
    )
    assert p["tolerations"] == [GPU_TOLERATION]
    assert "nodeSelector" not in p
    c = container(job)
    assert c["image"] == "registry.local/trainer:1"
    assert c["command"] == ["loraf", "train", "--config", "/etc/loraf/config.yaml"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"] == {
        "requests": {"nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    vols = {v["name"]: v for v in p["volumes"]}
    assert vols["shm"] == {"name": "shm", "emptyDir": {"medium": "Memory"}}
    assert vols["config"]["configMap"]["name"] == "demo-r2-config"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/loraf", "/dev/shm", "/workspace"} <= mounts
    e = env(job)
    assert e["LORAF_NAMESPACE"]["value"] == "ns" and e["LORAF_NAME"]["value"] == "demo"
    assert e["AWS_ENDPOINT_URL"]["value"] == "http://s3.local:9000"
    assert e["AWS_REGION"]["value"] == "eu-west-1"
    assert "AWS_ACCESS_KEY_ID" not in e and "HF_TOKEN" not in e  # ambient credentials


TABLE: list[tuple[str, dict[str, Any], Any]] = [
    ("suspend", {"suspend": True}, lambda j: j["spec"]["suspend"] is True),
    ("backoff", {"backoffLimit": 0}, lambda j: j["spec"]["backoffLimit"] == 0),
    ("deadline", {"activeDeadlineSeconds": 60}, lambda j: j["spec"]["activeDeadlineSeconds"] == 60),
    ("ttl", {"ttlSecondsAfterFinished": 0}, lambda j: j["spec"]["ttlSecondsAfterFinished"] == 0),
    ("image", {"resources": {"image": "my/img:2"}}, lambda j: container(j)["image"] == "my/img:2"),
    (
        "gpu type",
        {"resources": {"gpus": 1, "gpuType": "NVIDIA-A100"}},
        lambda j: (
            pod_spec(j)["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100"}
            and container(j)["resources"]["limits"]["nvidia.com/gpu"] == "1"
        ),
    ),
    (
        "node selector merged",
        {"resources": {"gpuType": "H", "nodeSelector": {"pool": "a"}}},
        lambda j: pod_spec(j)["nodeSelector"] == {"nvidia.com/gpu.product": "H", "pool": "a"},
    ),
    (
        "cpu only",
        {"resources": {"gpus": 0, "cpu": 2, "memory": "4Gi"}},
        lambda j: (
            "tolerations" not in pod_spec(j)
            and container(j)["resources"]
            == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
        ),
    ),
    (
        "tolerations appended, no duplicate",
        {
            "resources": {
                "tolerations": [dict(GPU_TOLERATION), {"key": "spot", "operator": "Exists"}]
            }
        },
        lambda j: (
            pod_spec(j)["tolerations"] == [GPU_TOLERATION, {"key": "spot", "operator": "Exists"}]
        ),
    ),
    (
        "affinity, priority, pull secrets",
        {
            "resources": {
                "affinity": {"nodeAffinity": {}},
                "priorityClassName": "hi",
                "imagePullSecrets": ["r"],
            }
        },
        lambda j: (
            pod_spec(j)["affinity"] == {"nodeAffinity": {}}
            and pod_spec(j)["priorityClassName"] == "hi"
            and pod_spec(j)["imagePullSecrets"] == [{"name": "r"}]
        ),
    ),
    (
        "secrets by reference only",
        {
            "baseModel": {
                "huggingFace": "org/gated",
                "tokenSecretRef": {"name": "hf", "key": "tok"},
            },
            "output": {"s3": "s3://bkt/out", "credentialsSecretRef": {"name": "s3c"}},
        },
        lambda j: (
            env(j)["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
            and env(j)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
            == {"name": "s3c", "key": "AWS_ACCESS_KEY_ID"}
            and env(j)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"]
            == "AWS_SECRET_ACCESS_KEY"
        ),
    ),
    (
        "spec endpoint wins over default",
        {"output": {"s3": "s3://bkt/out", "endpoint": "https://minio:9000", "region": "x"}},
        lambda j: (
            env(j)["AWS_ENDPOINT_URL"]["value"] == "https://minio:9000"
            and env(j)["AWS_REGION"]["value"] == "x"
        ),
    ),
    (
        "grace period from the spec",
        {"resources": {"terminationGracePeriodSeconds": 600}},
        lambda j: pod_spec(j)["terminationGracePeriodSeconds"] == 600,
    ),
    (
        "model cache pvc",
        {"resources": {"modelCachePvc": "cache"}},
        lambda j: (
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": "cache"}}
            in pod_spec(j)["volumes"]
            and env(j)["HF_HOME"]["value"] == "/cache/huggingface"
        ),
    ),
    (
        "pvc sources mounted read-only once per claim",
        {
            "baseModel": {"pvc": {"claimName": "models", "path": "smol"}},
            "dataset": {"pvc": {"claimName": "models", "path": "d.jsonl"}, "format": "alpaca"},
        },
        lambda j: (
            [m for m in container(j)["volumeMounts"] if m["mountPath"].startswith("/mnt/pvc")]
            == [{"name": "pvc-0", "mountPath": "/mnt/pvc/models", "readOnly": True}]
        ),
    ),
]


@pytest.mark.parametrize(("case", "spec", "check"), TABLE, ids=[t[0] for t in TABLE])
def test_table(case: str, spec: dict[str, Any], check: Any) -> None:
    assert check(build_job(ft(spec), 1, DEFAULTS)), case


def test_queue_label_is_passed_to_the_job() -> None:
    job = build_job(ft(labels={"kueue.x-k8s.io/queue-name": "gpu"}), 1)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert "kueue.x-k8s.io/queue-name" not in build_job(ft(), 1)["metadata"]["labels"]


def test_no_secret_values_anywhere() -> None:
    spec = {"output": {"s3": "s3://bkt/out", "credentialsSecretRef": {"name": "s3c"}}}
    for obj in build_run(ft(spec), 1, DEFAULTS):
        assert "value: s3c" not in str(obj)
        if obj["kind"] == "Job":
            assert all(
                "valueFrom" in e
                or e["name"].startswith(("LORAF_", "AWS_ENDPOINT", "AWS_REGION", "HOME"))
                for e in container(obj)["env"]
            )


def test_spec_hash_ignores_suspend_and_serving_only() -> None:
    h = run_spec_hash(ft().spec)
    assert run_spec_hash(ft({"suspend": True}).spec) == h
    assert run_spec_hash(ft({"serving": {"enabled": True}}).spec) == h
    assert run_spec_hash(ft({"training": {"maxSteps": 11}}).spec) != h
    job = build_job(ft(), 1)
    assert job["metadata"]["annotations"]["loraf.dev/spec-hash"] == h
    assert job["metadata"]["annotations"]["loraf.dev/finetune"] == "demo"
    assert job["spec"]["template"]["metadata"]["labels"]["loraf.dev/run"] == "1"


# -- more than one GPU / node


def test_one_pod_with_several_gpus_is_a_plain_job() -> None:
    job = build_job(ft({"resources": {"gpus": 4}}), 1, DEFAULTS)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1
    assert "completionMode" not in job["spec"] and "subdomain" not in pod_spec(job)
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert not any(e["name"].startswith("LORAF_RENDEZVOUS") for e in container(job)["env"])
    assert [o["kind"] for o in build_run(ft({"resources": {"gpus": 4}}), 1)].count("Service") == 0


def test_multi_node_run_is_an_indexed_job_with_a_headless_service() -> None:
    from loraf_operator.builders import build_rendezvous_service

    f = ft({"resources": {"gpus": 8, "nodes": 3}})
    job = build_job(f, 2, DEFAULTS)
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (3, 3, "Indexed")
    assert spec["podFailurePolicy"] == build_job(ft(), 2, DEFAULTS)["spec"]["podFailurePolicy"]
    assert pod_spec(job)["subdomain"] == "demo-r2"
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["LORAF_RENDEZVOUS_ENDPOINT"]["value"] == "demo-r2-0.demo-r2:29400"
    assert env["LORAF_RENDEZVOUS_ID"]["value"] == "demo-r2"
    assert env["LORAF_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert container(job)["ports"] == [{"name": "rendezvous", "containerPort": 29400}]
    svc = build_rendezvous_service(f, 2)
    assert svc is not None
    assert svc["metadata"]["name"] == "demo-r2"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": "demo-r2"}
    children = build_run(f, 2)
    # The one list of a run's children: what the reconciler deletes is what was built.
    assert [o["kind"] for o in children] == list(RUN_CHILD_KINDS)
    assert [o["metadata"]["name"] for o in children] == [
        run_child_name(kind, "demo", 2) for kind in RUN_CHILD_KINDS
    ]


def test_the_run_watches_select_run_children_and_not_serving_pods() -> None:
    def selected(labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in RUN_SELECTOR.items())

    f = ft({"resources": {"gpus": 2, "nodes": 2}})
    assert all(selected(o["metadata"]["labels"]) for o in build_run(f, 1))
    pod = build_job(f, 1)["spec"]["template"]["metadata"]["labels"]
    assert selected(pod)
    meta = {"name": "sv", "namespace": "ns"}
    sv = LoRAServing.model_validate({"metadata": meta, "spec": {"baseModel": {"huggingFace": "m"}}})
    dep = serving.build_deployment(sv)
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loraf"
    assert not selected(dep["spec"]["template"]["metadata"]["labels"])
