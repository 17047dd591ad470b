"""Resumable checkpoints in the run's store and SIGTERM handling.

Layout: checkpoints/step-<k>/ holds the Trainer's checkpoint folder plus a marker
(`COMPLETE`) uploaded after every other file: a checkpoint without it was cut off
mid-upload and is ignored. On start the newest complete one is fetched and training
continues from its step (the Trainer restores optimizer, scheduler, RNG and skips the
batches already seen).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import Preempted
from .storage import Store, local_files, put_dir

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
LEDGER = "loraf-run.json"  # what the Trainer's own state lacks: time trained before this save
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


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
    for child in store.list_children("checkpoints"):
        m = _STEP_DIR.match(child)
        if m and store.get_bytes(f"checkpoints/{child}/{MARKER}") is not None:
            steps.append(int(m.group(1)))
    return sorted(steps)


def upload_checkpoint(store: Store, local: Path, step: int, keep: int = 2) -> None:
    rel = f"checkpoints/step-{step}"
    files = local_files(local)
    put_dir(store, local, rel)
    store.put_bytes(
        f"{rel}/{MARKER}",
        json.dumps({"step": step, "files": {k: p.stat().st_size for p, k in files}}).encode(),
    )
    # Older checkpoints are superseded; keep a spare in case the newest is unreadable.
    for old in complete_checkpoints(store)[:-keep] if keep > 0 else []:
        store.delete_prefix(f"checkpoints/step-{old}")


def fetch_latest_checkpoint(store: Store, work_dir: Path) -> Path | None:
    """Download the newest complete checkpoint into work_dir/checkpoint-<k>."""
    steps = complete_checkpoints(store)
    if not steps:
        return None
    step = steps[-1]
    dest = work_dir / f"checkpoint-{step}"
    store.get_prefix(f"checkpoints/step-{step}", dest)
    (dest / MARKER).unlink(missing_ok=True)
    log.info("resuming from %s (step %d)", store.uri(f"checkpoints/step-{step}"), step)
    return dest


class Preemption:
    """SIGTERM → `requested`.

    Before training starts there is nothing to checkpoint, so the handler raises
    Preempted at once. Once `deferred` (set when the training loop starts) it only sets
    the flag: the checkpoint callback saves and stops at the next step end, and after
    training the trainer tries to finish its upload within the grace period (if it is
    killed, the restart resumes from the last checkpoint)."""

    def __init__(self) -> None:
        self.requested = False
        self.deferred = False
        self._previous: object = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.deferred:
            raise Preempted("SIGTERM received before training started; nothing to checkpoint")
