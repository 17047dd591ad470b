"""The LoRAServing a fine-tune owns when it names no shared one (serving_link decides
when): its adapter, the fine-tune's base model, S3 access and placement. Deleting the
fine-tune garbage-collects it, and with it its Deployment and Service."""

from __future__ import annotations

from typing import Any

from ..api.models import API_VERSION, SERVING_KIND, LoRAFineTune, LoRAServingSpec
from .common import owner_reference
from .labels import FINETUNE, MANAGED_BY, MANAGED_BY_VALUE
from .naming import dedicated_serving_name, label_value

_DEFAULT_MAX_LORA_RANK = LoRAServingSpec.model_fields["max_lora_rank"].default


def build_dedicated_serving(
    ft: LoRAFineTune, adapter: dict[str, Any], slot_rank: int | None
) -> dict[str, Any]:
    """`adapter`: the ServingAdapter entry; `slot_rank`: the vLLM LoRA slot rank it needs
    (None: none fits; the engine then refuses it and says so)."""
    assert ft.spec.serving is not None
    out = ft.spec.output
    spec: dict[str, Any] = {
        "baseModel": ft.spec.base_model.to_dict(),
        "engine": ft.spec.serving.engine,
        "replicas": ft.spec.serving.replicas,
        "adapters": [adapter],
    }
    if slot_rank is not None and slot_rank > _DEFAULT_MAX_LORA_RANK:
        spec["maxLoraRank"] = slot_rank
    if out.endpoint:
        spec["endpoint"] = out.endpoint
    if out.region:
        spec["region"] = out.region
    if out.credentials_secret_ref is not None:
        spec["credentialsSecretRef"] = out.credentials_secret_ref.to_dict()
    spec["resources"] = inherited_placement(ft)
    return {
        "apiVersion": API_VERSION,
        "kind": SERVING_KIND,
        "metadata": {
            "name": dedicated_serving_name(ft.name),
            "namespace": ft.namespace,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, FINETUNE: label_value(ft.name)},
            "ownerReferences": [owner_reference(ft)],
        },
        "spec": spec,
    }


def inherited_placement(ft: LoRAFineTune) -> dict[str, Any]:
    """A dedicated serving runs where its fine-tune trained: same GPU pool and node rules.

    The image is inherited only by the transformers engine, which ships in the trainer image.
    """
    assert ft.spec.serving is not None
    r = ft.spec.resources
    out: dict[str, Any] = {"gpus": r.gpus}
    if r.gpu_type:
        out["gpuType"] = r.gpu_type
    if r.node_selector:
        out["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        out["tolerations"] = list(r.tolerations)
    if r.image and ft.spec.serving.engine == "transformers":
        out["image"] = r.image
    return out
