"""Reports training progress into `status.progress` of the run's own LoRAFineTune.

The trainer owns only `status.progress` (docs/architecture.md): every patch is a JSON
merge patch of `{"status": {"progress": {...}}}` through the status subresource, so it
can never touch the operator's fields. Every update is checked against
`api.models.Progress` first (an unknown key is an error, not a field the apiserver drops
without a word). Patches go out from a background thread: the training loop only hands
over the latest snapshot, and a slow or failing apiserver (retried with backoff) never
stalls or crashes training. At most one patch per interval; `force=True` (epoch end, end
of run) skips the wait.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from loraf_operator.api.models import FINETUNE_PLURAL, GROUP, VERSION, Progress

log = logging.getLogger(__name__)

# Who wrote status.progress, in managedFields (not the client's default OpenAPI-Generator).
FIELD_MANAGER = "loraf-trainer"
SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def format_eta(seconds: float | None) -> str | None:
    """'1h02m', '3m20s', '45s' — what `kubectl get loraf` shows."""
    if seconds is None or seconds < 0:
        return None
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def eta_seconds(elapsed: float, done_steps: int, remaining_steps: int) -> float | None:
    """Linear ETA from the steps done in this process (a resumed run starts counting
    again, so time spent before a restart does not skew the rate)."""
    if done_steps <= 0 or elapsed <= 0:
        return None
    return elapsed / done_steps * max(0, remaining_steps)


# Used for the upload's share of the ETA until a run has measured nothing better: a
# conservative object-store throughput (bytes/s). Only the ETA depends on it.
ASSUMED_UPLOAD_BYTES_PER_S = 25e6
# A forward pass alone costs about a third of a training step's forward + backward.
FORWARD_SHARE = 1 / 3

AFTER_TRAINING = ("evalLoss", "generations", "upload")


class Remaining:
    """The ETA of what is left of the run, not of training alone.

    After the optimizer steps the trainer scores the held-out rows twice (adapter, base),
    answers `prompts` prompts twice, and uploads `upload_bytes`. Until those are timed they
    are estimated from the measured training time per row; each part's estimate is refined
    as it runs and dropped once it is done. Pure (a clock is passed in) so it is tested
    without torch."""

    def __init__(
        self,
        *,
        eval_rows: int,
        prompts: int,
        max_new_tokens: int,
        upload_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        upload_bytes_per_s: float = ASSUMED_UPLOAD_BYTES_PER_S,
    ) -> None:
        self.eval_rows, self.prompts, self.max_new_tokens = eval_rows, prompts, max_new_tokens
        self.upload_bytes = upload_bytes
        self.upload_bytes_per_s = upload_bytes_per_s
        self.clock = clock
        self.row_s: float | None = None
        self._known: dict[str, float] = {}  # a part's refined estimate (seconds, whole part)
        self._done: set[str] = set()
        self._current: tuple[str, float] | None = None  # (part, started at)

    def measured_training(self, row_seconds: float) -> None:
        self.row_s = row_seconds

    def _estimate(self, part: str) -> float | None:
        if part in self._known:
            return self._known[part]
        if part == "upload":
            return self.upload_bytes / self.upload_bytes_per_s
        if self.row_s is None:
            return None
        forward_row = self.row_s * FORWARD_SHARE
        if part == "evalLoss":
            return 2 * self.eval_rows * forward_row
        # a generated token costs at most one forward over a row (an upper bound)
        return 2 * self.prompts * self.max_new_tokens * forward_row

    def begin(self, part: str, estimate_s: float | None = None) -> None:
        if estimate_s is not None:
            self._known[part] = estimate_s
        self._current = (part, self.clock())

    def refine(self, part: str, estimate_s: float) -> None:
        """A better estimate of the whole part (seconds from its beginning)."""
        self._known[part] = estimate_s

    def done(self, part: str) -> None:
        self._done.add(part)
        if self._current and self._current[0] == part:
            self._current = None

    def seconds(self, training_left_s: float | None = None) -> float | None:
        """Seconds left: `training_left_s` (None once training is over) plus what follows."""
        total = training_left_s or 0.0
        for part in AFTER_TRAINING:
            if part in self._done:
                continue
            est = self._estimate(part)
            if est is None:
                return None
            if self._current and self._current[0] == part:
                est = max(0.0, est - (self.clock() - self._current[1]))
            total += est
        return total

    def fields(self, training_left_s: float | None = None) -> dict[str, Any]:
        left = self.seconds(training_left_s)
        return {
            "etaSeconds": round(left, 1) if left is not None else None,
            "eta": format_eta(left),
        }


class Ticker:
    """While a long stage runs (evaluation, upload), re-send the ETA every `interval_s`
    so the status keeps moving instead of standing still for minutes."""

    def __init__(self, publisher: StatusPublisher, remaining: Remaining, interval_s: float) -> None:
        self.publisher, self.remaining, self.interval_s = publisher, remaining, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ticker:
        if self.publisher.sink is not None and self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="loraf-eta", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publisher.update(self.remaining.fields())


class Sink(Protocol):
    def patch(self, progress: Mapping[str, Any]) -> None: ...


class KubeSink:
    """Patches status.progress with the kubernetes client.

    In the pod: the service-account token (in-cluster config); elsewhere (tests, local
    debugging): KUBECONFIG."""

    def __init__(
        self, namespace: str, name: str, uid: str | None = None, request_timeout: float = 10.0
    ) -> None:
        from kubernetes import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST") and SA_TOKEN.exists():
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            api_client = client.ApiClient(cfg)
        else:
            api_client = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
        self.api = client.CustomObjectsApi(api_client)
        self.namespace, self.name, self.uid = namespace, name, uid
        self.request_timeout = request_timeout

    def body(self, progress: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"status": {"progress": dict(progress)}}
        if self.uid:
            # A uid in the patch is a precondition: a resource deleted and re-created under
            # the same name (another uid) is not written to by this run's trainer.
            body["metadata"] = {"uid": self.uid}
        return body

    def patch(self, progress: Mapping[str, Any]) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            FINETUNE_PLURAL,
            self.name,
            self.body(progress),
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
            _request_timeout=self.request_timeout,
        )


def _is_permanent(exc: BaseException) -> bool:
    """4xx other than 409/429 will not heal by retrying the same body soon."""
    status = getattr(exc, "status", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


class StatusPublisher:
    """Rate-limited, retrying, non-blocking progress reporter."""

    def __init__(
        self,
        sink: Sink | None,
        interval_s: float = 10.0,
        *,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.sent = 0
        self.failures = 0
        self.last: dict[str, Any] = {}
        self._pending: dict[str, Any] | None = None
        self._force = False
        self._last_sent_at: float | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        if sink is not None:
            self._thread = threading.Thread(target=self._run, name="loraf-status", daemon=True)
            self._thread.start()

    def update(self, fields: Mapping[str, Any] | Progress, force: bool = False) -> None:
        """Merge fields (a Progress, or its wire names) into the snapshot; it goes out
        when the interval allows. None clears a field."""
        wire = fields.to_patch() if isinstance(fields, Progress) else Progress.patch_of(fields)
        with self._cv:
            self.last.update(wire)
            self.last["updatedAt"] = now_rfc3339()
            if self.sink is None:
                return
            self._pending = dict(self.last)
            self._force = self._force or force
            self._cv.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is pending (without waiting for the interval), then stop."""
        if self._thread is None:
            return
        with self._cv:
            self._stop = True
            self._force = True
            self._cv.notify()
        self._thread.join(timeout)

    def _due_in(self) -> float:
        if self._force or self._last_sent_at is None:
            return 0.0
        return self._last_sent_at + self.interval_s - self.clock()

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._cv:
                while True:
                    if self._pending is None:
                        if self._stop:
                            return
                        self._cv.wait()
                        continue
                    wait = self._due_in()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                body, self._pending, self._force = self._pending, None, False
                stopping = self._stop
            try:
                assert self.sink is not None
                self.sink.patch(body)
                self.sent += 1
                backoff = 0.5
                with self._cv:
                    self._last_sent_at = self.clock()
            except Exception as e:  # never let reporting crash training
                self.failures += 1
                permanent = _is_permanent(e)
                log.warning(
                    "status patch failed (%s): %s", "giving up" if permanent else "retrying", e
                )
                if permanent or (stopping and self.failures > 5):
                    continue
                with self._cv:
                    if self._pending is None:  # retry this body unless a newer one came
                        self._pending = body
                    self._force = True
                    self._cv.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
