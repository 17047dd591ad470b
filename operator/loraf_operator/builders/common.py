"""What every builder shares: operator defaults, owner references, metadata, the run hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..api.models import (
    API_VERSION,
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
