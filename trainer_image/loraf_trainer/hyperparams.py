"""Learning rate, schedule, warmup and batch for a run: the spec's values where given,
otherwise the rule below (pure, unit-tested; docs/trainer.md explains it).

The rule is for the datasets users start with (a few hundred rows, a few epochs), where
every optimizer step counts, and stays close to the usual recipe for large runs:

- **rows per optimizer step** (perDeviceBatchSize × gradientAccumulationSteps): the
  largest of 32, 16, 8, 4 that still gives at least 16 steps per epoch (4 below 64 rows,
  capped at the row count);
- **learning rate**: 1e-3 × (576 / hidden size)^0.82 × 2 / (LoRA scale), where the LoRA
  scale is alpha/r (alpha/sqrt(r) with rsLoRA): log-linear between two anchors, 1e-3
  measured on SmolLM2-135M (hidden 576, alpha = 2r) in bench/quality (more paraphrases
  recalled than 5e-4 at each of three seeds, general answers the same on average), and
  2e-4 at hidden 4096 (Llama/Mistral 7-8B), the long-standing LoRA default there. A
  larger alpha/r scales the update itself, so the rate shrinks by the same factor;
- **schedule**: up to 300 optimizer steps, a constant rate without warmup (a decay would
  spend the last third of a short run barely learning); longer runs a cosine decay after
  a warmup of 3 % of the steps (at most 100);
- the first step never runs at learning rate 0: warmup counts from step 1 (see
  `warmup_lambda`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

BATCH_CHOICES = (32, 16, 8, 4)
MIN_STEPS_PER_EPOCH = 16
ANCHOR_LR = 1e-3  # measured, bench/results/quality_sweep-lr1e-3*.json (3 seeds)
ANCHOR_HIDDEN = 576  # SmolLM2-135M
LARGE_LR, LARGE_HIDDEN = 2e-4, 4096  # the usual LoRA rate for 7-8B models
LR_EXPONENT = math.log(ANCHOR_LR / LARGE_LR) / math.log(LARGE_HIDDEN / ANCHOR_HIDDEN)  # 0.82
LR_RANGE = (1e-5, 2e-3)
SHORT_RUN_STEPS = 300
WARMUP_FRACTION = 0.03
MAX_WARMUP_STEPS = 100
DEFAULT_HIDDEN = 4096  # when a config has no hidden_size: the conservative end
UNKNOWN_ROWS = 10_000  # callers that do not know the row count: a large dataset


@dataclass(frozen=True)
class Hyper:
    """What the run trains with. `chosen` names the spec fields the rule filled in."""

    learning_rate: float
    scheduler: str
    warmup_steps: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    total_steps: int
    chosen: tuple[str, ...] = ()

    @property
    def rows_per_step(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def status(self) -> dict[str, Any]:
        """The schedule part of status.progress.plan (and of the manifest)."""
        return {
            "learningRate": self.learning_rate,
            "scheduler": self.scheduler,
            "warmupSteps": self.warmup_steps,
            "rowsPerStep": self.rows_per_step,
            "totalSteps": self.total_steps,
            "defaults": list(self.chosen),
        }


def default_batch(rows: int) -> int:
    """Rows per optimizer step: the largest choice keeping ≥ 16 steps per epoch."""
    for b in BATCH_CHOICES:
        if rows >= b * MIN_STEPS_PER_EPOCH:
            return b
    return max(1, min(BATCH_CHOICES[-1], rows))


def lora_scale(r: int, alpha: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def default_learning_rate(hidden_size: int | None, scale: float) -> float:
    hidden = hidden_size or DEFAULT_HIDDEN
    lr = ANCHOR_LR * (ANCHOR_HIDDEN / hidden) ** LR_EXPONENT * 2.0 / scale
    lo, hi = LR_RANGE
    return float(f"{min(hi, max(lo, lr)):.3g}")


def planned_steps(
    rows: int, rows_per_step: int, epochs: float | None, max_steps: int | None
) -> int:
    """Optimizer steps as the Trainer counts them (a last partial batch is a step)."""
    if max_steps is not None:
        return max_steps
    per_epoch = max(1, math.ceil(rows / rows_per_step))
    return max(1, math.ceil(per_epoch * (epochs or 1.0)))


def resolve(training: Any, lora: Any, train_rows: int, hidden_size: int | None) -> Hyper:
    """The run's hyper-parameters: spec.training's values where set, the rule elsewhere.

    `training` is a TrainingSpec, `lora` a LoRASpec (read only)."""
    chosen: list[str] = []
    pdbs, gas = training.per_device_batch_size, training.gradient_accumulation_steps
    if pdbs is None and gas is None:
        pdbs, gas = default_batch(train_rows), 1
        chosen.append("perDeviceBatchSize")
    elif pdbs is None:
        pdbs = max(1, math.ceil(default_batch(train_rows) / gas))
        chosen.append("perDeviceBatchSize")
    elif gas is None:
        gas = 1
    steps = planned_steps(train_rows, pdbs * gas, training.epochs, training.max_steps)

    lr = training.learning_rate
    if lr is None:
        lr = default_learning_rate(
            hidden_size, lora_scale(lora.r, lora.effective_alpha, lora.use_rslora)
        )
        chosen.append("learningRate")
    short = steps <= SHORT_RUN_STEPS
    scheduler = training.scheduler
    if scheduler is None:
        scheduler = "constant" if short else "cosine"
        chosen.append("scheduler")
    if training.warmup_ratio is not None:
        warmup = math.ceil(training.warmup_ratio * steps)
    else:
        warmup = 0 if short else min(MAX_WARMUP_STEPS, math.ceil(WARMUP_FRACTION * steps))
        chosen.append("warmupRatio")
    if scheduler == "constant" and warmup:
        scheduler = "constant_with_warmup"  # a warmup asked for is a warmup done
    return Hyper(
        learning_rate=lr,
        scheduler=scheduler,
        warmup_steps=warmup,
        per_device_batch_size=pdbs,
        gradient_accumulation_steps=gas,
        total_steps=steps,
        chosen=tuple(chosen),
    )


def warmup_lambda(inner: Any) -> Any:
    """A schedule shifted by one step: step 0 runs at the rate the library's schedule gives
    step 1, so a warmup of w steps reaches the peak at step w-1 and no step runs at 0."""

    def shifted(step: int) -> float:
        return float(inner(step + 1))

    return shifted
