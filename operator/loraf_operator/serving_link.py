"""LoRAFineTune → LoRAServing: after a run succeeds, serve its adapter. Pure planning.

Triggered only by a fine-tune whose `Succeeded` condition is True and whose
`status.artifacts.adapterUri` is set (`adapter_of`), so a failed run never touches
serving, and a new run's adapter replaces the old one under the same name only once that
run succeeded.

- no `servingRef`: a dedicated LoRAServing named like the fine-tune, owned by it
  (deleting the fine-tune garbage-collects it and its Deployment/Service): `plan_dedicated`;
- `servingRef`: the adapter is added to that (shared) LoRAServing, if its base model is
  the fine-tune's; otherwise the fine-tune gets `Serving=False, reason=BaseModelMismatch`:
  `plan_shared`, or `serving_not_found`.

The outcome is the fine-tune's `Serving` condition; serving_handlers applies the plan and
has the Reconciler write the condition (under its lock, like every LoRAFineTune status write).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from .api import conditions as cond
from .api.conditions import COND_SERVING
from .api.models import (
    LoRAFineTune,
    LoraRank,
    LoRAServing,
    LoRASpec,
)
from .builders.dedicated_serving import build_dedicated_serving
from .start_from import succeeded_adapter_uri
from .status import Cond, Status

Obj = dict[str, Any]


@dataclass(frozen=True)
class Adapter:
    name: str
    uri: str
    rank: int

    def to_dict(self) -> Obj:
        return {"name": self.name, "uri": self.uri, "rank": self.rank}


def adapter_of(ft: LoRAFineTune) -> Adapter | None:
    """The adapter a succeeded run with serving enabled should serve, else None."""
    serving = ft.spec.serving
    if serving is None or not serving.enabled:
        return None
    uri = succeeded_adapter_uri(ft)
    if uri is None:
        return None
    return Adapter(serving.adapter_name or ft.name, uri, ft.spec.lora.r)


VLLM_RANKS: tuple[int, ...] = get_args(LoraRank)


def slot_rank(r: int) -> int | None:
    """The smallest vLLM --max-lora-rank that holds rank r (None: above vLLM's limit)."""
    return next((x for x in VLLM_RANKS if r <= x), None)


def vllm_unsupported(lora: LoRASpec) -> str | None:
    """Why vLLM cannot serve an adapter of this shape (None: it can). The same checks
    vLLM makes when it loads one, made before the adapter exists."""
    if lora.use_dora:
        return "vLLM does not serve DoRA adapters (spec.lora.useDora)"
    if lora.modules_to_save:
        return "vLLM does not serve adapters with fully trained modules (spec.lora.modulesToSave)"
    if lora.bias != "none":
        return "vLLM does not serve adapters with trained biases (spec.lora.bias)"
    if slot_rank(lora.r) is None:
        return f"vLLM serves ranks up to {VLLM_RANKS[-1]}; spec.lora.r is {lora.r}"
    return None


def upsert(adapters: list[Obj], a: Adapter) -> list[Obj]:
    """`adapters` with `a` added or replacing the entry of the same name (order kept)."""
    out = [dict(x) for x in adapters]
    for i, x in enumerate(out):
        if x.get("name") == a.name:
            out[i] = a.to_dict()
            return out
    return [*out, a.to_dict()]


def dedicated_serving(ft: LoRAFineTune, a: Adapter) -> Obj:
    """The LoRAServing a fine-tune owns when it names no shared one."""
    return build_dedicated_serving(ft, a.to_dict(), slot_rank(a.rank))


@dataclass(frozen=True)
class Outcome:
    status: Status  # of the Serving condition
    reason: str
    message: str
    adapters: list[Obj] | None = None  # new spec.adapters for the LoRAServing, if changed

    def condition(self) -> Cond:
        return Cond(COND_SERVING, self.status, self.reason, self.message)


def plan_dedicated(ft: LoRAFineTune, a: Adapter) -> Outcome:
    """What serving `a` in the fine-tune's own LoRAServing (`dedicated_serving`) means."""
    assert ft.spec.serving is not None
    if ft.spec.serving.engine == "vllm" and (why := vllm_unsupported(ft.spec.lora)):
        # The apiserver refuses this shape at apply (CEL); kept for objects older than it.
        return Outcome("False", cond.REASON_ADAPTER_UNSUPPORTED, why)
    return Outcome(
        "True", cond.REASON_ADAPTER_ADDED, f"adapter {a.name} ({a.uri}) is in LoRAServing {ft.name}"
    )


def serving_not_found(ft: LoRAFineTune, ref: str) -> Outcome:
    return Outcome(
        "False",
        cond.REASON_SERVING_NOT_FOUND,
        f"LoRAServing {ref} does not exist in {ft.namespace}",
    )


def plan_shared(ft: LoRAFineTune, serving: LoRAServing, a: Adapter) -> Outcome:
    """What adding `a` to a shared LoRAServing means."""
    mine, theirs = ft.spec.base_model.to_dict(), serving.spec.base_model.to_dict()
    if mine != theirs:
        return Outcome(
            "False",
            cond.REASON_BASE_MODEL_MISMATCH,
            f"LoRAServing {serving.name} serves base model "
            f"{serving.spec.base_model.display_name}, but this adapter was trained on "
            f"{ft.spec.base_model.display_name}",
        )
    if serving.spec.engine == "vllm" and (why := vllm_unsupported(ft.spec.lora)):
        return Outcome(
            "False", cond.REASON_ADAPTER_UNSUPPORTED, f"LoRAServing {serving.name}: {why}"
        )
    if a.rank > serving.spec.max_lora_rank:
        return Outcome(
            "False",
            cond.REASON_ADAPTER_RANK_TOO_HIGH,
            f"adapter rank {a.rank} is above LoRAServing {serving.name}'s maxLoraRank "
            f"{serving.spec.max_lora_rank}; raise spec.maxLoraRank there",
        )
    current = [x.to_dict() for x in serving.spec.adapters]
    new = upsert(current, a)
    if len(new) > serving.spec.max_adapters:
        return Outcome(
            "False",
            cond.REASON_SERVING_FULL,
            f"LoRAServing {serving.name} holds {serving.spec.max_adapters} adapters "
            "(spec.maxAdapters); raise it or remove one",
        )
    return Outcome(
        "True",
        cond.REASON_ADAPTER_ADDED,
        f"adapter {a.name} ({a.uri}) is in LoRAServing {serving.name}",
        None if new == current else new,
    )
