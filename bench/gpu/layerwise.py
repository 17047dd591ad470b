"""A random-init 4-bit base built one decoder layer at a time, so a Llama-3-70B-shape QLoRA
needs neither a 140 GB bf16 checkpoint nor 140 GB of host memory: each layer's linear
weights are drawn in bf16 on the device, quantized to nf4 (bitsandbytes Params4bit, double
quantization, as the trainer's BitsAndBytesConfig does) and freed before the next layer.
Norms, embeddings and the head are drawn in the compute dtype.

`load_model` has `model_loading.load_model`'s signature: the bench swaps it in, so the
rest of the trainer's path (planner, techniques, LoRA, TRL) runs unchanged. Speed and
memory do not depend on weight values (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _materialize(module: Any, device: Any, dtype: Any) -> None:
    """Parameters still on the meta device get random values (norm weights: ones)."""
    import torch
    from torch import nn

    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            data = torch.empty(p.shape, device=device, dtype=dtype)
            if "norm" in type(sub).__name__.lower():
                data.fill_(1.0)
            else:
                data.normal_(0.0, 0.02)
            setattr(sub, name, nn.Parameter(data, requires_grad=False))


def build(config: Any, device_name: str, dtype: Any, compute_dtype: Any, bnb_config: Any) -> Any:
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    dev = torch.device(device_name)
    torch.manual_seed(0)
    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                w = torch.empty(child.out_features, child.in_features, dtype=dtype, device=dev)
                w.normal_(0.0, 0.02)
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    compute_dtype=compute_dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                packed = bnb.nn.Params4bit(
                    w, requires_grad=False, compress_statistics=True, quant_type="nf4"
                )
                q.weight = packed.to(dev)  # type: ignore[misc]  # quantizes on .to()
                setattr(parent, name, q)
                del w
        _materialize(layer, dev, dtype)
    _materialize(model, dev, dtype)
    for name, sub in list(model.named_modules()):  # rotary tables are buffers built at init
        if hasattr(sub, "inv_freq") and sub.inv_freq.device.type == "meta":
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], type(sub)(config=config).to(dev))
    # What transformers sets on a bitsandbytes-loaded model (the Trainer then leaves the
    # device placement alone and accepts training adapters on it).
    from transformers.quantizers.auto import AutoHfQuantizer

    model.hf_quantizer = AutoHfQuantizer.from_config(bnb_config, pre_quantized=False)
    model.config.quantization_config = bnb_config
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    model.quantization_method = "bitsandbytes"
    model.config.use_cache = False
    return model


def load_model(
    path: Path,
    device: Any,
    *,
    quantization: Any = None,
    trust_remote_code: bool = False,
    dtype_name: str | None = None,
    fsdp: bool = False,
) -> Any:
    """model_loading.load_model for a folder holding only config.json (QLoRA 4-bit only)."""
    import torch
    from transformers import AutoConfig

    from loraf_trainer.adapters import bnb_kwargs, build_bnb_config

    if quantization is None or quantization.bits != 4 or fsdp:
        raise ValueError("the layer-by-layer builder makes 4-bit single-rank bases only")
    dtype = getattr(torch, dtype_name or device.dtype_name)
    compute = getattr(torch, bnb_kwargs(quantization, device.on_gpu)["bnb_4bit_compute_dtype"])
    name = f"cuda:{device.index}" if device.on_gpu else "cpu"
    bnb_config = build_bnb_config(quantization, device.on_gpu)
    return build(AutoConfig.from_pretrained(path), name, dtype, compute, bnb_config)
