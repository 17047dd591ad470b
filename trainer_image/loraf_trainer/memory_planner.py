"""Memory planner: micro-batch, gradient accumulation and how many decoder layers to
checkpoint, so a requested effective batch runs as fast as possible inside a GPU budget.

Pure arithmetic (no torch): a model's shape, the workload and a budget in, a `Plan` out.
The estimates count what autograd keeps alive per token and per decoder layer for a
LoRA/QLoRA step (bf16 activations; bench/README.md derives and checks them against
measured peaks); the cost model is relative (token-forward equivalents), enough to rank
plans, not to predict seconds.

Trade-off it ranks: checkpointing a layer saves its activations but re-runs its forward
(and, for QLoRA, its 4-bit dequantization); a smaller micro-batch needs less memory but
pays the per-pass fixed costs (dequantization, kernel launches) more often.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3

# nf4 with double quantization: 4 bits + one 8-bit absmax per 64 weights + one fp32
# second-level constant per 256 blocks.
Q4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
OPTIMIZER_STATE_BYTES = {  # per trainable parameter
    "paged_adamw_8bit": 2,
    "adamw_8bit": 2,
    "adamw_torch": 8,
    "adamw_torch_fused": 8,
    "sgd": 0,
}
# Relative cost model, in token-forward equivalents, fitted to step times measured on an
# H100 for Llama-3-8B (bench/results/gpu_lora_llama3-8b.json, gpu_qlora_llama3-8b.json):
# backward+optimizer ≈ 1.6 forwards; a pass has a fixed cost worth ~800 tokens in bf16
# and ~7,000 with bitsandbytes 4-bit (dequantization and launch-bound small kernels),
# so QLoRA strongly prefers large micro-batches over less recompute.
BACKWARD_RATIO = 1.6
DEQUANT_TOKENS = 6200
PASS_OVERHEAD_TOKENS = 800
CPU_EMBED_COST = 0.01  # relative slowdown of a host-side embedding lookup
# The per-layer count above over-estimates the measured growth of peak allocated memory
# per non-checkpointed layer (202 vs 258 KB/token for 8B QLoRA): scaled to the measurement.
ACTIVATION_FACTOR = 0.8
# Not in the per-layer count: allocator slack, cuBLAS workspaces, loss tiles.
FIXED_OVERHEAD_BYTES = int(0.25 * GIB)
RESERVED_OVER_ALLOCATED = 1.05
# Bytes per adapter-input element kept without dropout, by adapter bytes per parameter
# (bf16 QLoRA adapters: small; fp32 LoRA adapters: the cast copies). Measured on Llama-3-8B
# LoRA 4096×2: 58.56 GiB eager, 54.09 compiled, against 45.9 when counted as zero.
DROPOUT_FREE_COPY_BYTES = {2: 0.6, 4: 1.7}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """From a transformers config (or any object with the same attribute names)."""
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            hidden=cfg.hidden_size,
            intermediate=cfg.intermediate_size,
            layers=cfg.num_hidden_layers,
            heads=cfg.num_attention_heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=hd,
            vocab=cfg.vocab_size,
            tied=bool(getattr(cfg, "tie_word_embeddings", False)),
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linear_params(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return h * q + 2 * h * kv + q * h + 3 * h * i

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def lora_params(self, r: int) -> int:
        """all-linear: r·(in + out) for every linear of every decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return self.layers * r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))


