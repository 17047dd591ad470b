"""The defaults rule for learning rate, schedule, warmup and batch (pure; no torch)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loraf_operator.api.models import LoRASpec, TrainingSpec
from loraf_operator.api.trainer_config import TrainerConfig
from loraf_trainer import hyperparams as hp
from loraf_trainer import optimizations as opt
from loraf_trainer.train import sft_config_kwargs

SMOLLM2_HIDDEN, LLAMA_HIDDEN = 576, 4096


def training(**kw: Any) -> TrainingSpec:
    return TrainingSpec.model_validate({"epochs": 3, **kw})


@pytest.mark.parametrize(
    ("rows", "batch"),
    [(3, 3), (50, 4), (140, 8), (255, 8), (256, 16), (300, 16), (600, 32), (100_000, 32)],
)
def test_batch_is_the_largest_keeping_16_steps_per_epoch(rows: int, batch: int) -> None:
    assert hp.default_batch(rows) == batch
    if rows >= 64:
        assert rows / batch >= hp.MIN_STEPS_PER_EPOCH


def test_learning_rate_anchors_and_scaling() -> None:
    # the measured anchor (SmolLM2-135M, alpha = 2r) and the classic 7-8B value
    assert hp.default_learning_rate(SMOLLM2_HIDDEN, 2.0) == 1e-3
    assert hp.default_learning_rate(LLAMA_HIDDEN, 2.0) == 2e-4
    # in between, log-linear: SmolLM2-360M (hidden 960), Qwen2-1.5B (1536)
    assert 2e-4 < hp.default_learning_rate(1536, 2.0) < hp.default_learning_rate(960, 2.0) < 1e-3
    # alpha = r halves the update scale: twice the rate
    assert hp.default_learning_rate(SMOLLM2_HIDDEN, 1.0) == 2e-3
    # rsLoRA r=16 alpha=32: scale 8, a quarter of the rate
    assert hp.lora_scale(16, 32, rslora=True) == 8.0
    assert hp.default_learning_rate(SMOLLM2_HIDDEN, 8.0) == 2.5e-4
    # clamped, and a model without hidden_size is treated as a large one
    assert hp.default_learning_rate(SMOLLM2_HIDDEN, 0.01) == hp.LR_RANGE[1]
    assert hp.default_learning_rate(None, 2.0) == hp.default_learning_rate(LLAMA_HIDDEN, 2.0)


def test_small_dataset_defaults() -> None:
    """The benchmark's case: 140 rows, 3 epochs, SmolLM2, r=16 alpha 32."""
    h = hp.resolve(training(), LoRASpec(), 140, SMOLLM2_HIDDEN)
    assert (h.per_device_batch_size, h.gradient_accumulation_steps) == (8, 1)
    assert h.total_steps == 18 * 3  # ceil(140 / 8) steps per epoch
    assert (h.learning_rate, h.scheduler, h.warmup_steps) == (1e-3, "constant", 0)
    assert set(h.chosen) == {"perDeviceBatchSize", "learningRate", "scheduler", "warmupRatio"}
    st = h.status()
    assert st["rowsPerStep"] == 8 and st["totalSteps"] == 54 and st["scheduler"] == "constant"


def test_long_runs_decay_after_a_warmup() -> None:
    h = hp.resolve(training(), LoRASpec(), 20_000, LLAMA_HIDDEN)
    assert h.rows_per_step == 32 and h.total_steps == 625 * 3
    assert h.scheduler == "cosine" and h.warmup_steps == 57  # ceil(0.03 * 1875)
    h = hp.resolve(training(), LoRASpec(), 200_000, LLAMA_HIDDEN)
    assert h.warmup_steps == hp.MAX_WARMUP_STEPS  # 3 % would be 563
    h = hp.resolve(training(epochs=1), LoRASpec(), 12_000, LLAMA_HIDDEN)
    assert h.total_steps == 375 and h.warmup_steps == 12  # ceil(0.03 * 375)
    # max_steps counts, not the rows
    h = hp.resolve(training(epochs=None, maxSteps=1000), LoRASpec(), 140, SMOLLM2_HIDDEN)
    assert h.total_steps == 1000 and h.scheduler == "cosine" and h.rows_per_step == 8


def test_values_given_in_the_spec_win() -> None:
    t = training(
        learningRate=2e-4,
        scheduler="cosine",
        warmupRatio=0.03,
        perDeviceBatchSize=4,
        gradientAccumulationSteps=2,
    )
    h = hp.resolve(t, LoRASpec(), 140, SMOLLM2_HIDDEN)
    assert (h.learning_rate, h.scheduler) == (2e-4, "cosine")
    assert (h.per_device_batch_size, h.gradient_accumulation_steps) == (4, 2)
    assert h.total_steps == 18 * 3 and h.warmup_steps == 2  # ceil(0.03 * 54)
    assert h.chosen == ()
    # only the accumulation given: the chosen batch is split into it
    h = hp.resolve(training(gradientAccumulationSteps=4), LoRASpec(), 140, SMOLLM2_HIDDEN)
    assert (h.per_device_batch_size, h.gradient_accumulation_steps) == (2, 4)
    # only the micro-batch given: no accumulation
    h = hp.resolve(training(perDeviceBatchSize=2), LoRASpec(), 140, SMOLLM2_HIDDEN)
    assert h.rows_per_step == 2 and h.total_steps == 70 * 3
    # a warmup asked for on the short-run schedule is done
    h = hp.resolve(training(warmupRatio=0.1), LoRASpec(), 140, SMOLLM2_HIDDEN)
    assert (h.scheduler, h.warmup_steps) == ("constant_with_warmup", 6)
    # the LoRA shape changes the chosen rate
    h = hp.resolve(training(), LoRASpec(r=8, alpha=8), 140, SMOLLM2_HIDDEN)
    assert h.learning_rate == 2e-3


def test_warmup_never_starts_at_zero() -> None:
    def library(step: int) -> float:  # transformers' linear warmup over 4 steps
        return min(1.0, step / 4)

    shifted = hp.warmup_lambda(library)
    assert [shifted(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_sft_config_uses_the_resolved_values(tmp_path: Path) -> None:
    spec = {
        "baseModel": {"huggingFace": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
        "training": {"epochs": 3},
        "output": {"s3": "s3://out/ft"},
    }
    cfg = TrainerConfig.model_validate(
        {"namespace": "ns", "name": "ft", "uid": "u", "generation": 1, "run": 1, "spec": spec}
    )
    smollm2 = SimpleNamespace(num_hidden_layers=30, hidden_size=SMOLLM2_HIDDEN)
    d = opt.decide(cfg.spec, smollm2, on_gpu=False, free_gib=None, liger=False, train_rows=140)
    assert d.hyper == hp.resolve(cfg.spec.training, cfg.spec.lora, 140, SMOLLM2_HIDDEN)
    spec_kw = sft_config_kwargs(cfg, tmp_path, "float32", False, True, False, d.hyper)
    # the training batch has one source, the decision (build_trainer merges it in)
    assert "per_device_train_batch_size" not in spec_kw
    assert "gradient_accumulation_steps" not in spec_kw
    kw = spec_kw | opt.sft_overrides(d)
    assert kw["learning_rate"] == 1e-3 and kw["lr_scheduler_type"] == "constant"
    assert kw["warmup_steps"] == 0 and kw["per_device_train_batch_size"] == 8
    assert kw["gradient_accumulation_steps"] == 1 and kw["num_train_epochs"] == 3
