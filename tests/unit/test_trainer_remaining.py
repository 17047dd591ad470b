"""The ETA covers what is left of the run; evaluation keeps its own stage (issue 16 item 6)."""

from __future__ import annotations

import time
from typing import Any

from loraf_trainer.status_reporter import Remaining, StatusPublisher, Ticker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def remaining(clock: Clock) -> Remaining:
    return Remaining(
        eval_rows=30,
        prompts=2,
        max_new_tokens=10,
        upload_bytes=50_000_000,
        clock=clock,
        upload_bytes_per_s=10e6,
    )


def test_the_eta_at_the_end_of_training_is_what_follows_not_zero() -> None:
    clock = Clock()
    r = remaining(clock)
    assert r.seconds(0.0) is None  # nothing measured yet: no made-up number
    r.measured_training(0.3)  # seconds per training row; a forward is a third of that
    # scoring 2 x 30 rows at 0.1 s + 2 x 2 prompts x 10 tokens at 0.1 s + 50 MB at 10 MB/s
    assert abs(r.seconds(0.0) - (6.0 + 4.0 + 5.0)) < 1e-9  # type: ignore[operator]
    assert abs(r.seconds(20.0) - 35.0) < 1e-9  # type: ignore[operator]
    assert r.fields(0.0)["eta"] == "15s"


def test_each_part_counts_down_is_refined_and_drops_out_when_done() -> None:
    clock = Clock()
    r = remaining(clock)
    r.measured_training(0.3)
    r.begin("evalLoss")
    clock.now += 4
    assert abs(r.seconds() - (2.0 + 4.0 + 5.0)) < 1e-9  # type: ignore[operator]
    clock.now += 10  # over its estimate: that part counts 0, never negative
    assert abs(r.seconds() - 9.0) < 1e-9  # type: ignore[operator]
    r.done("evalLoss")
    r.begin("generations")
    r.refine("generations", 30.0)  # measured: the first answer took 15 s of 2
    clock.now += 15
    assert abs(r.seconds() - (15.0 + 5.0)) < 1e-9  # type: ignore[operator]
    r.done("generations")
    r.begin("upload")
    r.done("upload")
    assert r.seconds() == 0.0 and r.fields()["eta"] == "0s"


class Sink:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def patch(self, progress: Any) -> None:
        self.bodies.append(dict(progress))


def test_a_long_stage_keeps_the_status_moving() -> None:
    sink = Sink()
    pub = StatusPublisher(sink, interval_s=0.05)
    r = remaining(Clock())
    r.measured_training(0.3)
    pub.update({"stage": "Uploading"}, force=True)
    with Ticker(pub, r, interval_s=0.05):
        time.sleep(0.5)
    pub.close()
    assert len(sink.bodies) >= 4 and all(b["stage"] == "Uploading" for b in sink.bodies)
    assert sink.bodies[-1]["eta"] == "15s"


def test_evaluation_after_training_does_not_report_the_training_stage() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from loraf_trainer.callbacks import ProgressCallback

    sink = Sink()
    pub = StatusPublisher(sink, interval_s=0.0)
    r = remaining(Clock())
    cb = ProgressCallback(pub, log_lines=False, remaining=r)
    args = TrainingArguments(output_dir="/tmp/unused", per_device_train_batch_size=2)
    state = TrainerState(max_steps=4)
    ctl = TrainerControl()
    cb.on_train_begin(args, state, ctl)
    for step in range(1, 5):
        state.global_step = step
        time.sleep(0.01)
        cb.on_step_end(args, state, ctl)
    cb.on_train_end(args, state, ctl)
    pub.update({"stage": "Evaluating"}, force=True)
    # Trainer.evaluate() logs through the same callbacks
    cb.on_log(args, state, ctl, logs={"eval_loss": 2.5})
    cb.on_step_end(args, state, ctl)
    pub.close()
    last = sink.bodies[-1]
    assert last["stage"] == "Evaluating" and last["evalLoss"] == 2.5
    ended = [b for b in sink.bodies if b.get("percent") == 100.0]
    assert ended and ended[0]["etaSeconds"] > 0, ended  # not "ETA 0s" with eval+upload left
