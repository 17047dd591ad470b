"""The LoRAServing a fine-tune creates for itself (pure)."""

from __future__ import annotations

from typing import Any

from loraf_operator.api.models import LoRAFineTune, LoRAServingSpec
from loraf_operator.serving_link import Adapter, dedicated_serving


def finetune(resources: dict[str, Any], engine: str) -> LoRAFineTune:
    return LoRAFineTune.model_validate(
        {
            "apiVersion": "loraf.dev/v1alpha1",
            "kind": "LoRAFineTune",
            "metadata": {"name": "ft", "namespace": "ns", "uid": "u1"},
            "spec": {
                "baseModel": {"huggingFace": "org/model"},
                "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
                "training": {"maxSteps": 1},
                "resources": resources,
                "output": {"s3": "s3://out/ft", "credentialsSecretRef": {"name": "s3"}},
                "serving": {"enabled": True, "engine": engine},
            },
        }
    )


def test_dedicated_serving_inherits_the_finetunes_placement_and_is_valid() -> None:
    tol = [{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}]
    ft = finetune(
        {
            "gpus": 1,
            "gpuType": "L4",
            "nodeSelector": {"pool": "a"},
            "tolerations": tol,
            "image": "trainer:1",
        },
        "transformers",
    )
    obj = dedicated_serving(ft, Adapter("ft", "s3://out/ft/run-1/", 16))
    res = obj["spec"]["resources"]
    assert res == {
        "gpus": 1,
        "gpuType": "L4",
        "nodeSelector": {"pool": "a"},
        "tolerations": tol,
        "image": "trainer:1",
    }
    LoRAServingSpec.model_validate(obj["spec"])  # what the operator applies must parse


def test_vllm_serving_does_not_inherit_the_trainer_image() -> None:
    ft = finetune({"gpus": 1, "gpuType": "L4", "image": "trainer:1"}, "vllm")
    res = dedicated_serving(ft, Adapter("ft", "s3://out/ft/run-1/", 16))["spec"]["resources"]
    assert res == {"gpus": 1, "gpuType": "L4"}