@dataclass(frozen=True)
class Workload:
    shape: ModelShape
    quantized: bool  # 4-bit base (QLoRA)
    seq_len: int
    rows_per_step: int  # effective batch: micro_batch × grad_accum
    lora_r: int = 16
    lora_dropout: bool = True  # dropout > 0 keeps a dropped copy of every adapter input
    fused_kernels: bool = False  # Liger RMSNorm/SwiGLU: fewer saved tensors
    optimizer: str = "paged_adamw_8bit"
    adapter_bytes: int = 2  # adapter params/grads: bf16 (TRL casts QLoRA's), 4 for fp32
    cpu_embeddings: bool = False  # input embedding table kept in host memory
    # More than one rank (docs/trainer.md, "More than one GPU"): rows_per_step is per rank.
    world_size: int = 1
    sharded: bool = False  # FSDP full shard: weights and adapter state split over the ranks
    # DPO: each row's chosen and rejected sequences go through the policy in one pass
    # (twice the activations: 40.48 GiB measured for 8B QLoRA 1024×4, gpu_dpo_llama3-8b.json),
    # and the frozen reference scores them again without gradients.
    sequences_per_row: int = 1
    reference_forward: bool = False

    def activation_bytes_per_token_layer(self) -> int:
        """Saved tensors of one non-checkpointed decoder layer, per token (bf16)."""
        s = self.shape
        h, q, kv, i = s.hidden, s.q_dim, s.kv_dim, s.intermediate
        # norms' inputs (Liger: bf16; eager: the fp32 upcast), norm outputs, q/k/v after
        # RoPE, attention output and its contiguous copy, MLP gate/up/act(/silu) outputs.
        norms = 2 * 2 * h if self.fused_kernels else 2 * 4 * h
        mlp = (3 if self.fused_kernels else 4) * 2 * i
        b = norms + 2 * 2 * h + 2 * q + 2 * 2 * kv + 2 * 2 * q + mlp
        # Each adapter's input: q, k, v (3×h), o (q), gate/up (2×h), down (i).
        adapter_inputs = 5 * h + q + i
        if self.lora_dropout:
            # a bf16 dropped copy + a bool mask of each adapter's input
            b += 3 * adapter_inputs
        else:
            # No dropout still keeps copies: peft casts each adapter's input to the
            # adapters' dtype (fp32 for LoRA), autocast casts it back for the matmul.
            # Fitted to measured peaks (bench/results/gpu_explore_llama3-8b.json,
            # gpu_fair_llama3-8b.json), rounded up: "never above budget" needs an
            # estimate at or above the measurement.
            b += int(DROPOUT_FREE_COPY_BYTES[self.adapter_bytes] * adapter_inputs)
        return b

    def layer_weight_bytes(self) -> int:
        """One decoder layer's frozen linear weights (4-bit packed or bf16)."""
        per = Q4_BYTES_PER_PARAM if self.quantized else 2
        return int(self.shape.layer_linear_params() * per)

    def weight_bytes(self) -> int:
        """Frozen weights resident on one GPU. Under FSDP each rank keeps 1/world of the
        decoder layers plus the two layers being gathered (the running one and the
        prefetched next); embeddings and head sit in the root unit, gathered for the whole
        step, so they count in full."""
        s = self.shape
        emb = s.embedding_params()
        head = 0 if s.tied else emb
        layers = s.layers * self.layer_weight_bytes()
        if self.sharded:
            layers = layers // self.world_size + min(2, s.layers) * self.layer_weight_bytes()
        return layers + 2 * head + (0 if self.cpu_embeddings else 2 * emb)

    def adapter_state_bytes(self) -> int:
        """Adapter weights, gradients and optimizer state: split over the ranks under FSDP;
        under DDP every rank holds them all plus DDP's gradient buckets (one more copy of
        the gradients)."""
        n = self.shape.lora_params(self.lora_r)
        per = n * (2 * self.adapter_bytes + OPTIMIZER_STATE_BYTES.get(self.optimizer, 8))
        if self.sharded:
            return per // self.world_size
        return per + (n * self.adapter_bytes if self.world_size > 1 else 0)


@dataclass(frozen=True)
class Plan:
    micro_batch: int
    grad_accum: int
    checkpointed_layers: int  # the first k decoder layers are checkpointed
    layers: int
    est_peak_allocated_gib: float
    est_peak_reserved_gib: float
    est_cost: float  # relative step cost (token-forward equivalents); lower is faster
    budget_gib: float

    @property
    def gradient_checkpointing(self) -> bool:
        return self.checkpointed_layers > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "microBatch": self.micro_batch,
            "gradAccum": self.grad_accum,
            "checkpointedLayers": self.checkpointed_layers,
            "layers": self.layers,
            "estPeakAllocatedGiB": self.est_peak_allocated_gib,
            "estPeakReservedGiB": self.est_peak_reserved_gib,
            "estCost": self.est_cost,
            "budgetGiB": self.budget_gib,
        }


class NoFit(ValueError):
    """Even micro-batch 1 with every layer checkpointed exceeds the budget."""


