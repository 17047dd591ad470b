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

import pytest

from loraf_trainer.checkpoints import complete_checkpoints, prior_runtime_seconds
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
    before = prior_runtime_seconds(out / "run-1" / "checkpoints" / f"step-{preempted_at}")

    second = _start(manifest, out, pvc_root, tmp_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert re.search(rf"resuming from .*step-{preempted_at} \(step {preempted_at}\)", log), log[
        -3000:
    ]
    man = json.loads((out / "run-1" / "manifest.json").read_text())
    assert man["metrics"]["steps"] == MAX_STEPS
    # The manifest describes the whole run, not the second process (issue 21 item 4):
    # the loss over all 24 steps (loggingSteps 1) and both processes' training time.
    final = json.loads(
        (out / "run-1" / "checkpoints" / f"step-{MAX_STEPS}" / "trainer_state.json").read_text()
    )
    losses = {e["step"]: e["loss"] for e in final["log_history"] if "loss" in e}
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    assert man["metrics"]["trainLoss"] == pytest.approx(sum(losses.values()) / MAX_STEPS, rel=1e-3)
    assert 0 < before < man["metrics"]["trainRuntimeSeconds"]
    print(f"\npreempted at step {preempted_at}, resumed and finished at {MAX_STEPS}")


GRACE_S = 5


def test_sigterm_mid_step_exits_75_within_the_grace_period(tmp_path: Path, pvc_root: Path) -> None:
    """A step that would outlast the grace period is interrupted: exit 75 before the
    kubelet's SIGKILL would come (issue 21 item 2: the old trainer finished the step and
    was killed, exit 137, counted against backoffLimit)."""
    spec = make_spec(
        training={
            "maxSteps": 8,
            "perDeviceBatchSize": 2,
            "gradientAccumulationSteps": 12,  # a long step: 12 forward/backward passes
            "checkpointSteps": 1,
            "evalPrompts": 0,
        },
        resources={"terminationGracePeriodSeconds": GRACE_S},
    )
    manifest = write_manifest(tmp_path / "ft.yaml", "grace", spec)
    out = tmp_path / "out"
    store = LocalStore(out / "run-1")
    proc = _start(manifest, out, pvc_root, tmp_path, tmp_path / "grace.log")
    deadline = time.monotonic() + 600
    while not complete_checkpoints(store):  # step 1 stored: step 2 has just begun
        assert proc.poll() is None, (tmp_path / "grace.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=GRACE_S)  # the kubelet's SIGKILL would come here
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {GRACE_S} s after SIGTERM (exit 137)") from None
    took = time.monotonic() - t0
    message = (tmp_path / "termination-log").read_text()
    assert rc == 75, (tmp_path / "grace.log").read_text()[-3000:]
    assert took < GRACE_S, f"exit {took:.1f} s after SIGTERM; grace {GRACE_S} s: {message}"
    assert "SIGTERM" in message and "grace period" in message, message
    assert complete_checkpoints(store) == [1]
    print(f"\nSIGTERM mid-step: exit 75 after {took:.2f} s (grace {GRACE_S} s): {message}")
