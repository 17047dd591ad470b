"""Every condition type and reason the operator writes, with what each means.

The one home of the conditions contract: code imports these constants, the CRD's
`conditions` descriptions (`kubectl explain`) list `TYPES`, Warning events follow
`Reason.warns`, and tests/unit/test_conditions.py fails on a reason written in the code
that is not declared here. Reasons Kubernetes hands over (a container's waiting reason,
the scheduler's, the Job's) are passed on as they come; the common ones are declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["LoRAFineTune", "LoRAServing"]


@dataclass(frozen=True)
class ConditionType:
    name: str
    kind: Kind
    meaning: str


@dataclass(frozen=True)
class Reason:
    """`warns`: a Warning event, someone must act. `serving`: on a serving condition (a
    fine-tune's Serving, a LoRAServing's Ready; docs/serving.md), else a run's
    (docs/operations.md)."""

    name: str
    meaning: str
    warns: bool = False
    serving: bool = False


TYPES: dict[str, ConditionType] = {}
REASONS: dict[str, Reason] = {}


def _type(name: str, kind: Kind, meaning: str) -> str:
    assert name not in TYPES, name
    TYPES[name] = ConditionType(name, kind, meaning)
    return name


def _reason(name: str, meaning: str, *, warns: bool = False, serving: bool = False) -> str:
    assert name not in REASONS, name
    REASONS[name] = Reason(name, meaning, warns, serving)
    return name


# ----------------------------------------------------------------------- condition types
# In the order they are written (stable output for kubectl and diffs).
COND_VALIDATED = _type("Validated", "LoRAFineTune", "the spec is valid")
COND_SUSPENDED = _type("Suspended", "LoRAFineTune", "the run's Job is suspended")
COND_SCHEDULED = _type("Scheduled", "LoRAFineTune", "the run's pod is on a node")
COND_RUNNING = _type("Running", "LoRAFineTune", "the trainer runs")
COND_SUCCEEDED = _type("Succeeded", "LoRAFineTune", "the run finished and its upload checks out")
COND_FAILED = _type("Failed", "LoRAFineTune", "the run failed")
COND_SERVING = _type("Serving", "LoRAFineTune", "the adapter is in a LoRAServing (spec.serving)")
COND_READY = _type("Ready", "LoRAServing", "a replica of the current spec serves")

# ------------------------------------------------------------------- a run's reasons
REASON_SPEC_VALID = _reason("SpecValid", "the spec parsed")
REASON_INVALID_SPEC = _reason(
    "InvalidSpec", "the operator or Kubernetes refused the spec", warns=True
)
REASON_RUN_STARTED = _reason("RunStarted", "a new run's children exist (also an event)")
REASON_RUN_STOPPED = _reason("RunStopped", "(event) a run was stopped before it finished")
REASON_SUPERSEDED = _reason("Superseded", "(history) a spec change replaced the run")
REASON_NOT_STARTED = _reason("NotStarted", "the run's pod does not exist yet")
REASON_PENDING = _reason("Pending", "waiting for the Job controller or the scheduler")
REASON_QUEUED = _reason("Queued", "suspended before the run's pod ever ran (Kueue, spec.suspend)")
REASON_SUSPENDED = _reason("Suspended", "suspended after the run's pod ran")
REASON_RESUMED = _reason("Resumed", "no longer suspended")
REASON_NOT_SUSPENDED = _reason("NotSuspended", "never suspended")
REASON_POD_SCHEDULED = _reason("PodScheduled", "the run's pod is on a node")
REASON_UNSCHEDULABLE = _reason("Unschedulable", "(the scheduler's) no node fits", warns=True)
REASON_CONTAINER_CREATING = _reason("ContainerCreating", "the trainer container is starting")
REASON_POD_RUNNING = _reason("PodRunning", "the trainer runs")
REASON_POD_SUCCEEDED = _reason("PodSucceeded", "the trainer exited 0; the Job completes next")
REASON_ERR_IMAGE_PULL = _reason("ErrImagePull", "(the kubelet's) image pull failed", warns=True)
REASON_IMAGE_PULL_BACK_OFF = _reason(
    "ImagePullBackOff", "(the kubelet's) image pull failed, retried later", warns=True
)
REASON_INVALID_IMAGE_NAME = _reason(
    "InvalidImageName", "(the kubelet's) the image name is invalid", warns=True
)
REASON_CREATE_CONTAINER_CONFIG_ERROR = _reason(
    "CreateContainerConfigError",
    "(the kubelet's) the container cannot be set up (a missing Secret or key)",
    warns=True,
)
REASON_CREATE_CONTAINER_ERROR = _reason(
    "CreateContainerError", "(the kubelet's) the container cannot be created", warns=True
)
REASON_SECRET_NOT_FOUND = _reason(
    "SecretNotFound", "a Secret the spec references does not exist; no Job yet", warns=True
)
REASON_SECRET_KEY_MISSING = _reason(
    "SecretKeyMissing", "a Secret the spec references lacks a key; no Job yet", warns=True
)
REASON_WAITING_FOR_STARTING_ADAPTER = _reason(
    "WaitingForStartingAdapter", "spec.startFrom.fineTune has not succeeded yet; no Job yet"
)
REASON_FAILED_CREATE = _reason(
    "FailedCreate", "the Job controller cannot create the run's pod", warns=True
)
REASON_POD_CREATION_REFUSED = _reason(
    "PodCreationRefused", "the run's pod could not be created in time", warns=True
)
REASON_RETRYING = _reason("Retrying", "a pod failed; the Job controller starts another")
REASON_PREEMPTED = _reason("Preempted", "the pod was preempted (retried, not counted)", warns=True)
REASON_EVICTED = _reason("Evicted", "the pod was evicted (retried, not counted)", warns=True)
REASON_OOM_KILLED = _reason("OOMKilled", "the container ran out of memory", warns=True)
REASON_CONFIG_INVALID = _reason(
    "ConfigInvalid", "(exit 64) the trainer refused its config", warns=True
)
REASON_DATASET_INVALID = _reason("DatasetInvalid", "(exit 65) the dataset is invalid", warns=True)
REASON_MODEL_INVALID = _reason(
    "ModelInvalid", "(exit 66) the base model cannot be loaded", warns=True
)
REASON_STORAGE_UNAVAILABLE = _reason(
    "StorageUnavailable", "(exit 69) S3 did not answer in time (retried, not counted)"
)
REASON_STORAGE_ACCESS_DENIED = _reason("StorageAccessDenied", "(exit 77) S3 refused the run's keys")
REASON_INFRASTRUCTURE_FAILURE = _reason(
    "InfrastructureFailure", "the container failed with another exit code", warns=True
)
REASON_POD_FAILED = _reason("PodFailed", "the pod failed without an exit code", warns=True)
REASON_BACKOFF_LIMIT_EXCEEDED = _reason(
    "BackoffLimitExceeded", "the Job's retries are used up", warns=True
)
REASON_DEADLINE_EXCEEDED = _reason(
    "DeadlineExceeded", "the run took longer than activeDeadlineSeconds", warns=True
)
REASON_JOB_FAILED = _reason("JobFailed", "the Job failed for another reason", warns=True)
REASON_JOB_DELETED = _reason(
    "JobDeleted", "the run's Job was deleted before it finished", warns=True
)
REASON_VERIFYING_ARTIFACTS = _reason(
    "VerifyingArtifacts", "the Job completed; the run's manifest in S3 is not readable yet"
)
REASON_ARTIFACTS_INVALID = _reason(
    "ArtifactsInvalid", "the Job completed but its upload does not check out", warns=True
)
REASON_COMPLETED = _reason("Completed", "the Job completed and the run's manifest checks out")

# --------------------------------------------------------------- serving reasons
REASON_ADAPTER_ADDED = _reason("AdapterAdded", "the adapter is in the LoRAServing", serving=True)
REASON_BASE_MODEL_MISMATCH = _reason(
    "BaseModelMismatch", "the shared LoRAServing serves another base model", serving=True
)
REASON_SERVING_NOT_FOUND = _reason(
    "ServingNotFound", "servingRef names no LoRAServing", serving=True
)
REASON_ADAPTER_UNSUPPORTED = _reason(
    "AdapterUnsupported", "the engine cannot serve this adapter's shape", serving=True
)
REASON_ADAPTER_RANK_TOO_HIGH = _reason(
    "AdapterRankTooHigh", "spec.lora.r is above the LoRAServing's maxLoraRank", serving=True
)
REASON_SERVING_FULL = _reason(
    "ServingFull", "the LoRAServing already holds maxAdapters adapters", serving=True
)
REASON_REPLICAS_READY = _reason(
    "ReplicasReady", "a replica of the current spec serves", serving=True
)
REASON_REPLICAS_NOT_READY = _reason(
    "ReplicasNotReady", "replicas are starting (model load, adapters)", serving=True
)
REASON_CREATING = _reason(
    "Creating", "the Deployment, Service or ConfigMap does not exist yet", serving=True
)
REASON_SCALED_TO_ZERO = _reason("ScaledToZero", "spec.replicas is 0", serving=True)
REASON_ENGINE_EXITED = _reason("EngineExited", "the engine process exited", serving=True)

#: Reasons worth a Warning event (and that people must act on).
WARNING_REASONS = frozenset(r.name for r in REASONS.values() if r.warns)


def described(kind: Kind) -> str:
    """The condition types of `kind` with their meaning, for the CRD description."""
    return "; ".join(f"{t.name}: {t.meaning}" for t in TYPES.values() if t.kind == kind)
