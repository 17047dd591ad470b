"""Waits that follow progress, not the wall clock.

On a busy 2-core machine a run can take three times as long as on a quiet one, and a fixed
budget then fails a test whose run is still moving. `wait_progress` polls `check` until it
returns something truthy; it fails when nothing it can observe has changed for `stall`
seconds (a stuck run fails as fast as before), and only after `cap` seconds otherwise (a
generous hard limit, so a run that creeps forever still ends). Its error says what it last
saw and how long that had not changed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

# A run that still moves may take this long at most; one that stands still fails after its
# `stall` window. LORAF_TEST_WAIT_CAP lets a slower CI raise it without touching tests.
DEFAULT_CAP = 3600.0


class StalledError(AssertionError):
    """Nothing observable changed for the stall window (or the hard cap was reached)."""


def _snapshot(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def wait_progress(
    what: str,
    check: Callable[[], Any],
    *,
    seen: Callable[[], Any] | None = None,
    stall: float = 30,
    cap: float | None = None,
    every: float = 0.3,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll `check` until truthy and return that value.

    `seen` returns what the wait can observe (a resource's status, a pod's phase, a step
    counter); without it the check's own (falsy) result is what is watched. Every change of
    it restarts the `stall` window.
    """
    hard = cap if cap is not None else float(os.environ.get("LORAF_TEST_WAIT_CAP", DEFAULT_CAP))
    start = clock()
    changed_at = start
    last_seen: Any = None
    last_key: str | None = None
    while True:
        result = check()
        if result:
            return result
        now_seen = seen() if seen is not None else result
        key = _snapshot(now_seen)
        now = clock()
        if key != last_key:
            last_key, last_seen, changed_at = key, now_seen, now
        if now - changed_at >= stall:
            raise StalledError(
                f"waiting for {what}: nothing changed for {now - changed_at:.0f}s "
                f"(waited {now - start:.0f}s in all); last saw: {last_seen!r}"
            )
        if now - start >= hard:
            raise StalledError(
                f"waiting for {what}: still not there after the hard cap of {hard:.0f}s "
                f"(it was still changing); last saw: {last_seen!r}"
            )
        sleep(every)
