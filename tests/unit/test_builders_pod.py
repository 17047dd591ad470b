"""The pod pieces the training Job and the serving Deployment share (builders/pod.py): both
builders must give the same answer for the same spec fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loraf_operator.api.models import LoRAFineTune, LoRAServing
from loraf_operator.builders import BuildDefaults, build_job
from loraf_operator.builders.pod import GPU_TOLERATION
from loraf_operator.builders.serving import build_deployment
from loraf_trainer.model_loading import pvc_path

DEFAULTS = BuildDefaults("trainer:1", "http://s3.local:9000", "eu-west-1")
SPOT = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}


def _ft(resources: dict[str, Any], base_model: dict[str, Any] | None = None) -> LoRAFineTune:
    spec = {
        "baseModel": base_model or {"huggingFace": "org/model", "tokenSecretRef": {"name": "hf"}},
        "dataset": {"s3": "s3://bkt/train.jsonl", "format": "alpaca"},
        "training": {"maxSteps": 10},
        "output": {"s3": "s3://bkt/out", "credentialsSecretRef": {"name": "s3c"}},
        "resources": resources,
    }
    meta = {"name": "demo", "namespace": "ns", "uid": "u-1"}
    return LoRAFineTune.model_validate({"metadata": meta, "spec": spec})


def _sv(resources: dict[str, Any], base_model: dict[str, Any] | None = None) -> LoRAServing:
    spec = {
        "baseModel": base_model or {"huggingFace": "org/model", "tokenSecretRef": {"name": "hf"}},
        "credentialsSecretRef": {"name": "s3c"},
        "resources": resources,
    }
    meta = {"name": "chat", "namespace": "ns", "uid": "u-2"}
    return LoRAServing.model_validate({"metadata": meta, "spec": spec})


def _pods(resources: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    job = build_job(_ft(resources, **kw), 1, DEFAULTS)
    dep = build_deployment(_sv(resources, **kw), DEFAULTS)
    return job["spec"]["template"]["spec"], dep["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize(
    "tolerations",
    [[SPOT, SPOT], [SPOT, dict(GPU_TOLERATION), SPOT]],
    ids=["repeated", "repeats the GPU one"],
)
def test_repeated_tolerations_are_kept_once_in_the_job_and_the_deployment(
    tolerations: list[dict[str, Any]],
) -> None:
    for pod in _pods({"gpus": 1, "gpuType": "H100", "tolerations": tolerations}):
        assert pod["tolerations"] == [GPU_TOLERATION, SPOT]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}


def test_job_and_deployment_run_every_container_as_the_same_non_root_user() -> None:
    job, dep = _pods({"gpus": 0}, base_model={"s3": "s3://bkt/base/"})  # + init container
    assert job["securityContext"] == dep["securityContext"]
    assert job["securityContext"]["runAsNonRoot"] is True
    contexts = [c["securityContext"] for c in _containers(job) + _containers(dep)]
    assert len(contexts) == 4  # trainer; fetch-base, server, sync-adapters
    assert all(c == contexts[0] for c in contexts)
    assert contexts[0]["allowPrivilegeEscalation"] is False


def test_job_and_deployment_take_s3_keys_and_hf_token_by_reference_only() -> None:
    job, dep = _pods({"gpus": 0})

    def secret_env(c: dict[str, Any]) -> dict[str, Any]:
        return {e["name"]: e["valueFrom"] for e in c["env"] if "valueFrom" in e}

    want = {
        "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "s3c", "key": "AWS_ACCESS_KEY_ID"}},
        "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3c", "key": "AWS_SECRET_ACCESS_KEY"}},
        "HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert secret_env(job["containers"][0]) == want
    for c in _containers(dep):
        assert secret_env(c) == want


def test_a_claim_is_mounted_where_the_trainer_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAF_PVC_ROOT", raising=False)
    job, dep = _pods({"gpus": 0}, base_model={"pvc": {"claimName": "models", "path": "/llama"}})
    for pod in (job, dep):
        claims = {v["name"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = [m for c in _containers(pod) for m in c["volumeMounts"] if m["name"] in claims]
        assert mounts and all(m["readOnly"] for m in mounts)
        for m in mounts:
            assert claims[m["name"]]["persistentVolumeClaim"]["claimName"] == "models"
            assert pvc_path("models", "/llama").parent == Path(m["mountPath"])
