"""The pod pieces a training Job and a serving Deployment share: who the containers run
as, how S3 and Hugging Face credentials reach them (by Secret reference only), what they
request, where they may be scheduled, and where PVC claims are mounted (api.mounts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..api.models import BaseResources, S3CredentialsRef, SecretKeyRef
from ..api.mounts import PVC_ROOT

RUN_AS_USER = 1000
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def pod_security_context() -> dict[str, Any]:
    """Non-root with a fixed uid/gid; fsGroup makes the mounted volumes writable to it."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def storage_env(
    endpoint: str | None,
    region: str | None,
    credentials: S3CredentialsRef | None,
    hf_token: SecretKeyRef | None,
) -> list[dict[str, Any]]:
    """S3 endpoint/region, and the S3 keys and Hugging Face token by reference only."""
    env: list[dict[str, Any]] = []
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if region:
        env.append({"name": "AWS_REGION", "value": region})
    if credentials is not None:
        env.append(secret_env("AWS_ACCESS_KEY_ID", credentials.name, credentials.access_key_id_key))
        env.append(
            secret_env("AWS_SECRET_ACCESS_KEY", credentials.name, credentials.secret_access_key_key)
        )
    if hf_token is not None:
        env.append(secret_env("HF_TOKEN", hf_token.name, hf_token.key))
    return env


def container_resources(res: BaseResources) -> dict[str, Any]:
    """requests/limits of a trainer or server container: GPUs and memory are also limits
    (GPUs must be; memory so the pod is OOM-killed, not the node), CPU only a request."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.gpus > 0:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(res.gpus)
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    return _non_empty(requests=requests, limits=limits)


def gpu_placement(res: BaseResources) -> dict[str, Any]:
    """nodeSelector and tolerations: a GPU pod tolerates the GPU taint and, with a gpuType,
    selects that product; the spec's own selector wins on a shared key and its tolerations
    are added once each, so one listed twice (or the GPU one repeated) is in the pod once."""
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if res.gpus > 0:
        tolerations.append(dict(GPU_TOLERATION))
        if res.gpu_type:
            node_selector[GPU_PRODUCT_LABEL] = res.gpu_type
    node_selector.update(res.node_selector)
    for t in res.tolerations:
        if t not in tolerations:
            tolerations.append(t)
    return _non_empty(nodeSelector=node_selector, tolerations=tolerations)


def _non_empty(**fields: Any) -> dict[str, Any]:
    """The fields that hold something: an empty list or map is left out of a manifest."""
    return {k: v for k, v in fields.items() if v}


def claim_path(claim_name: str) -> str:
    """Where claim `claim_name` is mounted (the trainer's model_loading.pvc_path)."""
    return f"{PVC_ROOT}/{claim_name}"


def pvc_volumes(claims: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) mounting each claim read-only at claim_path, once each."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for i, claim in enumerate(dict.fromkeys(claims)):
        vol = f"pvc-{i}"
        volumes.append(
            {"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": vol, "mountPath": claim_path(claim), "readOnly": True})
    return volumes, mounts
