"""Run-level bookkeeping of checkpoints: is training complete, the loss over every
process, the time trained before a resume (issue 21 item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraf_trainer.checkpoints import (
    prior_runtime_seconds,
    run_train_loss,
    training_complete,
    write_ledger,
)


def test_training_complete_at_or_past_max_steps() -> None:
    assert training_complete({"global_step": 6, "max_steps": 6})
    assert training_complete({"global_step": 7, "max_steps": 6})
    assert not training_complete({"global_step": 5, "max_steps": 6})
    assert not training_complete({})  # no state: not a finished run


def test_run_train_loss_weights_entries_by_their_steps() -> None:
    history = [
        {"loss": 4.0, "step": 2},  # mean of steps 1-2
        {"eval_loss": 9.0, "step": 2},  # not a training loss
        {"loss": 1.0, "step": 3},  # step 3 (a save forced a log)
        {"loss": 2.0, "step": 7},  # steps 4-7, logged by the resumed process
        {"train_loss": 0.5, "step": 7},  # one process's summary, ignored
    ]
    assert run_train_loss(history) == pytest.approx((4.0 * 2 + 1.0 + 2.0 * 4) / 7)
    assert run_train_loss([]) is None


def test_ledger_round_trip(tmp_path: Path) -> None:
    assert prior_runtime_seconds(None) == 0.0
    assert prior_runtime_seconds(tmp_path) == 0.0  # a checkpoint from before the ledger
    write_ledger(tmp_path, 12.3456)
    assert prior_runtime_seconds(tmp_path) == pytest.approx(12.346)
