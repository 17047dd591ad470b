"""Switchable speed/memory techniques applied around the project's trainer path.

They live here, not in trainer_image/, because the benchmark may not edit the trainer;
each is a few lines the trainer can adopt behind a spec/plan switch (bench/README.md).
- partial checkpointing: checkpoint only the first k decoder layers (k chosen by the
  memory planner): no recompute where memory allows it;
- selective checkpointing: TRL's SAC policy (save attention outputs, recompute the rest);
- CPU embeddings: the input embedding table (1 GiB bf16 for a 128k vocabulary) stays in
  host memory; a lookup moves only the rows a batch uses (memory mode).
Liger layer kernels and activation offloading are switched through TRL's own SFTConfig
flags (`use_liger_kernel`, `activation_offloading`).
"""

from __future__ import annotations

from typing import Any


def decoder_layers(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def limit_checkpointing(model: Any, checkpointed_layers: int) -> int:
    """Keep gradient checkpointing on the first `checkpointed_layers` decoder layers only
    (transformers' GradientCheckpointingLayer reads a per-layer flag). Returns how many
    layers stay checkpointed."""
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if i >= checkpointed_layers:
            layer.gradient_checkpointing = False
    return sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)


def enable_selective(model: Any) -> None:
    from trl.models.selective_activation_checkpointing import (
        enable_selective_activation_checkpointing,
    )

    enable_selective_activation_checkpointing(model)


def embeddings_to_cpu(model: Any) -> int:
    """Replace the input embedding with a CPU-resident lookup; returns bytes freed on the GPU.
    The table is frozen (LoRA never trains it), so nothing needs its gradient."""
    import torch
    from torch import nn

    emb = model.get_input_embeddings()
    out_device = emb.weight.device
    freed = emb.weight.numel() * emb.weight.element_size()

    class CpuEmbedding(nn.Module):
        def __init__(self, weight: torch.Tensor, padding_idx: int | None) -> None:
            super().__init__()
            # A plain attribute, not a parameter/buffer: `.to(device)` must not move it back.
            self.table = weight.detach().to("cpu")
            self.padding_idx = padding_idx
            self.embedding_dim = weight.shape[1]
            self.num_embeddings = weight.shape[0]

        @property
        def weight(self) -> torch.Tensor:  # read by generation/resize helpers
            return self.table

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            rows = nn.functional.embedding(ids.to("cpu"), self.table).pin_memory()
            return rows.to(out_device, non_blocking=True)

    model.set_input_embeddings(CpuEmbedding(emb.weight, getattr(emb, "padding_idx", None)))
    del emb
    torch.cuda.empty_cache()
    return freed