def plan_strategy(
    w: Workload,
    budget_gib: float,
    strategy: str,
    allow_checkpointing: bool = True,
) -> tuple[str, Plan]:
    """("ddp" | "fsdp" | "single", plan) for w.world_size ranks. `strategy` auto: DDP (no
    communication of weights, the faster) when the whole model fits one GPU, else FSDP full
    shard; ddp/fsdp: as asked. Raises NoFit when even that does not fit."""
    from dataclasses import replace

    if w.world_size == 1 and strategy != "fsdp":
        return "single", plan(w, budget_gib, allow_checkpointing=allow_checkpointing)
    if strategy in ("auto", "ddp"):
        try:
            return "ddp", plan(
                replace(w, sharded=False), budget_gib, allow_checkpointing=allow_checkpointing
            )
        except NoFit:
            if strategy == "ddp":
                raise
    return "fsdp", plan(
        replace(w, sharded=True), budget_gib, allow_checkpointing=allow_checkpointing
    )


def peak_allocated_bytes(w: Workload, micro: int, checkpointed: int) -> int:
    s = w.shape
    tokens = micro * w.seq_len * w.sequences_per_row
    act = int(w.activation_bytes_per_token_layer() * ACTIVATION_FACTOR)
    saved = tokens * ((s.layers - checkpointed) * act + checkpointed * 2 * s.hidden)
    # backward transient: one layer's activations (recomputed or not yet freed), its
    # gradients, the fp32 grad of the final hidden state in the fused loss
    transient = tokens * (act + 8 * s.hidden + 4 * s.hidden)
    return w.weight_bytes() + w.adapter_state_bytes() + saved + transient + FIXED_OVERHEAD_BYTES


def peak_reserved_bytes(w: Workload, micro: int, checkpointed: int) -> int:
    return int(peak_allocated_bytes(w, micro, checkpointed) * RESERVED_OVER_ALLOCATED)


def step_cost(w: Workload, micro: int, checkpointed: int) -> float:
    """Relative cost of one optimizer step (rows_per_step rows)."""
    ga = w.rows_per_step // micro
    tokens = micro * w.seq_len * w.sequences_per_row
    per_pass = PASS_OVERHEAD_TOKENS + (DEQUANT_TOKENS if w.quantized else 0)
    fwd = tokens + per_pass
    recompute = fwd * checkpointed / w.shape.layers
    reference = fwd if w.reference_forward else 0.0
    cost = ga * ((1 + BACKWARD_RATIO) * fwd + recompute + reference)
    return cost * (1 + CPU_EMBED_COST if w.cpu_embeddings else 1.0)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan(
    w: Workload, budget_gib: float, headroom: float = 0.03, allow_checkpointing: bool = True
) -> Plan:
    """The cheapest (micro_batch, grad_accum, checkpointed layers) whose estimated peak
    reserved memory stays under budget·(1 - headroom). For each micro-batch (a divisor
    of the effective batch) the fewest checkpointed layers that fit; then the lowest
    cost, ties going to the larger micro-batch."""
    limit = budget_gib * (1 - headroom) * GIB
    best: Plan | None = None
    max_k = w.shape.layers if allow_checkpointing else 0
    for micro in _divisors_desc(w.rows_per_step):
        for k in range(max_k + 1):
            reserved = peak_reserved_bytes(w, micro, k)
            if reserved <= limit:
                cand = Plan(
                    micro_batch=micro,
                    grad_accum=w.rows_per_step // micro,
                    checkpointed_layers=k,
                    layers=w.shape.layers,
                    est_peak_allocated_gib=round(peak_allocated_bytes(w, micro, k) / GIB, 2),
                    est_peak_reserved_gib=round(reserved / GIB, 2),
                    est_cost=round(step_cost(w, micro, k), 1),
                    budget_gib=budget_gib,
                )
                if best is None or cand.est_cost < best.est_cost:
                    best = cand
                break
    if best is None:
        need = peak_reserved_bytes(w, 1, max_k) / GIB
        how = "with every layer checkpointed" if allow_checkpointing else "without checkpointing"
        raise NoFit(f"needs ~{need:.1f} GiB at micro-batch 1 {how}; budget is {budget_gib:g} GiB")
    return best
