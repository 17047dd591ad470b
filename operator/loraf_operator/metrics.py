"""Prometheus metrics of the operator (served on LORAF_METRICS_PORT)."""

from __future__ import annotations

import time
from collections import Counter as _Tally
from collections.abc import Iterator
from contextlib import contextmanager
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .api.models import Phase

REGISTRY = CollectorRegistry()

RUNS = Gauge("loraf_finetunes", "LoRAFineTunes by display phase.", ["phase"], registry=REGISTRY)
RUNS_STARTED = Counter(
    "loraf_runs_started_total", "Training runs (Jobs) started.", registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "loraf_reconcile_duration_seconds",
    "Time spent in a handler.",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
ERRORS = Counter("loraf_reconcile_errors_total", "Handler errors.", ["handler"], registry=REGISTRY)

_PHASES: tuple[Phase, ...] = get_args(Phase)
_phase_of: dict[str, str] = {}


def set_phase(key: str, phase: str | None) -> None:
    """Record the phase of one resource (None when it is deleted) and refresh the gauge."""
    if phase is None:
        _phase_of.pop(key, None)
    else:
        _phase_of[key] = phase
    tally = _Tally(_phase_of.values())
    for p in _PHASES:
        RUNS.labels(phase=p).set(tally.get(p, 0))


@contextmanager
def timed(handler: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    except Exception:
        ERRORS.labels(handler=handler).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(handler=handler).observe(time.perf_counter() - t0)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
