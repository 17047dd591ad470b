"""Resumable checkpoints in the run's store and SIGTERM handling.

Layout (api.run_layout): checkpoints/step-<k>/ holds the Trainer's checkpoint folder plus a marker
(`COMPLETE`) uploaded after every other file: a checkpoint without it was cut off
mid-upload and is ignored. On start the newest complete one is fetched and training
continues from its step (the Trainer restores optimizer, scheduler, RNG and skips the
batches already seen).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from loraf_operator.api.run_layout import CHECKPOINTS_DIR, checkpoint_dir, checkpoint_step

from .errors import Preempted
from .storage import Store, local_files, put_dir

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
LEDGER = "loraf-run.json"  # what the Trainer's own state lacks: time trained before this save
TRAINER_STATE = "trainer_state.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json (global_step, max_steps, epoch, log_history)."""
    return read_json(checkpoint / TRAINER_STATE)


def training_complete(state: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's state is the end of training: resuming from it must run no
    step (the Trainer would run one more when max_steps is not a whole number of epochs)."""
    max_steps = int(state.get("max_steps") or 0)
    return max_steps > 0 and int(state.get("global_step") or 0) >= max_steps


def prior_runtime_seconds(checkpoint: Path | None) -> float:
    """Training seconds spent by earlier processes up to this checkpoint."""
    if checkpoint is None:
        return 0.0
    return float(read_json(checkpoint / LEDGER).get("trainRuntimeSeconds") or 0.0)


def write_ledger(checkpoint: Path, runtime_seconds: float) -> None:
    (checkpoint / LEDGER).write_text(json.dumps({"trainRuntimeSeconds": round(runtime_seconds, 3)}))


def run_train_loss(log_history: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean training loss per step over the whole run, from the Trainer's log history
    (restored from the checkpoint on resume, so it spans every process). Each `loss`
    entry is the mean since the previous one, so entries are weighted by their steps."""
    total = 0.0
    steps = 0
    prev = 0
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue
        step = int(entry["step"])
        if step <= prev:
            continue
        try:
            loss = float(entry["loss"])
        except (TypeError, ValueError):
            continue
        total += loss * (step - prev)
        steps += step - prev
        prev = step
    return total / steps if steps else None


def complete_checkpoints(store: Store) -> list[int]:
    """Steps of checkpoints whose marker exists, ascending."""
    steps = []
    for child in store.list_children(CHECKPOINTS_DIR):
        step = checkpoint_step(child)
        if step is not None and store.get_bytes(f"{CHECKPOINTS_DIR}/{child}/{MARKER}") is not None:
            steps.append(step)
    return sorted(steps)


def upload_checkpoint(store: Store, local: Path, step: int, keep: int = 2) -> None:
    rel = checkpoint_dir(step)
    files = local_files(local)
    put_dir(store, local, rel)
    store.put_bytes(
        f"{rel}/{MARKER}",
        json.dumps({"step": step, "files": {k: p.stat().st_size for p, k in files}}).encode(),
    )
    # Older checkpoints are superseded; keep a spare in case the newest is unreadable.
    for old in complete_checkpoints(store)[:-keep] if keep > 0 else []:
        store.delete_prefix(checkpoint_dir(old))


def fetch_latest_checkpoint(store: Store, work_dir: Path, download: bool = True) -> Path | None:
    """Download the newest complete checkpoint into work_dir/checkpoint-<k>; with
    `download` False only say where it goes (another rank of the pod downloads it)."""
    steps = complete_checkpoints(store)
    if not steps:
        return None
    step = steps[-1]
    dest = work_dir / f"checkpoint-{step}"
    if not download:
        return dest
    store.get_prefix(checkpoint_dir(step), dest)
    (dest / MARKER).unlink(missing_ok=True)
    log.info("resuming from %s (step %d)", store.uri(checkpoint_dir(step)), step)
    return dest


# Exit this much before the grace period ends (SIGKILL): a tenth of it, at least 2 s.
SHUTDOWN_MARGIN_FRACTION = 0.1
SHUTDOWN_MARGIN_MIN_S = 2.0
# Time to leave the step, write the termination message and exit, besides the save.
SHUTDOWN_EXIT_S = 1.0


def shutdown_plan(grace_s: float, save_estimate_s: float | None) -> tuple[float, float]:
    """(seconds the running step may still take, seconds until the trainer must be gone)
    after SIGTERM, for a pod grace period of grace_s.

    The trainer exits a margin before SIGKILL; before that it needs time for one
    checkpoint (twice the last measured save, or half the budget before any save) and
    to exit."""
    margin = max(SHUTDOWN_MARGIN_MIN_S, SHUTDOWN_MARGIN_FRACTION * grace_s)
    exit_after = max(0.0, grace_s - margin)
    save_budget = (
        2 * save_estimate_s + SHUTDOWN_EXIT_S if save_estimate_s is not None else exit_after / 2
    )
    return max(0.0, exit_after - save_budget), exit_after


class StepInterrupted(Exception):
    """Raised in the main thread when the running step cannot end within the grace
    period: training stops mid-step and the last completed step is checkpointed."""


class Preemption:
    """SIGTERM → `requested`, and a shutdown planned within the pod's grace period.

    Before training starts there is nothing to checkpoint, so the handler raises
    Preempted at once. Once `deferred` (set when the training loop starts) it only sets
    the flag: the checkpoint callback saves and stops at the next step end. If that step
    would end too late (`shutdown_plan`), SIGALRM interrupts it (StepInterrupted; never
    inside the optimizer step) and the trainer checkpoints the last completed step.
    Whatever happens, a watchdog exits 75 a margin before the grace period ends, so
    the kubelet never SIGKILLs the trainer (exit 137 would count against backoffLimit);
    the restart resumes from the last stored checkpoint."""

    def __init__(
        self,
        grace_s: float | None = None,
        on_deadline: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        exit_fn: Callable[[int], None] = os._exit,
    ) -> None:
        self.requested = False
        self.deferred = False
        self.interruptible = True  # may SIGALRM cut a step short (one rank only)
        self.grace_s = grace_s
        self.on_deadline = on_deadline  # writes the termination message
        self.clock = clock
        self.exit_fn = exit_fn
        self.received_at: float | None = None
        self.in_step = False
        self.in_optimizer_step = False
        self.interrupted = False
        self.save_estimate_s: float | None = None
        self._watchdog: threading.Timer | None = None
        self._previous: object = None
        self._previous_alarm: object = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._previous_alarm = signal.signal(signal.SIGALRM, self._alarm)

    def uninstall(self) -> None:
        """Restore the handlers. A watchdog already running stays: the process must be
        gone before the grace period ends, whatever path it exits by."""
        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._previous = None
        if self._previous_alarm is not None:
            signal.signal(signal.SIGALRM, self._previous_alarm)  # type: ignore[arg-type]
            self._previous_alarm = None

    def cancel(self) -> None:
        """The run ended on its own: no forced exit."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)

    def seconds_since_sigterm(self) -> float:
        return self.clock() - self.received_at if self.received_at is not None else 0.0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.requested
        self.requested = True
        if first:
            self.received_at = self.clock()
            if self.grace_s is not None:
                step_wait, exit_after = shutdown_plan(self.grace_s, self.save_estimate_s)
                self._watchdog = threading.Timer(exit_after, self._deadline, (exit_after,))
                self._watchdog.daemon = True
                self._watchdog.start()
                if self.deferred and self.interruptible:
                    signal.setitimer(signal.ITIMER_REAL, max(step_wait, 0.001))
                log.warning(
                    "SIGTERM: grace period %g s; the running step may take %.1f s more, "
                    "exit 75 at the latest %.1f s from now",
                    self.grace_s,
                    step_wait,
                    exit_after,
                )
        if not self.deferred:
            raise Preempted("SIGTERM received before training started; nothing to checkpoint")

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and self.in_step and not self.in_optimizer_step:
            self.interrupted = True
            raise StepInterrupted(
                f"step interrupted {self.seconds_since_sigterm():.1f} s after SIGTERM "
                f"to stay within the {self.grace_s:g} s grace period"
            )

    def _deadline(self, exit_after: float) -> None:
        message = (
            f"SIGTERM: exiting {exit_after:.1f} s after it, before the {self.grace_s:g} s grace "
            "period ends; the restart resumes from the last stored checkpoint"
        )
        log.error("%s", message)
        if self.on_deadline is not None:
            self.on_deadline(message)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.exit_fn(int(Preempted.exit_code))
