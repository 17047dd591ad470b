"""Minimal valid manifests and a dotted-path mutator, shared by the API tests of every layer."""

from __future__ import annotations

import copy
from typing import Any

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINIMAL_SPEC: dict[str, Any] = {
    "baseModel": {"huggingFace": MODEL},
    "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
    "training": {"maxSteps": 10},
    "output": {"s3": "s3://artifacts/run"},
}


def finetune(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": name},
        "spec": copy.deepcopy(MINIMAL_SPEC),
    }


def serving(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAServing",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"huggingFace": MODEL},
            "adapters": [{"name": "a", "uri": "s3://artifacts/a/run-1/"}],
        },
    }


def mutate(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Copy of base with dotted-path changes (a value of None deletes the key)."""
    out = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out
