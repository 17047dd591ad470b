"""One benchmark configuration, in its own process (Liger patches classes globally).

Runners:
- "project": the trainer's own path, train.prepare_model + train.build_trainer as
  train.run() calls them, with a validated spec, fed a random-init checkpoint and
  synthetic rows of token ids.
- "trl": the documented TRL recipe: from_pretrained(+BitsAndBytesConfig), SFTConfig,
  SFTTrainer(peft_config=LoraConfig), optionally use_liger_kernel=True.
- "unsloth": Unsloth's documented recipe: FastLanguageModel.from_pretrained(load_in_4bit),
  FastLanguageModel.get_peft_model, TRL's SFTTrainer (Unsloth patches it); its own
  trl/datasets pins live in their own folder (`site`, bench/gpu/unsloth-wheels.sh).
All get the same LoRA shape, optimizer, schedule, seed, rows and effective batch.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

GIB = 1024**3
# what peft's "all-linear" selects in a Llama decoder (Unsloth wants the names)
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "accelerate",
        "datasets",
        "liger-kernel",
        "triton",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def device_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"name": "cpu"}
    p = torch.cuda.get_device_properties(0)
    return {
        "name": p.name,
        "total_gib": round(p.total_memory / GIB, 2),
        "sms": p.multi_processor_count,
    }


def make_spec(cfg: dict[str, Any]) -> Any:
    """A real LoRAFineTuneSpec for the project runner (validated like a user's). Bench
    switches map onto spec.training.optimizations; `plain` turns every one off (the
    trainer before issue 9)."""
    from loraf_operator.api.models import LoRAFineTuneSpec

    plain = bool(cfg.get("plain"))
    optimizations = {
        "planner": not plain and cfg.get("planner", True),
        "fusedKernels": not plain and cfg.get("liger", True),
        "compile": not plain and cfg.get("compile", True),
        "cpuEmbeddings": bool(cfg.get("cpu_embed")),
        "oomRecovery": not plain,
    }
    training: dict[str, Any] = {
        "maxSteps": cfg["steps"],
        "learningRate": cfg.get("lr", 2e-4),
        "scheduler": "constant",  # both runners: a constant rate, no warmup (loss parity)
        "warmupRatio": 0.0,
        "perDeviceBatchSize": cfg["micro"],
        "gradientAccumulationSteps": cfg["ga"],
        "maxSeqLength": cfg["seq"],
        "gradientCheckpointing": cfg.get("gc", "full") != "none",
        "seed": cfg.get("seed", 42),
        "checkpointMinutes": None,
        "optimizations": optimizations,
    }
    if cfg.get("budget_gib"):
        training["memoryBudgetGiB"] = cfg["budget_gib"]
    if cfg.get("optim"):
        training["optimizer"] = cfg["optim"]
    dpo = cfg.get("objective") == "dpo"
    return LoRAFineTuneSpec.model_validate(
        {
            "baseModel": {"pvc": {"claimName": "bench", "path": cfg["model_dir"]}},
            "dataset": {"s3": "s3://bench/rows.jsonl", "format": "preference" if dpo else "text"},
            "objective": "dpo" if dpo else "sft",
            "method": cfg["method"],
            "lora": {
                "r": cfg.get("r", 16),
                "alpha": 2 * cfg.get("r", 16),
                "dropout": cfg.get("lora_dropout", 0.0),
                "targetModules": ["all-linear"],
            },
            "training": training,
            "resources": {"gpus": 1, "strategy": cfg.get("strategy", "auto")},
            "output": {"s3": "s3://bench/out"},
        }
    )


class Meter:
    """TrainerCallback: wall time of each optimizer step (CUDA-synchronized), losses,
    peak memory from train begin, and the time to the first step."""

    def __new__(cls, t_process: float) -> Any:
        import torch
        from transformers import TrainerCallback

        class _Meter(TrainerCallback):
            def __init__(self) -> None:
                self.step_ends: list[float] = []
                self.losses: list[float] = []
                self.t_begin = 0.0
                self.first_step_since_start = 0.0

            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.t_begin = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                now = time.perf_counter()
                if not self.step_ends:
                    self.first_step_since_start = now - t_process
                self.step_ends.append(now)

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any
            ) -> None:
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))

        return _Meter()


class Profiler:
    """TrainerCallback: torch.profiler over two optimizer steps; writes the top kernels
    and the GPU-busy fraction (kernel time / wall time) to a text file."""

    def __new__(cls, path: str, at: int) -> Any:
        import torch
        from transformers import TrainerCallback

        class _Profiler(TrainerCallback):
            def __init__(self) -> None:
                self.prof: Any = None
                self.t0 = 0.0

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.global_step == at:
                    torch.cuda.synchronize()
                    acts = [
                        torch.profiler.ProfilerActivity.CPU,
                        torch.profiler.ProfilerActivity.CUDA,
                    ]
                    self.prof = torch.profiler.profile(activities=acts)
                    self.prof.__enter__()
                    self.t0 = time.perf_counter()
                elif state.global_step == at + 2 and self.prof is not None:
                    torch.cuda.synchronize()
                    wall = time.perf_counter() - self.t0
                    self.prof.__exit__(None, None, None)
                    ka = self.prof.key_averages()
                    gpu_us = sum(e.self_device_time_total for e in ka)
                    kernels = sum(e.count for e in ka if e.self_device_time_total > 0)
                    head = (
                        f"wall {wall:.3f}s for 2 steps; GPU kernel time {gpu_us / 1e6:.3f}s "
                        f"({100 * gpu_us / 1e6 / wall:.1f}% busy); {kernels} kernel calls\n"
                    )
                    t1 = ka.table(
                        sort_by="self_device_time_total", row_limit=40, max_name_column_width=90
                    )
                    t2 = ka.table(
                        sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=90
                    )
                    Path(path).write_text(head + t1 + "\n\n" + t2)
                    print(head, flush=True)
                    self.prof = None

        return _Profiler()


def planner_estimate(spec: Any, model_dir: Path, budget_gib: float | None) -> dict[str, Any]:
    """The memory planner's plan for this workload at `budget_gib` (default: this GPU's
    total memory), computed without a GPU, to stand beside the measured peak."""
    from transformers import AutoConfig

    from loraf_trainer import memory_planner as mp
    from loraf_trainer import optimizations

    if budget_gib is None:
        import torch

        if not torch.cuda.is_available():
            return {"error": "no GPU and no estimate_budget_gib"}
        budget_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    config = AutoConfig.from_pretrained(model_dir)
    try:
        d = optimizations.decide(spec, config, True, budget_gib, optimizations.liger_available())
    except mp.NoFit as e:
        return {"budget_gib": round(budget_gib, 2), "no_fit": str(e)}
    return d.status() | {"estPeakAllocatedGiB": d.plan.est_peak_allocated_gib if d.plan else None}


def _tokenizer_and_rows(cfg: dict[str, Any], model_dir: Path, vocab: int) -> tuple[Any, Any]:
    from bench.gpu import synthetic

    rows = cfg["steps"] * cfg["micro"] * cfg["ga"]
    if cfg.get("objective") == "dpo":
        words = min(1000, vocab - 3)  # the throwaway tokenizer's words that the model embeds
        ds = synthetic.preference_dataset(rows, cfg["seq"], words, seed=cfg.get("data_seed", 1234))
        return ds, None
    return synthetic.dataset(rows, cfg["seq"], vocab, seed=cfg.get("data_seed", 1234)), None


def build_project(cfg: dict[str, Any], out_dir: Path, meter: Any) -> tuple[Any, dict[str, Any]]:
    """The trainer's own path: train.prepare_model (plan, load, techniques, LoRA) and
    train.build_trainer (TRL SFTTrainer with the plan, OOM recovery), as train.run() calls
    them; only the rows are synthetic."""
    from loraf_operator.api.trainer_config import TrainerConfig
    from loraf_trainer import adapters, model_loading, ranks
    from loraf_trainer import train as ltrain
    from loraf_trainer.callbacks import ProgressCallback
    from loraf_trainer.status_reporter import StatusPublisher

    spec = make_spec(cfg)
    tcfg = TrainerConfig(namespace="bench", name="bench", uid="0", generation=1, run=1, spec=spec)
    path = Path(cfg["model_dir"])
    rk = ranks.current()
    ranks.init(rk)  # under torchrun (the FSDP rows), as train.run does
    device = model_loading.pick_device(rk.local_rank)
    tokenizer = model_loading.load_tokenizer(path)
    if cfg.get("layerwise"):  # a base too big to write out: built in 4 bits layer by layer
        from bench.gpu import layerwise

        model_loading.load_model = layerwise.load_model
    t0 = time.perf_counter()
    model, decision = ltrain.prepare_model(tcfg, path, device, world_size=rk.world_size)
    if "liger_layers" in cfg:  # ablation: Liger's layer kernels with or without compile
        decision = dataclasses.replace(decision, liger_layers=bool(cfg["liger_layers"]))
    if "keep_input_dtype" in cfg:  # ablation: peft's cast of each LoRA input to fp32
        decision = dataclasses.replace(decision, keep_input_dtype=bool(cfg["keep_input_dtype"]))
    extra: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 2)}
    extra["plan"] = decision.status() | {"notes": decision.notes}
    extra["planner_estimate"] = planner_estimate(spec, path, cfg.get("estimate_budget_gib"))
    trainable, total = adapters.count_parameters(model)
    extra |= {"trainable_params": trainable, "total_params": total}
    train_ds, _ = _tokenizer_and_rows(cfg, path, model.config.vocab_size)
    oom: list[list[int]] = []
    trainer = ltrain.build_trainer(
        tcfg,
        model,
        decision,
        tokenizer,
        train_ds,
        None,
        out_dir,
        device,
        [ProgressCallback(StatusPublisher(None), log_lines=False), meter],
        on_oom=lambda _plan, split, retries: oom.append([split, retries]),
    )
    extra["oom_recoveries"] = oom
    extra["fsdp_enabled"] = bool(getattr(trainer, "is_fsdp_enabled", False))
    return trainer, extra


def _trl_args(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """TrainingArguments both TRL recipes (SFT and DPO) get: the same batch, schedule,
    optimizer, precision and seed as the project runner."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(out),
        "per_device_train_batch_size": cfg["micro"],
        "gradient_accumulation_steps": cfg["ga"],
        "max_length": cfg["seq"],
        "max_steps": cfg["steps"],
        "learning_rate": cfg.get("lr", 2e-4),
        "lr_scheduler_type": "constant",
        "optim": cfg.get("optim")
        or ("paged_adamw_8bit" if cfg["method"] == "qlora" else "adamw_torch"),
        "bf16": cuda,
        "use_cpu": not cuda,
        "gradient_checkpointing": cfg.get("gc", "full") != "none",
        "seed": cfg.get("seed", 42),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def build_trl(cfg: dict[str, Any], out_dir: Path, meter: Any) -> tuple[Any, dict[str, Any]]:
    """TRL's documented recipes: SFTTrainer, or (objective dpo) DPOTrainer with
    ref_model=None, the reference being the base with the adapter disabled."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    path = Path(cfg["model_dir"])
    qlora = cfg["method"] == "qlora"
    extra: dict[str, Any] = {}
    tokenizer = AutoTokenizer.from_pretrained(path)
    cuda = torch.cuda.is_available()
    kw: dict[str, Any] = {
        "dtype": torch.bfloat16 if cuda else torch.float32,
        "device_map": {"": 0 if cuda else "cpu"},
    }
    if qlora:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32,
        )
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    extra["load_s"] = round(time.perf_counter() - t0, 2)
    r = cfg.get("r", 16)
    peft_config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=cfg.get("lora_dropout", 0.0),
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    common = _trl_args(cfg, out_dir)
    set_seed(cfg.get("seed", 42))  # LoRA init happens inside the trainer, before Trainer seeds
    train_ds, _ = _tokenizer_and_rows(cfg, path, model.config.vocab_size)
    trainer_cls: Any = SFTTrainer
    args: Any = SFTConfig(
        **common, use_liger_kernel=bool(cfg.get("liger")), data_seed=cfg.get("seed", 42)
    )
    if cfg.get("objective") == "dpo":
        trainer_cls, args = DPOTrainer, DPOConfig(**common, beta=0.1)
    return _trainer(trainer_cls, model, args, train_ds, tokenizer, meter, extra, peft_config)


def build_unsloth(cfg: dict[str, Any], out_dir: Path, meter: Any) -> tuple[Any, dict[str, Any]]:
    """Unsloth's recipe with the same LoRA shape, rows, optimizer and schedule; its
    checkpointing is its own ("unsloth": offloaded) when `gc` is not "none"."""
    import torch
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel  # run_one imported unsloth before transformers

    path = Path(cfg["model_dir"])
    r = cfg.get("r", 16)
    t0 = time.perf_counter()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=cfg["seq"],
        dtype=torch.bfloat16,
        load_in_4bit=cfg["method"] == "qlora",
        fix_tokenizer=False,  # the throwaway word-level tokenizer has no chat template
        local_files_only=True,
    )
    extra: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 2)}
    model = FastLanguageModel.get_peft_model(
        model,
        r=r,
        lora_alpha=2 * r,
        lora_dropout=cfg.get("lora_dropout", 0.0),
        target_modules=list(LLAMA_LINEAR),
        use_gradient_checkpointing="unsloth" if cfg.get("gc", "full") != "none" else False,
        random_state=cfg.get("seed", 42),
    )
    train_ds, _ = _tokenizer_and_rows(cfg, path, model.config.vocab_size)
    args = SFTConfig(**_trl_args(cfg, out_dir), data_seed=cfg.get("seed", 42))
    return _trainer(SFTTrainer, model, args, train_ds, tokenizer, meter, extra)


def _trainer(
    cls: Any,
    model: Any,
    args: Any,
    train_ds: Any,
    tokenizer: Any,
    meter: Any,
    extra: dict[str, Any],
    peft_config: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """A TRL trainer of the peer recipes (peft_config: TRL wraps the model itself), with
    the trainable / total parameter counts."""
    from loraf_trainer import adapters

    kw = {"peft_config": peft_config} if peft_config is not None else {}
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        callbacks=[meter],
        **kw,
    )
    trainable, total = adapters.count_parameters(trainer.model)
    return trainer, extra | {"trainable_params": trainable, "total_params": total}


BUILDERS = {"project": build_project, "trl": build_trl, "unsloth": build_unsloth}


def run(cfg: dict[str, Any], t_process: float, out_dir: Path) -> dict[str, Any]:
    import torch

    from bench.gpu import flops, shapes

    meter = Meter(t_process)
    if cfg.get("compile_mode"):  # experiment: the trainer's layer.compile() in this mode
        import functools

        torch.nn.Module.compile = functools.partialmethod(  # type: ignore[method-assign,assignment]
            torch.nn.Module.compile, mode=cfg["compile_mode"]
        )
    trainer, extra = BUILDERS[cfg["runner"]](cfg, out_dir, meter)
    if cfg.get("profile"):
        trainer.add_callback(Profiler(cfg["profile"], int(cfg.get("profile_at", 6))))
    weights_gib = torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0
    from peft.helpers import disable_input_dtype_casting

    # LoRA inputs stay bf16 under autocast instead of peft's cast to the adapters' fp32:
    # the trainer's default on a GPU (train.fit does the same), an experiment for others
    techniques = extra.get("plan", {}).get("techniques", [])  # the project runner's plan
    keep = "keep-input-dtype" in techniques or bool(cfg.get("no_cast"))
    with disable_input_dtype_casting(trainer.model, active=keep):
        trainer.train()
    if "compile" in techniques:
        from torch._dynamo.utils import counters

        breaks = sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])
        extra["graph_breaks"] = {k[:200]: v for k, v in breaks[:8]}
        extra["dynamo_stats"] = dict(counters["stats"])
    if cfg.get("save_adapter"):
        from loraf_trainer import artifacts

        t0 = time.perf_counter()
        artifacts.save_adapter(
            trainer.model, trainer.processing_class, Path(cfg["save_adapter"]), "bfloat16"
        )
        extra["adapter_save_s"] = round(time.perf_counter() - t0, 2)
        extra["adapter_bytes"] = (
            (Path(cfg["save_adapter"]) / artifacts.ADAPTER_WEIGHTS).stat().st_size
        )
    ends = meter.step_ends
    times = [b - a for a, b in zip([meter.t_begin, *ends[:-1]], ends, strict=True)]
    warm = min(cfg.get("warmup", 3), max(0, len(times) - 2))
    med = statistics.median(times[warm:]) if times[warm:] else float("nan")
    # DPO: chosen and rejected, each prompt + answer = seq tokens, go through the policy
    pairs = 2 if cfg.get("objective") == "dpo" else 1
    tokens_per_step = cfg["micro"] * cfg["ga"] * cfg["seq"] * pairs
    tps = tokens_per_step / med if med and not math.isnan(med) else float("nan")
    fc = flops.count(shapes.build_config(cfg["shape"]), cfg["seq"], cfg.get("r", 16))
    res: dict[str, Any] = {
        "config": cfg,
        "median_step_s": round(med, 4),
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": round(tps, 1),
        "step_times_s": [round(t, 4) for t in times],
        "losses": meter.losses,
        "weights_gib": round(weights_gib, 3),
        "time_to_first_step_s": round(meter.first_step_since_start, 2),
        "model_tflops_per_s": round(fc.tflops(tps), 1),
        "lora_mfu_vs_989": round(flops.mfu(fc, tps, flops.H100_BF16_DENSE_TFLOPS), 4),
        "lora_mfu_vs_measured_798": round(flops.mfu(fc, tps, flops.MEASURED_GEMM_TFLOPS), 4),
        "flops_per_token": fc.per_token,
    }
    if torch.cuda.is_available():
        res["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    res |= extra
    return res
