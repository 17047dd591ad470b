"""The test waits follow progress: a moving run is waited for, a stuck one fails fast."""

from __future__ import annotations

from typing import Any

import pytest

from tests.waiting import StalledError, wait_progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_a_wait_that_sees_progress_outlasts_its_stall_window() -> None:
    clock = FakeClock()
    step = {"n": 0}

    def check() -> Any:
        step["n"] += 1
        return step["n"] if step["n"] >= 300 else None  # done at t≈300 s

    # the step moves every poll: a 30 s fixed budget would have failed at t=30 s
    got = wait_progress(
        "done",
        check,
        seen=lambda: step["n"],
        stall=30,
        cap=3600,
        every=1,
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == 300 and clock.now >= 299


def test_a_wait_that_sees_nothing_change_fails_after_the_stall_window_and_says_what_it_saw() -> (
    None
):
    clock = FakeClock()
    with pytest.raises(StalledError) as e:
        wait_progress(
            "Succeeded",
            lambda: None,
            seen=lambda: {"phase": "Training", "step": 4},
            stall=20,
            cap=3600,
            every=1,
            clock=clock,
            sleep=clock.sleep,
        )
    assert 20 <= clock.now < 22
    msg = str(e.value)
    assert "nothing changed for 20s" in msg and "'step': 4" in msg and "Succeeded" in msg


def test_a_stall_window_restarts_on_each_change() -> None:
    clock = FakeClock()
    # observable changes at t=15 and t=30, then never again: fails at t≈50 with stall 20
    with pytest.raises(StalledError):
        wait_progress(
            "x",
            lambda: None,
            seen=lambda: min(int(clock.now // 15), 2),
            stall=20,
            cap=3600,
            every=1,
            clock=clock,
            sleep=clock.sleep,
        )
    assert 50 <= clock.now < 52


def test_the_hard_cap_ends_a_wait_that_changes_forever() -> None:
    clock = FakeClock()
    with pytest.raises(StalledError) as e:
        wait_progress(
            "x",
            lambda: None,
            seen=clock,
            stall=20,
            cap=100,
            every=1,
            clock=clock,
            sleep=clock.sleep,
        )
    assert 100 <= clock.now < 102 and "hard cap of 100s" in str(e.value)


def test_without_an_observer_the_checks_own_result_is_watched() -> None:
    clock = FakeClock()
    with pytest.raises(StalledError):
        wait_progress("x", lambda: [], stall=5, every=1, clock=clock, sleep=clock.sleep)
    assert 5 <= clock.now < 7
