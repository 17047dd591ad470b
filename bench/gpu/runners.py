"""One benchmark configuration, in its own process (Liger patches classes globally).

Runners:
- "project": the trainer's own path (loraf_trainer.model_loading.load_model,
  adapters.prepare_base_for_training / build_lora_config, train.sft_config_kwargs,
  its ProgressCallback) fed a random-init checkpoint and synthetic rows. The
  10 lines of glue below mirror train.run(), which has no seam that takes a dataset
  of token ids (it reads a spec'd dataset and formats text).
- "trl": the documented TRL recipe: from_pretrained(+BitsAndBytesConfig), SFTConfig,
  SFTTrainer(peft_config=LoraConfig), optionally use_liger_kernel=True.
Both get the same LoRA shape, optimizer, schedule, seed, rows and effective batch.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

GIB = 1024**3


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
    """A real LoRAFineTuneSpec for the project runner (validated like a user's)."""
    from loraf_operator.api.models import LoRAFineTuneSpec

    return LoRAFineTuneSpec.model_validate(
        {
            "baseModel": {"pvc": {"claimName": "bench", "path": cfg["model_dir"]}},
            "dataset": {"s3": "s3://bench/rows.jsonl", "format": "text"},
            "method": cfg["method"],
            "lora": {
                "r": cfg.get("r", 16),
                "alpha": 2 * cfg.get("r", 16),
                "dropout": cfg.get("lora_dropout", 0.05),
                "targetModules": ["all-linear"],
            },
            "training": {
                "maxSteps": cfg["steps"],
                "learningRate": cfg.get("lr", 2e-4),
                "perDeviceBatchSize": cfg["micro"],
                "gradientAccumulationSteps": cfg["ga"],
                "maxSeqLength": cfg["seq"],
                "gradientCheckpointing": cfg.get("gc", "full") != "none",
                "seed": cfg.get("seed", 42),
                "checkpointMinutes": None,
            },
            "resources": {"gpus": 1},
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


def _tokenizer_and_rows(cfg: dict[str, Any], model_dir: Path, vocab: int) -> tuple[Any, Any]:
    from bench.gpu import synthetic

    rows = cfg["steps"] * cfg["micro"] * cfg["ga"]
    return synthetic.dataset(rows, cfg["seq"], vocab, seed=cfg.get("data_seed", 1234)), None


def build_project(cfg: dict[str, Any], out_dir: Path, meter: Any) -> tuple[Any, dict[str, Any]]:
    from peft import get_peft_model
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from bench.gpu import techniques
    from loraf_operator.api.trainer_config import TrainerConfig
    from loraf_trainer import adapters, model_loading
    from loraf_trainer import train as ltrain
    from loraf_trainer.callbacks import ProgressCallback
    from loraf_trainer.status_reporter import StatusPublisher

    spec = make_spec(cfg)
    tcfg = TrainerConfig(namespace="bench", name="bench", uid="0", generation=1, run=1, spec=spec)
    extra: dict[str, Any] = {}
    path = Path(cfg["model_dir"])
    device = model_loading.pick_device()
    tokenizer = model_loading.load_tokenizer(path)
    t0 = time.perf_counter()
    model = model_loading.load_model(path, device, quantization=spec.effective_quantization)
    extra["load_s"] = round(time.perf_counter() - t0, 2)
    vocab = model.config.vocab_size
    if cfg.get("cpu_embed"):
        extra["cpu_embed_freed_gib"] = round(techniques.embeddings_to_cpu(model) / GIB, 3)
    gc = cfg.get("gc", "full")
    if gc == "selective":
        techniques.enable_selective(model)
    adapters.prepare_base_for_training(model, spec.training.gradient_checkpointing)
    if gc.startswith("partial:"):
        extra["checkpointed_layers"] = techniques.limit_checkpointing(model, int(gc.split(":")[1]))
    set_seed(spec.training.seed)
    model = get_peft_model(model, adapters.build_lora_config(spec.lora))
    trainable, total = adapters.count_parameters(model)
    extra |= {"trainable_params": trainable, "total_params": total}
    kw = ltrain.sft_config_kwargs(tcfg, out_dir, device.dtype_name, device.on_gpu, False, False)
    kw["use_liger_kernel"] = bool(cfg.get("liger"))
    kw["activation_offloading"] = bool(cfg.get("offload"))
    train_ds, _ = _tokenizer_and_rows(cfg, path, vocab)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**kw),
        train_dataset=train_ds,
        processing_class=tokenizer,
        callbacks=[ProgressCallback(StatusPublisher(None), log_lines=False), meter],
    )
    return trainer, extra


def build_trl(cfg: dict[str, Any], out_dir: Path, meter: Any) -> tuple[Any, dict[str, Any]]:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

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
        lora_dropout=cfg.get("lora_dropout", 0.05),
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg["micro"],
        gradient_accumulation_steps=cfg["ga"],
        max_length=cfg["seq"],
        max_steps=cfg["steps"],
        learning_rate=cfg.get("lr", 2e-4),
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        optim="paged_adamw_8bit" if qlora else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=cfg.get("gc", "full") != "none",
        use_liger_kernel=bool(cfg.get("liger")),
        seed=cfg.get("seed", 42),
        data_seed=cfg.get("seed", 42),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    set_seed(cfg.get("seed", 42))  # LoRA init happens inside SFTTrainer, before Trainer seeds
    train_ds, _ = _tokenizer_and_rows(cfg, path, model.config.vocab_size)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[meter],
    )
    from loraf_trainer import adapters

    trainable, total = adapters.count_parameters(trainer.model)
    extra |= {"trainable_params": trainable, "total_params": total}
    return trainer, extra


def run(cfg: dict[str, Any], t_process: float, out_dir: Path) -> dict[str, Any]:
    import torch

    from bench.gpu import flops, shapes

    meter = Meter(t_process)
    build = build_project if cfg["runner"] == "project" else build_trl
    trainer, extra = build(cfg, out_dir, meter)
    weights_gib = torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0
    trainer.train()
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
    tokens_per_step = cfg["micro"] * cfg["ga"] * cfg["seq"]
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
