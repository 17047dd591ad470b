"""spec.training.optimizations: decide what to use on this GPU, then apply it to the model.

`decide` is pure (spec, model config, device facts in → `Decision` out) and unit-tested
on a CPU; the `apply_*` functions change the model in place and return the decision as it
then stands (a `Decision` is frozen: whatever changes it makes a new one, so the plan that
is logged and reported is the one that runs):
- memory plan (memory_planner): micro-batch, accumulation, and checkpointing only the
  first k decoder layers, so the requested effective batch runs as fast as the budget allows;
- fused kernels: Liger through transformers' own `use_liger_kernel` switch;
- compile: torch.compile of each decoder layer (one graph, reused by every layer);
- CPU embeddings: the input embedding table stays in host memory (memory mode);
- adapter inputs in the compute dtype: peft casts each LoRA input to the fp32 adapters'
  dtype, and bf16 autocast casts it straight back for the adapter GEMM; skipping the first
  cast changes no number and saves two copies per adapter (not a switch for that reason).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

from loraf_operator.api.models import LoRAFineTuneSpec

from . import hyperparams
from . import memory_planner as mp

log = logging.getLogger(__name__)

# Architectures whose layers Liger patches (liger_kernel.transformers.monkey_patch).
LIGER_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"}
)


@dataclass(frozen=True)
class Decision:
    micro_batch: int
    grad_accum: int
    checkpointed_layers: int  # the first k decoder layers recompute their activations
    layers: int
    fused_kernels: bool = False
    # Liger's RMSNorm/RoPE/SwiGLU as well as its fused cross-entropy; off leaves those
    # layers to torch.compile
    liger_layers: bool = True
    compile: bool = False
    cpu_embeddings: bool = False
    oom_recovery: bool = False
    plan: mp.Plan | None = None  # None: the spec's values, as given
    notes: tuple[str, ...] = ()  # why a switch is off
    # learning rate, schedule and batch (the spec's, or hyperparams' rule)
    hyper: hyperparams.Hyper | None = None
    strategy: str = "single"  # single, ddp or fsdp (docs/trainer.md, "More than one GPU")
    world_size: int = 1
    optimizer: str | None = None  # replaces the spec's optimizer (FSDP: fit_fsdp)
    # LoRA inputs stay in the autocast dtype while training (peft's cast skipped)
    keep_input_dtype: bool = False

    def noted(self, note: str, **changes: Any) -> Decision:
        """This decision with `changes` and the note saying why."""
        return dataclasses.replace(self, notes=(*self.notes, note), **changes)

    @property
    def liger_running(self) -> bool:
        """Whether any Liger kernel runs: only its layer kernels can (TRL ≥ 1.16 turns its
        fused cross-entropy off and computes the loss with its own chunked LM head), and
        those only without compile."""
        return self.fused_kernels and self.liger_layers

    @property
    def techniques(self) -> list[str]:
        on = {
            "memory-planner": self.plan is not None,
            "fused-kernels": self.liger_running,
            "compile": self.compile,
            "cpu-embeddings": self.cpu_embeddings,
            "oom-recovery": self.oom_recovery,
            "keep-input-dtype": self.keep_input_dtype,
        }
        return [name for name, used in on.items() if used]

    def status(self, split: int = 1) -> dict[str, Any]:
        """status.progress.plan; `split` > 1 after out-of-memory recoveries."""
        out: dict[str, Any] = {
            "microBatchSize": max(1, self.micro_batch // split),
            "gradientAccumulationSteps": self.grad_accum * split,
            "checkpointedLayers": self.checkpointed_layers,
            "layers": self.layers,
            "techniques": self.techniques,
            "strategy": self.strategy,
            "worldSize": self.world_size,
        }
        if self.plan is not None:
            out["budgetGiB"] = round(self.plan.budget_gib, 2)
            out["estimatedPeakGiB"] = self.plan.est_peak_reserved_gib
        if self.hyper is not None:
            out |= self.hyper.status()
        return out


def allocator_defaults() -> None:
    """Expandable segments: the CUDA caching allocator grows segments instead of keeping
    fragments of many sizes (measured: reserved within 4 % of allocated at the QLoRA peak).
    Must run before CUDA initializes; a value the user set wins."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def workload(
    spec: LoRAFineTuneSpec,
    model_config: Any,
    fused: bool,
    cpu_embeddings: bool,
    rows_per_step: int,
    world_size: int = 1,
) -> mp.Workload:
    t = spec.training
    q = spec.effective_quantization
    return mp.Workload(
        shape=mp.ModelShape.from_config(model_config),
        quantized=q is not None and q.bits == 4,
        seq_len=t.max_seq_length,
        rows_per_step=rows_per_step,
        lora_r=spec.lora.r,
        lora_dropout=spec.lora.dropout > 0,
        fused_kernels=fused,
        optimizer=spec.effective_optimizer,
        # TRL keeps QLoRA adapters in bf16; LoRA adapters train in fp32
        adapter_bytes=2 if q is not None else 4,
        cpu_embeddings=cpu_embeddings,
        world_size=world_size,
        sequences_per_row=2 if spec.objective == "dpo" else 1,
        reference_forward=spec.objective == "dpo",
    )


