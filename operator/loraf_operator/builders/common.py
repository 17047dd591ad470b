"""What every builder shares: operator defaults, owner references, metadata, the run hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..api.models import (
    API_VERSION,
    BaseResources,
    LoRAFineTune,
    LoRAFineTuneSpec,
    LoRAServing,
)
from .labels import SPEC_HASH, run_annotations, run_labels

DEFAULT_TRAINER_IMAGE = "ghcr.io/loraf/trainer:0.1.0"

# Spec fields that do not change what a run trains: editing them must not start a new run.
# `suspend` pauses/resumes the same Job; `serving` acts after training.
_NOT_RUN_FIELDS = ("suspend", "serving")


@dataclass(frozen=True)
class BuildDefaults:
    """Operator-wide defaults the spec may override (from settings)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    s3_endpoint: str | None = None
    s3_region: str | None = None


def owner_reference(owner: LoRAFineTune | LoRAServing) -> dict[str, Any]:
    """Controller reference to a loraf resource: deleting it garbage-collects the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": str(owner.metadata.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def generation(ft: LoRAFineTune) -> int:
    return int(ft.metadata.get("generation") or 0)


def child_metadata(ft: LoRAFineTune, run: int, name: str) -> dict[str, Any]:
    """metadata of a child object of run `run` (the spec hash tells which spec it trains)."""
    return {
        "name": name,
        "namespace": ft.namespace,
        "labels": run_labels(ft.name, run),
        "annotations": {
            **run_annotations(ft.name, run, generation(ft)),
            SPEC_HASH: run_spec_hash(ft.spec),
        },
        "ownerReferences": [owner_reference(ft)],
    }


def run_spec_hash(spec: LoRAFineTuneSpec) -> str:
    """Hash of the spec fields a run depends on: a different hash means a new run."""
    data = {k: v for k, v in spec.to_dict().items() if k not in _NOT_RUN_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


GPU_RESOURCE = "nvidia.com/gpu"


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
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out
