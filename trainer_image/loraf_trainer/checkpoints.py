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
from pathlib import Path
from types import FrameType

from .errors import Preempted
from .storage import Store, local_files, put_dir

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


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
