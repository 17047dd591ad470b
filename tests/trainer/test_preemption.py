"""SIGTERM mid-training → a checkpoint and exit 75; the restart resumes from it (the
step continues, it does not restart from 0)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from loraf_trainer.checkpoints import complete_checkpoints
from loraf_trainer.storage import LocalStore

from .conftest import make_spec, write_manifest

MAX_STEPS = 24


def _start(
    manifest: Path, out: Path, pvc_root: Path, tmp: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LORAF_PVC_ROOT": str(pvc_root),
        "LORAF_NO_STATUS": "1",
        "LORAF_TERMINATION_LOG": str(tmp / "termination-log"),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraf_trainer",
            "run",
            str(manifest),
            "--output",
            str(out),
            "--run",
            "1",
            "--work-dir",
            str(tmp / f"work-{log.stem}"),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def test_sigterm_checkpoints_and_restart_resumes(tmp_path: Path, pvc_root: Path) -> None:
    spec = make_spec(
        training={
            "maxSteps": MAX_STEPS,
            "perDeviceBatchSize": 4,
            "maxSeqLength": 128,
            "checkpointSteps": 4,
            "evalPrompts": 1,
        }
    )
    manifest = write_manifest(tmp_path / "ft.yaml", "preempt", spec)
    out = tmp_path / "out"
    store = LocalStore(out / "run-1")

    first = _start(manifest, out, pvc_root, tmp_path, tmp_path / "first.log")
    deadline = time.monotonic() + 300
    while not complete_checkpoints(store):  # the step-4 checkpoint shows training is under way
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 75, (tmp_path / "first.log").read_text()[-3000:]
    assert (tmp_path / "termination-log").read_text().startswith("SIGTERM at step")
    steps = complete_checkpoints(store)
    preempted_at = steps[-1]
    assert 4 <= preempted_at < MAX_STEPS
    assert not (out / "run-1" / "manifest.json").exists()
    state = json.loads(
        (out / "run-1" / "checkpoints" / f"step-{preempted_at}" / "trainer_state.json").read_text()
    )
    assert state["global_step"] == preempted_at

    second = _start(manifest, out, pvc_root, tmp_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert re.search(rf"resuming from .*step-{preempted_at} \(step {preempted_at}\)", log), log[
        -3000:
    ]
    man = json.loads((out / "run-1" / "manifest.json").read_text())
    assert man["metrics"]["steps"] == MAX_STEPS
    print(f"\npreempted at step {preempted_at}, resumed and finished at {MAX_STEPS}")
