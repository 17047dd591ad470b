"""Read a run's Job and Pods into condition decisions. Pure: objects in, `Cond`s out.

The Job controller owns retries (backoffLimit, podFailurePolicy); this module only
explains, with a precise reason and message, what the Job and its pods are doing:
Unschedulable, image pull failures, OOMKilled, the trainer's user-error exit codes,
DeadlineExceeded, BackoffLimitExceeded, and preempted/evicted pods (retried, not failed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .api import conditions as why
from .api.conditions import (
    COND_FAILED,
    COND_RUNNING,
    COND_SCHEDULED,
    COND_SUCCEEDED,
    COND_SUSPENDED,
)
from .api.exitcodes import RETRIED_FREE_CODES, ExitCode, reason_for
from .status import QUEUED_MESSAGE, Cond, Condition, is_true, reason

Obj = dict[str, Any]

# Container waiting reasons that are normal steps of starting a container.
_STARTING = frozenset({"ContainerCreating", "PodInitializing", ""})
# DisruptionTarget reasons (set by Kubernetes before it kills a pod) and what we call them.
_DISRUPTION_REASONS = {
    "PreemptionByScheduler": why.REASON_PREEMPTED,
    "PreemptionByKubeScheduler": why.REASON_PREEMPTED,
    "EvictionByEvictionAPI": why.REASON_EVICTED,
    "DeletionByTaintManager": why.REASON_EVICTED,
    "DeletionByPodGC": why.REASON_EVICTED,
    "TerminationByKubelet": why.REASON_EVICTED,
}
# Evicted: the kubelet's own (DisruptionTarget); the rest: exit codes the Job ignores.
_RETRIED_NOT_COUNTED = frozenset({why.REASON_EVICTED, *(reason_for(c) for c in RETRIED_FREE_CODES)})
_EXIT_CODE_RE = re.compile(r"exit code (\d+)")


def _conditions(obj: Obj) -> list[Obj]:
    return list((obj.get("status") or {}).get("conditions") or [])


def _cond(obj: Obj, type_: str) -> Obj | None:
    return next((c for c in _conditions(obj) if c.get("type") == type_), None)


def _true(obj: Obj, type_: str) -> bool:
    c = _cond(obj, type_)
    return c is not None and c.get("status") == "True"


def _container_status(pod: Obj) -> Obj:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next(
        (s for s in statuses if s.get("name") == "trainer"), statuses[0] if statuses else {}
    )


def _terminated(pod: Obj) -> Obj | None:
    cs = _container_status(pod)
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
        "terminated"
    )


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _created(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp", ""))


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase", ""))


@dataclass(frozen=True)
class PodFailure:
    """Why one pod of the run ended without success."""

    reason: str  # Preempted, Evicted, OOMKilled, ConfigInvalid, ..., InfrastructureFailure
    message: str
    exit_code: int | None = None

    @property
    def retried_free(self) -> bool:
        """Retried without counting against backoffLimit (podFailurePolicy: Ignore)."""
        return self.reason in _RETRIED_NOT_COUNTED

    def describe(self) -> str:
        code = f" (exit code {self.exit_code})" if self.exit_code is not None else ""
        return f"{self.reason}{code}" + (f": {self.message}" if self.message else "")


def pod_failure(pod: Obj) -> PodFailure:
    """Why a failed pod failed: disruption, then OOM, then the trainer's exit code."""
    status = pod.get("status") or {}
    term = _terminated(pod) or {}
    code = term.get("exitCode")
    message = str(term.get("message") or "").strip()
    disruption = _cond(pod, "DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        cause = _DISRUPTION_REASONS.get(str(disruption.get("reason")), why.REASON_EVICTED)
        return PodFailure(cause, str(disruption.get("message") or message), code)
    if status.get("reason") == "Evicted":  # the kubelet's pod status reason
        return PodFailure(why.REASON_EVICTED, str(status.get("message") or message), code)
    if code == ExitCode.PREEMPTED:
        return PodFailure(
            why.REASON_PREEMPTED, message or "the trainer saved a checkpoint and exited", code
        )
    if term.get("reason") == "OOMKilled":  # the kubelet's termination reason
        return PodFailure(why.REASON_OOM_KILLED, message or "the trainer ran out of memory", code)
    if code is None:
        return PodFailure(
            why.REASON_POD_FAILED, str(status.get("message") or status.get("reason") or ""), None
        )
    return PodFailure(reason_for(int(code)), message, int(code))


def _failed_pods(pods: Sequence[Obj]) -> list[Obj]:
    return sorted((p for p in pods if _phase(p) == "Failed"), key=_created)


def _active_pods(pods: Sequence[Obj]) -> list[Obj]:
    return sorted(
        (
            p
            for p in pods
            if _phase(p) not in ("Succeeded", "Failed")
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ),
        key=_created,
    )


def counted_failures(job: Obj | None, pods: Sequence[Obj]) -> int:
    """Failures counted against backoffLimit: the Job's `status.failed` (it remembers pods
    that are gone; failures its podFailurePolicy ignores are not in it), or the failed pods
    still there, if more (the Job's count lags a moment behind its pods)."""
    seen = sum(1 for p in _failed_pods(pods) if not pod_failure(p).retried_free)
    return max(int(((job or {}).get("status") or {}).get("failed") or 0), seen)


def retry_note(pods: Sequence[Obj], job: Obj | None = None) -> str:
    """'retry 2 after Preempted (exit code 75, not counted against backoffLimit)' or ''.
    The number counts every failed attempt: those the Job counted (`status.failed`, also
    for pods already deleted) plus the not-counted ones whose pods are still there."""
    failed = _failed_pods(pods)
    counted = counted_failures(job, pods)
    if not failed and not counted:
        return ""
    free = sum(1 for p in failed if pod_failure(p).retried_free)
    n = max(len(failed), counted + free)
    if not failed:
        return f"retry {n}"
    last = pod_failure(failed[-1])
    note = ", not counted against backoffLimit" if last.retried_free else ""
    code = f"exit code {last.exit_code}" if last.exit_code is not None else "no exit code"
    return f"retry {n} after {last.reason} ({code}{note})"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def job_failure(job: Obj, pods: Sequence[Obj]) -> tuple[str, str]:
    """(reason, message) of a failed Job, as precise as its pods allow."""
    cond = _cond(job, "Failed") if _true(job, "Failed") else _cond(job, "FailureTarget")
    job_reason = str((cond or {}).get("reason") or why.REASON_JOB_FAILED)
    job_msg = str((cond or {}).get("message") or "")
    failed = _failed_pods(pods)
    last = pod_failure(failed[-1]) if failed else None
    if job_reason == "DeadlineExceeded":  # the Job's reasons are named like ours
        return (
            why.REASON_DEADLINE_EXCEEDED,
            job_msg or "the run took longer than activeDeadlineSeconds",
        )
    if job_reason == "PodFailurePolicy":
        fail_fast = next(
            (
                f
                for f in (pod_failure(p) for p in reversed(failed))
                if f.exit_code in _fail_fast_codes()
            ),
            None,
        )
        if fail_fast is not None:
            return fail_fast.reason, fail_fast.message or job_msg
        m = _EXIT_CODE_RE.search(job_msg)  # pods already gone: the Job names the code
        if m:
            return reason_for(int(m.group(1))), job_msg
        return why.REASON_JOB_FAILED, job_msg
    if job_reason == "BackoffLimitExceeded":
        backoff = int((job.get("spec") or {}).get("backoffLimit", 0))
        head = f"failed {len(failed) or backoff + 1} time(s), backoffLimit {backoff} exceeded"
        if last is not None and last.reason == why.REASON_OOM_KILLED:
            return why.REASON_OOM_KILLED, _join(last.message, head)
        return why.REASON_BACKOFF_LIMIT_EXCEEDED, _join(
            head, f"last attempt: {last.describe()}" if last else ""
        )
    return job_reason, job_msg


def _failed(cause: str, msg: str, pods: Sequence[Obj], prev: Sequence[Condition]) -> list[Cond]:
    """The run failed: every condition says so (no Scheduled=Unknown "waiting to retry")."""
    ran_on = next(
        (
            str((p.get("spec") or {}).get("nodeName"))
            for p in reversed(pods)
            if (p.get("spec") or {}).get("nodeName")
        ),
        "",
    )
    if ran_on:
        scheduled = Cond(
            COND_SCHEDULED, "True", why.REASON_POD_SCHEDULED, f"the run's pod ran on {ran_on}"
        )
    else:
        scheduled = Cond(COND_SCHEDULED, "False", cause, "the run ended before a pod was scheduled")
    return [
        Cond(COND_SUSPENDED, "False", cause, ""),
        scheduled,
        Cond(COND_RUNNING, "False", cause, msg),
        Cond(COND_SUCCEEDED, "False", cause, ""),
        Cond(COND_FAILED, "True", cause, msg),
    ]


def _certain_failure(job: Obj, pods: Sequence[Obj]) -> Obj | None:
    """`job` as the Job controller is about to mark it Failed, when its pods already decide
    that; None while a retry is still allowed."""
    failed = _failed_pods(pods)
    if not failed or _active_pods(pods):
        return None
    last = pod_failure(failed[-1])
    if last.exit_code in _fail_fast_codes():
        verdict = "PodFailurePolicy"
    else:
        backoff = int((job.get("spec") or {}).get("backoffLimit", 6))
        if last.retried_free or counted_failures(job, pods) <= backoff:
            return None
        verdict = "BackoffLimitExceeded"
    cond = {"type": "Failed", "status": "True", "reason": verdict, "message": ""}
    return {**job, "status": {**(job.get("status") or {}), "conditions": [cond]}}


def _fail_fast_codes() -> set[int | None]:
    return {int(c) for c in ExitCode if c.fail_fast}


def _started_before(prev: Sequence[Condition]) -> bool:
    """Whether this run's pod has run already (then a suspension is Suspended, not Queued)."""
    return (
        is_true(prev, COND_RUNNING)
        or reason(prev, COND_RUNNING) == why.REASON_SUSPENDED
        or (is_true(prev, COND_SUSPENDED) and reason(prev, COND_SUSPENDED) == why.REASON_SUSPENDED)
    )


def _not_suspended_reason(prev: Sequence[Condition]) -> str:
    """Resumed right after a suspension, else keep the reason (no churn, no extra events)."""
    if is_true(prev, COND_SUSPENDED):
        return why.REASON_RESUMED
    return reason(prev, COND_SUSPENDED) or why.REASON_NOT_SUSPENDED


def _pod_conditions(pod: Obj, note: str) -> list[Cond]:
    """Scheduled/Running for the newest live pod of the run."""
    name = _name(pod)
    sched = _cond(pod, "PodScheduled")
    if sched is not None and sched.get("status") == "False":
        cause = str(sched.get("reason") or why.REASON_UNSCHEDULABLE)  # the scheduler's
        msg = str(sched.get("message") or "")
        return [
            Cond(COND_SCHEDULED, "False", cause, f"pod {name}: {msg}" if msg else f"pod {name}"),
            Cond(
                COND_RUNNING,
                "False",
                why.REASON_PENDING,
                _join(f"pod {name} is not scheduled", note),
            ),
        ]
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    if sched is None and not node:
        return [
            Cond(
                COND_SCHEDULED, "Unknown", why.REASON_PENDING, f"pod {name} waits for the scheduler"
            ),
            Cond(COND_RUNNING, "False", why.REASON_PENDING, _join(f"pod {name} is pending", note)),
        ]
    scheduled = Cond(
        COND_SCHEDULED, "True", why.REASON_POD_SCHEDULED, f"pod {name} is on node {node}"
    )
    cs = _container_status(pod)
    state = cs.get("state") or {}
    waiting = state.get("waiting")
    if waiting and waiting.get("reason") not in _STARTING:
        cause = str(waiting["reason"])  # the kubelet's: ErrImagePull, ...
        return [
            scheduled,
            Cond(COND_RUNNING, "False", cause, _join(str(waiting.get("message") or ""), note)),
        ]
    if _phase(pod) == "Running" and state.get("running") is not None:
        return [
            scheduled,
            Cond(
                COND_RUNNING,
                "True",
                why.REASON_POD_RUNNING,
                _join(f"pod {name} is running on {node}", note),
            ),
        ]
    return [
        scheduled,
        Cond(
            COND_RUNNING,
            "False",
            why.REASON_CONTAINER_CREATING,
            _join(f"pod {name} is starting", note),
        ),
    ]


def _event_time(ev: Obj, *keys: str) -> datetime | None:
    for k in keys:
        raw = ev.get(k) or ((ev.get("metadata") or {}).get(k) if k == "creationTimestamp" else "")
        if raw:
            try:
                return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def creation_refused(
    job: Obj | None, pods: Sequence[Obj], events: Sequence[Obj], now: datetime, timeout: float
) -> list[Cond]:
    """The Job controller cannot create the run's pod (its `FailedCreate` events: an
    unknown PriorityClass, a ResourceQuota, Pod Security): say why, and end the run Failed
    (`PodCreationRefused`) once it has been refused for `timeout` seconds."""
    if job is None or pods or bool((job.get("spec") or {}).get("suspend")):
        return []
    if any(_true(job, t) for t in ("Complete", "Failed", "FailureTarget", "Suspended")):
        return []
    uid = (job.get("metadata") or {}).get("uid")
    mine = [
        e
        for e in events
        if e.get("reason") == "FailedCreate"
        and (not uid or (e.get("involvedObject") or {}).get("uid") == uid)
    ]
    if not mine:
        return []
    first = min(
        _event_time(e, "firstTimestamp", "eventTime", "creationTimestamp") or now for e in mine
    )
    last = max(
        mine,
        key=lambda e: _event_time(e, "lastTimestamp", "eventTime", "creationTimestamp") or now,
    )
    cause = str(last.get("message") or "the Job controller cannot create the pod")
    if (now - first).total_seconds() >= timeout:
        msg = f"the Job controller could not create the run's pod for {int(timeout)}s: {cause}"
        return _failed(why.REASON_POD_CREATION_REFUSED, msg, pods, [])
    until = (first + timedelta(seconds=timeout)).strftime("%Y-%m-%dT%H:%M:%SZ")
    msg = (
        f"the Job controller cannot create the pod: {cause} (the run fails at {until} unless fixed)"
    )
    return [
        Cond(COND_SCHEDULED, "False", why.REASON_FAILED_CREATE, ""),
        Cond(COND_RUNNING, "False", why.REASON_FAILED_CREATE, msg),
    ]


SUCCEEDED_MESSAGE = "the Job completed and the run's manifest in S3 checks out"


def job_finished(job: Obj) -> bool:
    """Whether the Job controller has ended the Job (Complete or Failed)."""
    return any(_true(job, t) for t in ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget"))


def job_completed(updates: Sequence[Cond]) -> bool:
    """Whether `observe` found the Job Complete (the run succeeds once its upload checks out)."""
    return any(c.type == COND_SUCCEEDED and c.status == "True" for c in updates)


def verifying_artifacts(updates: Sequence[Cond], problem: str) -> list[Cond]:
    """The Job completed but its upload could not be checked yet (S3 or the Secret is out
    of reach): still Running, with the reason; the resync looks again."""
    keep = [c for c in updates if c.type not in (COND_RUNNING, COND_SUCCEEDED, COND_FAILED)]
    msg = f"the Job completed; checking the run's manifest in S3: {problem}"
    return [*keep, Cond(COND_RUNNING, "True", why.REASON_VERIFYING_ARTIFACTS, msg)]


def artifacts_invalid(updates: Sequence[Cond], problem: str) -> list[Cond]:
    """The Job completed without a valid upload (no manifest, a listed file missing or of
    the wrong size, a manifest of another run): the run failed."""
    keep = [c for c in updates if c.type not in (COND_RUNNING, COND_SUCCEEDED, COND_FAILED)]
    msg = f"the Job completed but its upload does not check out: {problem}"
    return [
        *keep,
        Cond(COND_RUNNING, "False", why.REASON_ARTIFACTS_INVALID, msg),
        Cond(COND_SUCCEEDED, "False", why.REASON_ARTIFACTS_INVALID, ""),
        Cond(COND_FAILED, "True", why.REASON_ARTIFACTS_INVALID, msg),
    ]


def job_deleted(job_name: str) -> list[Cond]:
    """The run's Job was deleted before it finished: the run failed (it is not recreated)."""
    msg = f"the run's Job {job_name} was deleted before it finished"
    return [
        Cond(COND_RUNNING, "False", why.REASON_JOB_DELETED, msg),
        Cond(COND_FAILED, "True", why.REASON_JOB_DELETED, msg),
    ]


def observe(job: Obj | None, pods: Sequence[Obj], prev: Sequence[Condition]) -> list[Cond]:
    """Conditions describing run `job` (with its `pods`), given the previous conditions.

    Returns no updates when the Job is absent (not created yet, or removed after it
    finished): absence says nothing new.
    """
    if job is None:
        return []
    if _true(job, "Complete") or _true(job, "SuccessCriteriaMet"):
        # A run can finish between two looks at its pod: the pod surely was scheduled.
        completed = why.REASON_COMPLETED
        scheduled = (
            []
            if is_true(prev, COND_SCHEDULED)
            else [Cond(COND_SCHEDULED, "True", completed, "the run's pod ran to completion")]
        )
        return [
            *scheduled,
            Cond(COND_SUSPENDED, "False", completed, ""),
            Cond(COND_RUNNING, "False", completed, "the run finished"),
            Cond(COND_SUCCEEDED, "True", completed, SUCCEEDED_MESSAGE),
            Cond(COND_FAILED, "False", completed, ""),
        ]
    if _true(job, "Failed") or _true(job, "FailureTarget"):
        return _failed(*job_failure(job, pods), pods, prev)
    if (ending := _certain_failure(job, pods)) is not None:
        # The last pod's failure ends the Job (a fail-fast exit code, or the last attempt
        # backoffLimit allows): say so now, not "retrying" until the Job controller agrees.
        return _failed(*job_failure(ending, pods), pods, prev)
    suspended = bool((job.get("spec") or {}).get("suspend")) or _true(job, "Suspended")
    if suspended:
        started = _started_before(prev)
        cause = why.REASON_SUSPENDED if started else why.REASON_QUEUED
        msg = (
            "the run is suspended; it resumes from its last checkpoint when unsuspended"
            if started
            else QUEUED_MESSAGE
        )
        return [
            Cond(COND_SUSPENDED, "True", cause, msg),
            Cond(COND_RUNNING, "False", cause, msg),
        ]
    resumed = Cond(COND_SUSPENDED, "False", _not_suspended_reason(prev), "")
    note = retry_note(pods, job)
    active = _active_pods(pods)
    if active:
        return [resumed, *_pod_conditions(active[-1], note)]
    if any(_phase(p) == "Succeeded" for p in pods):
        # The trainer exited 0; the Job turns Complete in a moment. Still Running (the run
        # is not over and no pod is being scheduled), so the phase does not flicker.
        done = next(p for p in pods if _phase(p) == "Succeeded")
        return [
            resumed,
            Cond(COND_RUNNING, "True", why.REASON_POD_SUCCEEDED, f"pod {_name(done)} finished"),
        ]
    failed = _failed_pods(pods)
    if failed:
        last = pod_failure(failed[-1])
        return [
            resumed,
            Cond(
                COND_SCHEDULED,
                "Unknown",
                why.REASON_RETRYING,
                "waiting for the Job controller to retry",
            ),
            Cond(COND_RUNNING, "False", last.reason, _join(last.describe(), "retrying")),
        ]
    return [
        resumed,
        Cond(
            COND_SCHEDULED,
            "Unknown",
            why.REASON_PENDING,
            "waiting for the Job controller to create the pod",
        ),
        Cond(COND_RUNNING, "False", why.REASON_NOT_STARTED, "the run's pod does not exist yet"),
    ]
