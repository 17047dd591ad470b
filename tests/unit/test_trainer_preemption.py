"""The SIGTERM plan within the pod's grace period (issue 21 item 2): how long the
running step may take, when the trainer must be gone, the mid-step interruption and the
watchdog that exits 75 before SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from loraf_trainer.checkpoints import Preemption, StepInterrupted, shutdown_plan
from loraf_trainer.errors import Preempted


def test_shutdown_plan() -> None:
    # 120 s grace: exit 12 s before SIGKILL; a save measured at 10 s (twice that, plus
    # 1 s to exit) leaves the step 87 s.
    assert shutdown_plan(120, 10) == (87, 108)
    # Before any save: half of the budget for the step, half for the checkpoint.
    assert shutdown_plan(120, None) == (54, 108)
    # Small grace: the margin is at least 2 s; a slow save leaves the step no time.
    assert shutdown_plan(6, 5) == (0, 4)
    assert shutdown_plan(1, None) == (0, 0)


class Recorded(Preemption):
    """A Preemption whose watchdog records instead of exiting the test process."""

    def __init__(self) -> None:
        self.exits: list[int] = []
        self.messages: list[str] = []
        super().__init__(grace_s=4, on_deadline=self.messages.append, exit_fn=self.exits.append)


@pytest.fixture
def preemption() -> Iterator[Recorded]:
    p = Recorded()
    p.install()
    yield p
    p.cancel()
    p.uninstall()


def _wait(cond: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_sigterm_before_training_raises_at_once(preemption: Recorded) -> None:
    with pytest.raises(Preempted):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert preemption.requested


def test_a_step_too_long_is_interrupted_and_the_watchdog_exits_75(
    preemption: Recorded,
) -> None:
    preemption.deferred = True
    preemption.in_step = True
    t0 = time.monotonic()
    # grace 4 s: exit after 2 s; no save measured, so the step may take 1 s more.
    with pytest.raises(StepInterrupted, match="grace period"):
        os.kill(os.getpid(), signal.SIGTERM)
        while time.monotonic() - t0 < 10:  # a "step" that would take 10 s
            sum(range(1000))
    assert 0.9 < time.monotonic() - t0 < 1.5
    assert _wait(lambda: preemption.exits, 3)
    assert preemption.exits == [75]
    assert 1.9 < time.monotonic() - t0 < 2.6
    assert "before the 4 s grace period ends" in preemption.messages[0]


def test_the_optimizer_update_is_never_interrupted(preemption: Recorded) -> None:
    preemption.deferred = True
    preemption.in_step = preemption.in_optimizer_step = True
    os.kill(os.getpid(), signal.SIGTERM)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.3:  # past the 1 s step budget: no exception
        sum(range(1000))
    assert preemption.requested and not preemption.interrupted


def test_a_finished_run_cancels_the_watchdog(preemption: Recorded) -> None:
    preemption.deferred = True
    os.kill(os.getpid(), signal.SIGTERM)
    preemption.cancel()
    time.sleep(2.3)
    assert preemption.exits == []
