"""Model FLOPs per trained token for LoRA, and MFU.

LoRA-model FLOPs per token = 4·N_matmul + 6·N_lora + attention:
- frozen weights: forward 2·N plus the input gradient 2·N, no weight gradient;
- LoRA weights: forward, input and weight gradients, 6 per parameter;
- attention scores/values (no weights): 4·s·d per layer per token forward, halved for
  the causal mask, ×3 for forward + backward.
Recompute from activation checkpointing is hardware work, not model work: excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

H100_BF16_DENSE_TFLOPS = 989.0  # datasheet, SXM; H200 is the same chip's compute
MEASURED_GEMM_TFLOPS = 798.0  # 8192³ bf16 GEMM on the H100 here (KINDS.md)


@dataclass(frozen=True)
class FlopCount:
    matmul_params: int  # frozen linear weights incl. lm_head
    lora_params: int
    per_token: float  # model FLOPs per token at the given sequence length

    def tflops(self, tokens_per_second: float) -> float:
        return self.per_token * tokens_per_second / 1e12


def linear_params(cfg: Any) -> int:
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q = h * cfg.num_attention_heads * hd
    kv = 2 * h * cfg.num_key_value_heads * hd
    o = cfg.num_attention_heads * hd * h
    mlp = 3 * h * i
    return n * (q + kv + o + mlp) + h * cfg.vocab_size  # + lm_head


def lora_params(cfg: Any, r: int) -> int:
    """r·(in+out) per adapted linear, all-linear (every linear except lm_head)."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    qo = cfg.num_attention_heads * hd
    kv = cfg.num_key_value_heads * hd
    per_layer = (h + qo) + 2 * (h + kv) + (qo + h) + 2 * (h + i) + (i + h)
    return n * r * per_layer


def count(cfg: Any, seq_len: int, r: int = 16) -> FlopCount:
    n_mm, n_lora = linear_params(cfg), lora_params(cfg, r)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * hd
    attn = 3 * 0.5 * 4 * seq_len * d_attn * cfg.num_hidden_layers
    return FlopCount(n_mm, n_lora, 4 * n_mm + 6 * n_lora + attn)


def mfu(fc: FlopCount, tokens_per_second: float, peak_tflops: float) -> float:
    return fc.tflops(tokens_per_second) / peak_tflops
