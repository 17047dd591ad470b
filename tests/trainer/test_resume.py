"""Resuming from the final checkpoint trains nothing more, and the manifest describes the
whole run (issue 21 item 4): a 6-step run whose manifest is removed (as if the upload
had been cut off) is run again; the second process finds checkpoint step-6, runs no step
7, and its manifest reports 6 steps, the loss over those 6 steps and the first process's
training time."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from loraf_trainer import cli
from loraf_trainer.checkpoints import complete_checkpoints
from loraf_trainer.storage import LocalStore

from .conftest import make_spec, write_manifest

MAX_STEPS = 6


def _run(manifest: Path, out: Path, work: Path) -> int:
    return cli.main(
        ["run", str(manifest), "--output", str(out), "--run", "1", "--work-dir", str(work)]
    )


def _step_losses(checkpoint: Path) -> dict[int, float]:
    """Per-step losses the Trainer logged (loggingSteps 1) up to a stored checkpoint."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def test_resume_from_final_checkpoint_runs_no_extra_step(
    tmp_path: Path, pvc_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # checkpointSteps 4: step 4 and the final step 6 are stored.
    spec = make_spec(training={"maxSteps": MAX_STEPS, "checkpointSteps": 4, "evalPrompts": 0})
    manifest = write_manifest(tmp_path / "ft.yaml", "resume", spec)
    out = tmp_path / "out"
    store = LocalStore(out / "run-1")

    assert _run(manifest, out, tmp_path / "work-1") == 0
    first = json.loads((out / "run-1" / "manifest.json").read_text())["metrics"]
    assert complete_checkpoints(store)[-1] == MAX_STEPS
    losses = _step_losses(out / "run-1" / "checkpoints" / f"step-{MAX_STEPS}")
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    assert first["steps"] == MAX_STEPS
    assert first["trainLoss"] == pytest.approx(sum(losses.values()) / MAX_STEPS, rel=1e-3)

    (out / "run-1" / "manifest.json").unlink()  # the upload "was cut off"
    caplog.clear()
    assert _run(manifest, out, tmp_path / "work-2") == 0
    assert complete_checkpoints(store)[-1] == MAX_STEPS, "the resume trained another step"
    assert any("training already complete" in r.getMessage() for r in caplog.records)
    second = json.loads((out / "run-1" / "manifest.json").read_text())["metrics"]
    assert second["steps"] == MAX_STEPS
    assert second["trainLoss"] == pytest.approx(first["trainLoss"], rel=1e-6)
    assert second["trainRuntimeSeconds"] == pytest.approx(first["trainRuntimeSeconds"], rel=0.25)
    assert second["epochs"] == pytest.approx(first["epochs"])
