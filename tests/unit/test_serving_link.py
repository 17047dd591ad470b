"""The LoRAServing a fine-tune creates for itself (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from loraf_operator.api.models import LoRAFineTune, LoRAServing, LoRAServingSpec, LoRASpec
from loraf_operator.serving_link import Adapter, dedicated_serving, plan_shared


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


def shared(**spec: Any) -> LoRAServing:
    return LoRAServing.model_validate(
        {
            "metadata": {"name": "shared", "namespace": "ns"},
            "spec": {"baseModel": {"huggingFace": "org/model"}, **spec},
        }
    )


def with_lora(ft: LoRAFineTune, **lora: Any) -> LoRAFineTune:
    return ft.model_copy(update={"spec": ft.spec.model_copy(update={"lora": LoRASpec(**lora)})})


@pytest.mark.parametrize(
    ("lora", "serving", "reason"),
    [
        ({}, {}, "AdapterAdded"),
        ({"use_dora": True}, {}, "AdapterUnsupported"),
        ({"modules_to_save": ["lm_head"]}, {}, "AdapterUnsupported"),
        ({"bias": "all"}, {}, "AdapterUnsupported"),
        ({"use_dora": True}, {"engine": "transformers"}, "AdapterAdded"),  # peft serves DoRA
        ({"r": 32}, {}, "AdapterRankTooHigh"),
        ({"r": 32}, {"maxLoraRank": 32}, "AdapterAdded"),
        ({}, {"maxAdapters": 1, "adapters": [{"name": "other", "uri": "s3://bkt/o/"}]},
         "ServingFull"),
        # Replacing its own adapter never counts against the slots.
        ({}, {"maxAdapters": 1, "adapters": [{"name": "ft", "uri": "s3://bkt/old/"}]},
         "AdapterAdded"),
    ],
)  # fmt: skip
def test_joining_a_shared_serving_refuses_what_it_cannot_hold(
    lora: dict[str, Any], serving: dict[str, Any], reason: str
) -> None:
    ft = with_lora(finetune({"gpus": 1}, "vllm"), **lora)
    a = Adapter("ft", "s3://out/ft/run-1/", ft.spec.lora.r)
    out = plan_shared(ft, shared(**serving), a)
    assert out.reason == reason, out
    assert (out.status == "True") is (reason == "AdapterAdded")
    if out.status == "False":
        assert out.adapters is None  # nothing changes on the LoRAServing


@pytest.mark.parametrize(("r", "max_rank"), [(8, None), (16, None), (17, 32), (64, 64)])
def test_dedicated_vllm_serving_sizes_its_slots_from_the_rank(r: int, max_rank: int | None) -> None:
    ft = with_lora(finetune({"gpus": 1}, "vllm"), r=r)
    spec = dedicated_serving(ft, Adapter("ft", "s3://out/ft/run-1/", r))["spec"]
    assert spec.get("maxLoraRank") == max_rank
    LoRAServingSpec.model_validate(spec)
