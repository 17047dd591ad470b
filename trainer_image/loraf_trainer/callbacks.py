"""TrainerCallbacks: progress into status, checkpoints to the store, preemption.

Kept apart from the pure status/checkpoint logic so those stay importable without
transformers.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraf_operator.api import run_layout
from loraf_operator.api.models import Progress

from . import ranks as rank_state
from .checkpoints import Preemption, upload_checkpoint, write_ledger
from .status_reporter import Remaining, StatusPublisher, eta_seconds, format_eta
from .storage import Store

log = logging.getLogger(__name__)


def _peak_gpu_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_reserved() / 2**30, 2)


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# TRL DPOTrainer's training logs → status.progress.dpo (api.models.DPOProgress).
DPO_LOG_KEYS = {
    "rewards/chosen": "rewardsChosen",
    "rewards/rejected": "rewardsRejected",
    "rewards/accuracies": "rewardAccuracy",
    "rewards/margins": "rewardMargin",
}


def dpo_fields(logs: dict[str, Any]) -> dict[str, float]:
    """The DPO metrics of one training log line (eval lines carry an `eval_` prefix and
    are left out)."""
    out = {}
    for key, name in DPO_LOG_KEYS.items():
        if (v := _finite(logs.get(key))) is not None:
            out[name] = round(v, 4)
    return out


class ProgressCallback(TrainerCallback):
    """Feeds the StatusPublisher (rate-limited there) and logs a line per logging step.

    Only while training runs: the evaluations after it (Trainer.evaluate logs through the
    same callbacks) must not set the stage back to Training. The ETA covers what is left
    of the run (`remaining`: evaluation, generations, upload), not training alone."""

    def __init__(
        self,
        publisher: StatusPublisher,
        log_lines: bool = True,
        remaining: Remaining | None = None,
    ) -> None:
        self.publisher = publisher
        self.log_lines = log_lines
        self.remaining = remaining
        self.training = False
        self._rows_per_step = 1
        self._t0 = time.monotonic()
        self._step0 = 0
        self._tok_mark: tuple[float, float] | None = None  # (time, tokens) at last log
        self.tokens_per_second: float | None = None

    def _snapshot(self, state: TrainerState) -> Progress:
        total = state.max_steps or 0
        step = state.global_step
        elapsed, done = time.monotonic() - self._t0, step - self._step0
        eta = eta_seconds(elapsed, done, total - step)
        if self.remaining is not None:
            if done > 0 and elapsed > 0:
                self.remaining.measured_training(elapsed / (done * self._rows_per_step))
            eta = self.remaining.seconds(eta) if eta is not None else None
        return Progress(
            stage="Training",
            step=step,
            total_steps=total,
            epoch=round(state.epoch or 0.0, 4),
            percent=round(100.0 * step / total, 2) if total else None,
            eta_seconds=round(eta, 1) if eta is not None else None,
            eta=format_eta(eta),
            tokens_per_second=self.tokens_per_second,
            peakGpuMemoryGiB=_peak_gpu_gib(),
        )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._t0 = time.monotonic()
        self._step0 = state.global_step  # > 0 after a resume
        self._rows_per_step = max(
            1, (args.per_device_train_batch_size or 1) * (args.gradient_accumulation_steps or 1)
        )
        self.training = True
        self.publisher.update(self._snapshot(state), force=True)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        logs = logs or {}
        fields: dict[str, Any] = {}
        if (loss := _finite(logs.get("loss"))) is not None:
            fields["loss"] = round(loss, 4)
        if (eval_loss := _finite(logs.get("eval_loss"))) is not None:
            fields["evalLoss"] = round(eval_loss, 4)
        if (lr := _finite(logs.get("learning_rate"))) is not None:
            fields["learningRate"] = lr
        if dpo := dpo_fields(logs):
            fields["dpo"] = dpo
        tokens = _finite(logs.get("num_tokens")) or _finite(state.num_input_tokens_seen or None)
        if tokens is not None:
            now = time.monotonic()
            if (
                self._tok_mark is not None
                and now > self._tok_mark[0]
                and tokens > self._tok_mark[1]
            ):
                self.tokens_per_second = round(
                    (tokens - self._tok_mark[1]) / (now - self._tok_mark[0]), 1
                )
            self._tok_mark = (now, tokens)
        self.publisher.update(
            {**self._snapshot(state).to_patch(), **fields} if self.training else fields
        )
        if self.log_lines and fields:
            log.info(
                "step %d/%d %s",
                state.global_step,
                state.max_steps,
                " ".join(f"{k}={v}" for k, v in fields.items()),
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.training:
            self.publisher.update(self._snapshot(state))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.training:
            self.publisher.update(self._snapshot(state), force=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.publisher.update(self._snapshot(state), force=True)
        self.training = False


class CheckpointCallback(TrainerCallback):
    """Saves on a time budget, at the last step and on SIGTERM; ships each saved
    checkpoint to the store.

    The Trainer writes checkpoint-<k>/ (adapter, optimizer, scheduler, RNG states and
    trainer_state.json, which records the data position); on_save adds the run ledger
    (training time so far, over every process), copies it to checkpoints/step-<k>/ and
    writes the completion marker last. The last step is always stored, so a run whose
    upload failed resumes there and only uploads. Every save is preceded by a log entry,
    so the saved log history covers each step up to the checkpoint (the run's loss)."""

    def __init__(
        self,
        store: Store,
        preemption: Preemption,
        checkpoint_minutes: float | None,
        keep: int = 2,
        prior_runtime_s: float = 0.0,
        ranks: rank_state.Ranks | None = None,
    ) -> None:
        self.ranks = ranks or rank_state.Ranks()
        self.store = store
        self.preemption = preemption
        self.interval_s = checkpoint_minutes * 60 if checkpoint_minutes else None
        self.keep = keep
        self.prior_runtime_s = prior_runtime_s
        self._t0 = time.monotonic()
        self._last_save = time.monotonic()
        self._save_started: float | None = None
        self.saved_steps: list[int] = []
        self.stored_step: int | None = None

    def save_now(self, trainer: Any) -> int | None:
        """After an interrupted step: checkpoint the last completed step unless it is
        stored already. The weights and optimizer are those of that step (the
        interruption never falls inside the optimizer update); the partial gradients are
        not saved. Returns the stored step."""
        state = trainer.state
        if state.global_step > 0 and state.global_step != self.stored_step:
            self._save_started = time.monotonic()
            trainer._save_checkpoint(trainer.model, trial=None)
            self.on_save(trainer.args, state, trainer.control)
        return self.stored_step

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._t0 = self._last_save = time.monotonic()
        self.stored_step = state.global_step or None  # a resumed run's checkpoint is stored

    # The preemption may interrupt a step (SIGALRM), never the optimizer update itself.
    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.preemption.in_step = True

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.preemption.in_optimizer_step = True

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.preemption.in_optimizer_step = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.preemption.in_step = False
        stop = self.preemption.requested
        due = bool(self.interval_s and time.monotonic() - self._last_save >= self.interval_s)
        if self.ranks.distributed:  # every rank saves and stops at the same step
            stop, due = rank_state.agree(stop, due)
        if stop:
            log.warning("SIGTERM: saving a checkpoint at step %d and stopping", state.global_step)
            control.should_save = True
            control.should_training_stop = True
        elif due:
            control.should_save = True
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
        if control.should_save:
            control.should_log = True
            self._save_started = time.monotonic()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        step = state.global_step
        local = Path(args.output_dir or ".") / f"checkpoint-{step}"
        if self.ranks.distributed:
            self._share_rank_state(local, step)
        if not self.ranks.main:  # took part; rank 0 stores it
            self.saved_steps.append(step)
            self.stored_step = step
            return
        if not local.is_dir():
            log.warning("checkpoint folder %s missing after save", local)
            return
        write_ledger(local, self.prior_runtime_s + time.monotonic() - self._t0)
        upload_checkpoint(self.store, local, step, keep=self.keep)
        self.saved_steps.append(step)
        self.stored_step = step
        self._last_save = time.monotonic()
        if self._save_started is not None:  # what a save costs, for the SIGTERM plan
            self.preemption.save_estimate_s = self._last_save - self._save_started
            self._save_started = None
        log.info(
            "checkpoint step-%d stored at %s", step, self.store.uri(run_layout.checkpoint_dir(step))
        )

    def _share_rank_state(self, local: Path, step: int) -> None:
        """What a resume on the same world size needs from every rank: its RNG state
        (rng_state_<rank>.pth). Ranks of rank 0's pod write into the folder rank 0 uploads;
        ranks of other pods upload their own file. The barrier makes sure every file is
        in place before rank 0 uploads and writes the completion marker."""
        mine = local / f"rng_state_{self.ranks.rank}.pth"
        if self.ranks.node_rank != 0 and mine.is_file():
            self.store.put_files([(mine, f"{run_layout.checkpoint_dir(step)}/{mine.name}")])
        rank_state.barrier()
