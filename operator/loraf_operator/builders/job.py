"""The run's batch/v1 Job: one pod running `loraf train` on the mounted TrainerConfig (an
Indexed Job of `resources.nodes` pods, with a headless Service, for a multi-node run).

Retry semantics live in the Job, not in the operator: `backoffLimit` counts infrastructure
failures, `podFailurePolicy` fails the Job at once on the trainer's user-error exit codes
(retrying a bad dataset or wrong S3 keys cannot help) and ignores preemption (exit 75 after
a checkpoint, or a pod disruption) and a storage outage the trainer waited out (exit 69),
so those retries do not use up `backoffLimit`.
"""

from __future__ import annotations

from typing import Any

from ..api import distributed as dist
from ..api.exitcodes import FAIL_FAST_CODES, RETRIED_FREE_CODES
from ..api.models import LoRAFineTune
from ..api.trainer_config import CONFIG_MOUNT_PATH
from . import pod
from .common import BuildDefaults, child_metadata, generation
from .labels import JOB_NAME, QUEUE_NAME, run_annotations, run_labels
from .naming import child_name, config_map_name, service_name

CONTAINER = "trainer"
CONFIG_DIR = CONFIG_MOUNT_PATH.rsplit("/", 1)[0]  # /etc/loraf
WORK_DIR = "/workspace"
CACHE_DIR = "/cache"
TERMINATION_LOG = "/dev/termination-log"


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": list(FAIL_FAST_CODES),
                },
            },
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": list(RETRIED_FREE_CODES),
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def build_env(ft: LoRAFineTune, defaults: BuildDefaults) -> list[dict[str, Any]]:
    """Container env: identity, S3 endpoint/region, and secrets only by reference."""
    spec = ft.spec
    env: list[dict[str, Any]] = [
        {"name": "LORAF_NAMESPACE", "value": ft.namespace},
        {"name": "LORAF_NAME", "value": ft.name},
        {"name": "LORAF_WORK_DIR", "value": WORK_DIR},
        {"name": "HOME", "value": WORK_DIR},  # uid 1000 has no home in most images
    ]
    out = spec.output
    env += pod.storage_env(
        out.endpoint or defaults.s3_endpoint,
        out.region or defaults.s3_region,
        out.credentials_secret_ref,
        spec.base_model.token_secret_ref,
    )
    if spec.resources.model_cache_pvc:
        env.append({"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"})
    return env


