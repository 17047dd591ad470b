"""StatusPublisher: rate limit, forced flushes, retries, never raising. No cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from loraf_trainer.status_reporter import StatusPublisher, eta_seconds, format_eta


class FakeSink:
    def __init__(self, fail_first: int = 0, status: int | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.fail_first = fail_first
        self.status = status
        self.calls = 0
        self.event = threading.Event()

    def patch(self, progress: Mapping[str, Any]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            err = RuntimeError("apiserver unavailable")
            err.status = self.status  # type: ignore[attr-defined]
            raise err
        self.bodies.append(dict(progress))
        self.times.append(time.monotonic())
        self.event.set()


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_rate_limited_latest_wins_and_close_flushes() -> None:
    sink = FakeSink()
    pub = StatusPublisher(sink, interval_s=0.5)
    pub.update({"step": 1})
    wait_for(lambda: len(sink.bodies) == 1)
    for step in range(2, 30):
        pub.update({"step": step})
        time.sleep(0.01)
    # 28 updates in ~0.3 s, interval 0.5 s: nothing more may go out yet.
    assert len(sink.bodies) == 1
    wait_for(lambda: len(sink.bodies) == 2, timeout=2)
    assert sink.bodies[1]["step"] == 29  # the latest snapshot, not a backlog
    assert sink.times[1] - sink.times[0] >= 0.45
    pub.update({"step": 30, "stage": "Done"})
    pub.close()
    assert sink.bodies[-1]["step"] == 30 and sink.bodies[-1]["stage"] == "Done"
    assert "updatedAt" in sink.bodies[-1]


def test_force_skips_the_interval() -> None:
    sink = FakeSink()
    pub = StatusPublisher(sink, interval_s=60)
    pub.update({"step": 1})
    wait_for(lambda: len(sink.bodies) == 1)
    pub.update({"epoch": 1.0}, force=True)
    wait_for(lambda: len(sink.bodies) == 2, timeout=2)
    assert sink.bodies[1] == {**sink.bodies[1], "step": 1, "epoch": 1.0}
    pub.close()


def test_errors_are_retried_and_never_raise() -> None:
    sink = FakeSink(fail_first=3, status=503)
    pub = StatusPublisher(sink, interval_s=0.1, max_backoff_s=0.1)
    pub.update({"step": 5})
    wait_for(lambda: len(sink.bodies) == 1, timeout=5)
    assert sink.bodies[0]["step"] == 5 and pub.failures == 3
    pub.close()


def test_permanent_errors_drop_the_body_but_keep_going() -> None:
    sink = FakeSink(fail_first=1, status=403)
    pub = StatusPublisher(sink, interval_s=0.05)
    pub.update({"step": 1})
    wait_for(lambda: sink.calls == 1)
    time.sleep(0.2)
    assert sink.calls == 1  # 403 is not retried with the same body
    pub.update({"step": 2})
    wait_for(lambda: len(sink.bodies) == 1)
    pub.close()


def test_no_sink_keeps_snapshot_only() -> None:
    pub = StatusPublisher(None)
    pub.update({"step": 3})
    pub.close()
    assert pub.last["step"] == 3


def test_eta() -> None:
    assert eta_seconds(10.0, 5, 15) == 30.0
    assert eta_seconds(10.0, 0, 15) is None
    assert format_eta(30) == "30s"
    assert format_eta(200) == "3m20s"
    assert format_eta(3720) == "1h02m"
    assert format_eta(None) is None