def decide(
    spec: LoRAFineTuneSpec,
    model_config: Any,
    on_gpu: bool,
    free_gib: float | None,
    liger: bool,
    train_rows: int | None = None,
    world_size: int = 1,
) -> Decision:
    """What to use for this run. On a CPU: the batch as given (or chosen by
    hyperparams), no technique, and gradient checkpointing only when the spec asks for it.
    `train_rows` feeds the defaults rule (None: unknown, treated as a large dataset).
    With `world_size` ranks: DDP or FSDP (spec.resources.strategy; auto asks the planner,
    and is DDP where nothing is planned). Raises memory_planner.NoFit when the model cannot
    fit the budget at all."""
    t, o = spec.training, spec.training.optimizations
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    hidden = getattr(model_config, "hidden_size", None)
    hyper = hyperparams.resolve(
        t,
        spec.lora,
        hyperparams.UNKNOWN_ROWS if train_rows is None else train_rows,
        hidden if isinstance(hidden, int) else None,
    )
    # unset: a GPU may checkpoint (the planner decides how much); a CPU does not (the
    # memory is there, and recompute costs ~35 % of the step: 323 s vs 207 s measured)
    checkpointing = t.gradient_checkpointing
    if checkpointing is None:
        checkpointing = on_gpu
    asked = spec.resources.strategy
    d = Decision(
        micro_batch=hyper.per_device_batch_size,
        grad_accum=hyper.gradient_accumulation_steps,
        checkpointed_layers=layers if checkpointing else 0,
        layers=layers,
        hyper=hyper,
        world_size=world_size,
        strategy="fsdp" if asked == "fsdp" else ("ddp" if world_size > 1 else "single"),
    )
    if not on_gpu:
        if d.strategy == "fsdp":  # accelerate shards on GPUs only
            d = d.noted(
                "fsdp: GPUs only; the CPU ranks train data parallel",
                strategy="ddp" if world_size > 1 else "single",
            )
        return d
    model_type = getattr(model_config, "model_type", "")
    if o.fused_kernels and not liger:
        d = d.noted("fused kernels: liger-kernel is not installed")
    elif o.fused_kernels and model_type not in LIGER_MODEL_TYPES:
        d = d.noted(f"fused kernels: no Liger kernels for model type {model_type!r}")
    else:
        d = dataclasses.replace(d, fused_kernels=o.fused_kernels)
    d = dataclasses.replace(
        d,
        compile=o.compile,
        cpu_embeddings=o.cpu_embeddings,
        oom_recovery=o.oom_recovery,
        # 8B LoRA bf16 on an H200: 2 GiB less, the same losses (gpu_x17_llama3-8b.json;
        # its QLoRA speed-up did not hold in interleaved rounds); not under FSDP: fit_fsdp
        keep_input_dtype=True,
    )
    if d.oom_recovery and world_size > 1:
        # a rank that splits its micro-batch alone would run more backward passes than the
        # others and block their gradient all-reduce
        d = d.noted("oom recovery: one rank only; off with several ranks", oom_recovery=False)
    if d.oom_recovery and spec.objective == "dpo":
        # the recovering trainer is SFT's (its batches split by input_ids rows); the plan
        # must not list a technique the DPO trainer does not run
        d = d.noted("oom recovery: SFT only; off for objective dpo", oom_recovery=False)
    # Dynamo cannot trace Liger's layer kernels (triton CompilationError → graph breaks
    # around each, -22 % measured, bench/README.md): with compile, inductor fuses
    # norms/RoPE/SwiGLU itself and no Liger kernel runs.
    if d.compile and spec.objective == "dpo":
        # On an H200 the compiled DPO step's first loss was 0.608, not log 2 as it must be
        # with a zero-initialized adapter (TRL's eager recipe: 0.693): policy and reference
        # passes disagree under compile (bench/results/gpu_dpo-compiled_llama3-8b.json)
        d = d.noted(
            "compile: off for objective dpo (first loss differed from log 2)", compile=False
        )
    d = dataclasses.replace(d, liger_layers=not d.compile)
    if d.fused_kernels and d.compile:
        d = d.noted("fused kernels: not used with compile (inductor fuses the layers)")
    budget = t.memory_budget_gi_b or free_gib
    if not o.planner or budget is None:
        return fit_fsdp(d, spec)
    try:
        fused = d.fused_kernels or d.compile  # Liger's or inductor's fused layers
        w = workload(spec, model_config, fused, d.cpu_embeddings, hyper.rows_per_step, world_size)
        w.shape.layer_linear_params()  # every dimension is a number
    except (AttributeError, TypeError):
        return d.noted(
            f"planner: no decoder shape in the {model_type!r} config; spec used as given"
        )
    strategy, p = mp.plan_strategy(w, budget, asked, allow_checkpointing=checkpointing)
    d = fit_fsdp(dataclasses.replace(d, strategy=strategy), spec)
    if d.strategy == "fsdp" and d.optimizer is not None:  # plan again with its optimizer state
        w = dataclasses.replace(w, optimizer=d.optimizer)
        strategy, p = mp.plan_strategy(w, budget, "fsdp", allow_checkpointing=checkpointing)
    elif spec.training.optimizer is None and w.optimizer != FUSED_OPTIMIZER:
        fused_w = dataclasses.replace(w, optimizer=FUSED_OPTIMIZER)
        try:
            fused_strategy, fused_p = mp.plan_strategy(
                fused_w, budget, strategy, allow_checkpointing=checkpointing
            )
        except mp.NoFit:
            fused_strategy = ""
        # its fp32 state (6 more bytes per adapter parameter) must not cost recompute
        if fused_strategy == strategy and fused_p.est_cost <= p.est_cost:
            d, p = d.noted(f"optimizer: {FUSED_OPTIMIZER}", optimizer=FUSED_OPTIMIZER), fused_p
    return dataclasses.replace(
        d,
        strategy=strategy,
        plan=p,
        micro_batch=p.micro_batch,
        grad_accum=p.grad_accum,
        checkpointed_layers=p.checkpointed_layers,
    )