def rendezvous_env(ft: LoRAFineTune, run: int) -> list[dict[str, Any]]:
    """Where a multi-node run's ranks meet (api/distributed.py): the pod of index 0."""
    if ft.spec.resources.nodes <= 1:
        return []
    job = child_name(ft.name, run)
    host = f"{job}-0.{service_name(ft.name, run)}"
    return [
        {"name": dist.ENV_RENDEZVOUS_ENDPOINT, "value": f"{host}:{dist.RENDEZVOUS_PORT}"},
        {"name": dist.ENV_RENDEZVOUS_PORT, "value": str(dist.RENDEZVOUS_PORT)},
        {"name": dist.ENV_RENDEZVOUS_ID, "value": job},
        {"name": dist.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def build_rendezvous_service(ft: LoRAFineTune, run: int) -> dict[str, Any] | None:
    """The headless Service that gives a multi-node run's pods DNS names
    (`<job>-<index>.<service>`); None for a one-pod run. Not-ready pods are published: the
    rendezvous happens before any pod could be called ready."""
    if ft.spec.resources.nodes <= 1:
        return None
    name = service_name(ft.name, run)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(ft, run, name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME: child_name(ft.name, run)},
            "ports": [
                {
                    "name": dist.RENDEZVOUS_PORT_NAME,
                    "port": dist.RENDEZVOUS_PORT,
                    "targetPort": dist.RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def _pvc_claims(ft: LoRAFineTune) -> list[str]:
    """Claims the trainer reads model/data from, in a stable order."""
    spec = ft.spec
    sources = [
        spec.base_model.pvc,
        spec.dataset.pvc,
        spec.dataset.eval.pvc if spec.dataset.eval else None,
    ]
    return [src.claim_name for src in sources if src is not None]


def build_volumes(ft: LoRAFineTune, run: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) of the trainer pod."""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(ft.name, run)}},
        # The default 64 MiB /dev/shm breaks torch data loaders and NCCL.
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "work", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "work", "mountPath": WORK_DIR},
    ]
    cache = ft.spec.resources.model_cache_pvc
    if cache:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": cache}})
        mounts.append({"name": "model-cache", "mountPath": CACHE_DIR})
    claim_volumes, claim_mounts = pod.pvc_volumes(_pvc_claims(ft))
    return volumes + claim_volumes, mounts + claim_mounts


def build_resources(ft: LoRAFineTune) -> dict[str, Any]:
    return pod.container_resources(ft.spec.resources)


def build_scheduling(ft: LoRAFineTune) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority of the pod spec."""
    res = ft.spec.resources
    out = pod.gpu_placement(res)
    if res.affinity:
        out["affinity"] = res.affinity
    if res.priority_class_name:
        out["priorityClassName"] = res.priority_class_name
    if res.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in res.image_pull_secrets]
    return out


def build_container(ft: LoRAFineTune, run: int, defaults: BuildDefaults) -> dict[str, Any]:
    _, mounts = build_volumes(ft, run)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": ft.spec.resources.image or defaults.trainer_image,
        "command": ["loraf", "train", "--config", CONFIG_MOUNT_PATH],
        "env": build_env(ft, defaults) + rendezvous_env(ft, run),
        "volumeMounts": mounts,
        # The trainer writes a one-line reason here before a non-zero exit; on a crash
        # without one, the log tail is used instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": pod.container_security_context(),
    }
    resources = build_resources(ft)
    if resources:
        container["resources"] = resources
    if ft.spec.resources.nodes > 1:
        container["ports"] = [
            {"name": dist.RENDEZVOUS_PORT_NAME, "containerPort": dist.RENDEZVOUS_PORT}
        ]
    return container


def build_job(ft: LoRAFineTune, run: int, defaults: BuildDefaults | None = None) -> dict[str, Any]:
    """The Job of run `run` of `ft`."""
    defaults = defaults or BuildDefaults()
    spec = ft.spec
    name = child_name(ft.name, run)
    meta = child_metadata(ft, run, name)
    queue = (ft.metadata.get("labels") or {}).get(QUEUE_NAME)
    if queue:
        meta["labels"][QUEUE_NAME] = queue
    volumes, _ = build_volumes(ft, run)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods
        # The trainer reads the same value from its config and exits 75 before it ends.
        "terminationGracePeriodSeconds": spec.resources.termination_grace_period_seconds,
        "serviceAccountName": name,
        "automountServiceAccountToken": True,  # the trainer patches status.progress
        "enableServiceLinks": False,
        "securityContext": pod.pod_security_context(),
        "containers": [build_container(ft, run, defaults)],
        "volumes": volumes,
        **build_scheduling(ft),
    }
    nodes = spec.resources.nodes
    if nodes > 1:
        pod_spec["subdomain"] = service_name(ft.name, run)  # hostname <job>-<index> is the Job's
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": nodes,
        "parallelism": nodes,
        "suspend": spec.suspend,
        "podFailurePolicy": pod_failure_policy(),
        "template": {
            "metadata": {
                "labels": run_labels(ft.name, run),
                "annotations": run_annotations(ft.name, run, generation(ft)),
            },
            "spec": pod_spec,
        },
    }
    if nodes > 1:
        # One pod per node, each knowing its index; all of them are one run (one Job, one
        # Kueue workload, one `suspend`).
        job_spec["completionMode"] = "Indexed"
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
