"""peft / bitsandbytes configuration from the spec.

The `*_kwargs` builders are pure (spec in, dict out) and unit-tested without torch; the
thin `build_*` wrappers construct the library objects.
"""

from __future__ import annotations

from typing import Any

DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "fp32": "float32",
    "float32": "float32",
}


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES.get(name, name))


def lora_kwargs(lora: Any) -> dict[str, Any]:
    """peft.LoraConfig arguments. `alpha` defaults to 2·r (the common rule of thumb)."""
    target: list[str] | str = list(lora.target_modules)
    if target == ["all-linear"]:
        target = "all-linear"  # peft's shorthand: every linear layer except the output head
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha if lora.alpha is not None else 2 * lora.r,
        "lora_dropout": lora.dropout,
        "target_modules": target,
        "bias": lora.bias,
        "use_dora": lora.use_dora,
        "use_rslora": lora.use_rslora,
        "modules_to_save": list(lora.modules_to_save) if lora.modules_to_save else None,
        "task_type": "CAUSAL_LM",
    }


def bnb_kwargs(quant: Any, on_gpu: bool) -> dict[str, Any]:
    """transformers.BitsAndBytesConfig arguments for QLoRA.

    On CPU the compute dtype is float32: bf16 matmuls on CPU are slow and not every CPU
    kernel supports them; on GPU the spec's computeDtype (default bf16) is used."""
    compute = quant.compute_dtype if on_gpu else "float32"
    if quant.bits == 8:
        return {"load_in_8bit": True}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant.quant_type,
        "bnb_4bit_use_double_quant": quant.double_quant,
        "bnb_4bit_compute_dtype": DTYPES.get(compute, compute),
    }


def build_lora_config(lora: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(**lora_kwargs(lora))


def build_bnb_config(quant: Any, on_gpu: bool, quant_storage: Any = None) -> Any:
    """`quant_storage` (a torch dtype): the dtype 4-bit weights are packed in; FSDP needs
    it to equal the other weights' dtype to shard them (QLoRA under FSDP)."""
    from transformers import BitsAndBytesConfig

    kw = bnb_kwargs(quant, on_gpu)
    if "bnb_4bit_compute_dtype" in kw:
        kw["bnb_4bit_compute_dtype"] = torch_dtype(kw["bnb_4bit_compute_dtype"])
    if quant_storage is not None and kw.get("load_in_4bit"):
        kw["bnb_4bit_quant_storage"] = quant_storage
    return BitsAndBytesConfig(**kw)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total). 4-bit weights are packed two per byte: count the logical
    parameters, as peft's print_trainable_parameters does."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def prepare_base_for_training(model: Any, gradient_checkpointing: bool) -> None:
    """Freeze the base and wire gradient checkpointing, for LoRA and QLoRA alike.

    This is what peft's prepare_model_for_kbit_training does minus its fp32 upcast of
    every non-quantized weight (embeddings, lm_head, norms), measured at half the speed
    and twice the memory (DESIGN.md)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With a frozen embedding nothing upstream of the first block needs grad, and the
        # checkpointed blocks would see inputs without grad: make the embeddings' output
        # require grad so backward reaches the LoRA weights.
        model.enable_input_require_grads()