# Unset training.optimizer on a GPU with the planner: torch's fused AdamW updates every
# adapter tensor in one kernel; bitsandbytes' 8-bit AdamW launches per tensor from Python
# (41 ms of a 0.35 s 8B QLoRA step on an H200, bench/results/gpu_profile_project_qlora.txt;
# +9 % tok/s with fused, gpu_profile_llama3-8b.json). Not under FSDP (not measured there).
FUSED_OPTIMIZER = "adamw_torch_fused"

# bitsandbytes' optimizers: their update kernels refuse FSDP's sharded (DTensor) parameters
# ("got mixed torch.Tensor and DTensor", measured on an H200, bench/results).
BNB_OPTIMIZERS = frozenset({"paged_adamw_8bit", "adamw_8bit", "paged_adamw_32bit"})


def fit_fsdp(d: Decision, spec: LoRAFineTuneSpec) -> Decision:
    """What FSDP needs changed (nothing unless d.strategy is fsdp): a torch optimizer
    instead of a bitsandbytes one (the adapters' state is small and sharded N ways anyway),
    and no torch.compile of the wrapped layers (a combination not measured yet)."""
    if d.strategy != "fsdp":
        return d
    if spec.effective_optimizer in BNB_OPTIMIZERS:
        d = d.noted(
            f"fsdp: {spec.effective_optimizer} cannot update sharded parameters; adamw_torch",
            optimizer="adamw_torch",
        )
    if d.compile:
        d = d.noted("fsdp: compile off (not measured under FSDP)", compile=False, liger_layers=True)
    if d.keep_input_dtype:
        d = d.noted("fsdp: peft's adapter input cast kept (not measured)", keep_input_dtype=False)
    return d


# --- applying a decision ---------------------------------------------------------------


# Where transformers' causal LMs keep their decoder layers.
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")


def decoder_layers(model: Any) -> Any | None:
    """The model's list of decoder layers, or None for an architecture laid out otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in _LAYER_PATHS:
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "__len__"):
            return obj
    return None


def limit_checkpointing(model: Any, checkpointed_layers: int) -> int:
    """Keep gradient checkpointing on the first `checkpointed_layers` decoder layers only
    (transformers' GradientCheckpointingLayer reads a per-layer flag). Returns how many
    layers stay checkpointed; all of them when the layers cannot be found."""
    layers = decoder_layers(model)
    if layers is None:
        return -1
    for i, layer in enumerate(layers):
        if i >= checkpointed_layers:
            layer.gradient_checkpointing = False
    return sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)


def embeddings_to_cpu(model: Any) -> int:
    """Replace the input embedding with a CPU-resident lookup; returns bytes freed on the GPU.
    The table is frozen (LoRA never trains it), so nothing needs its gradient."""
    import torch
    from torch import nn

    emb = model.get_input_embeddings()
    out_device = emb.weight.device
    freed = int(emb.weight.numel() * emb.weight.element_size())

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
            rows = nn.functional.embedding(ids.to("cpu"), self.table)
            if out_device.type == "cuda":
                return rows.pin_memory().to(out_device, non_blocking=True)
            return rows.to(out_device)

    model.set_input_embeddings(CpuEmbedding(emb.weight, getattr(emb, "padding_idx", None)))
    del emb
    if out_device.type == "cuda":
        torch.cuda.empty_cache()
    return freed


def apply_before_adapters(model: Any, d: Decision) -> Decision:
    """Embeddings, freezing and (partial) gradient checkpointing on the base model."""
    from .adapters import prepare_base_for_training

    if d.cpu_embeddings:
        gib = embeddings_to_cpu(model) / mp.GIB
        log.info("input embeddings moved to host memory (%.2f GiB freed on the GPU)", gib)
    prepare_base_for_training(model, d.checkpointed_layers > 0)
    if (
        0 < d.checkpointed_layers < d.layers
        and limit_checkpointing(model, d.checkpointed_layers) < 0
    ):
        # safe side: more recompute, less memory
        return d.noted(
            "partial checkpointing: decoder layers not found, all checkpointed",
            checkpointed_layers=d.layers,
        )
    return d


def apply_after_adapters(model: Any, d: Decision) -> Decision:
    layers = decoder_layers(model) if d.compile else None
    if d.compile and layers is None:
        return d.noted(
            "compile: decoder layers not found, training runs eagerly",
            compile=False,
            liger_layers=True,
        )
    if layers is not None:
        import torch._dynamo

        # a layer dynamo cannot compile runs eagerly (logged) instead of failing the run
        torch._dynamo.config.suppress_errors = True
        for layer in layers:
            layer.compile()
    return d


def checkpoint_all(model: Any, d: Decision) -> Decision | None:
    """After out-of-memory errors at one row per pass: recompute every decoder layer from
    now on. Returns the decision that then runs, or None when there is nothing left to
    give up."""
    layers = decoder_layers(model)
    if d.checkpointed_layers >= d.layers or layers is None:
        return None
    if d.checkpointed_layers == 0:  # never wired: as prepare_base_for_training does
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    for layer in layers:
        layer.gradient_checkpointing = True
    return dataclasses.replace(d, checkpointed_layers=d.layers)


def release_compiled(model: Any, d: Decision) -> None:
    """Back to eager layers after training: evaluation and generation (new shapes at every
    decoding step) would otherwise pay recompilations for no gain."""
    if d.compile:
        for layer in decoder_layers(model) or []:
            layer._compiled_call_impl = None  # what nn.Module.compile() set


# FSDP (full shard) through the Trainer's own integration: decoder layers wrapped one by
# one (the peft adapters get their own units, transformers' update_fsdp_plugin_peft), weights
# loaded once on rank 0 and broadcast, the full adapter state gathered for saving.
FSDP_CONFIG: dict[str, Any] = {
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "cpu_ram_efficient_loading": True,
    "sync_module_states": True,
    "use_orig_params": False,
    "state_dict_type": "FULL_STATE_DICT",
    "activation_checkpointing": False,  # the model's own, as without FSDP
}


def fsdp_env() -> None:
    """Before the base loads: transformers loads FSDP weights on rank 0 only (the others on
    the meta device) when accelerate's env says FSDP with RAM-efficient loading."""
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"


def sft_overrides(d: Decision) -> dict[str, Any]:
    """SFTConfig arguments that the decision replaces."""
    out: dict[str, Any] = {
        "per_device_train_batch_size": d.micro_batch,
        "gradient_accumulation_steps": d.grad_accum,
        "use_liger_kernel": d.liger_running,
    }
    if d.optimizer is not None:
        out["optim"] = d.optimizer
    if d.strategy == "fsdp":
        out["fsdp"] = "full_shard auto_wrap"
        out["fsdp_config"] = dict(FSDP_CONFIG)
    elif d.strategy == "ddp":
        out["ddp_find_unused_parameters"] = False  # every adapter gets a gradient
    return out
