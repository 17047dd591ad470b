"""Run bookkeeping, pure: which run to act on, and the status patches that go with it.

A run is one Job (`<name>-r<n>`). A new `metadata.generation` starts run n+1 unless the
spec fields a run depends on are unchanged (only `suspend` or `serving` were edited): then
the same run continues and only `Job.spec.suspend` follows the spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from .api import conditions as why
from .api.conditions import (
    COND_FAILED,
    COND_RUNNING,
    COND_SCHEDULED,
    COND_SUCCEEDED,
    COND_SUSPENDED,
    COND_VALIDATED,
)
from .api.models import HistoryEntry, RunRef
from .builders.labels import GENERATION, RUN
from .status import QUEUED_MESSAGE, Cond, Condition, derive_phase, get, is_true

Obj = dict[str, Any]
HISTORY_CAP = 20


def run_of(status: Obj) -> Obj:
    return dict(status.get("run") or {})


def finished(conditions: Sequence[Condition]) -> bool:
    return is_true(conditions, COND_SUCCEEDED) or is_true(conditions, COND_FAILED)


def trusted_run(status: Obj, owned: Sequence[Obj]) -> Obj:
    """`status` with `run` as the Jobs the operator owns say (`owned`: this resource's
    Jobs, each labelled with its run number), so that a status write (the trainer's, or
    anyone's) cannot make the operator follow another Job or create a second one.

    The newest owned Job is the current run, unless the status names a later run that
    has no Job on purpose: it waits for a Secret, or Kubernetes refused its children.
    """
    if not owned:
        return status
    job = max(owned, key=job_run_number)
    number = job_run_number(job)
    run = run_of(status)
    claimed = int(run.get("number") or 0)
    conds = status.get("conditions") or []
    no_job_by_design = waits(conds) or ("jobName" in run and not run["jobName"])
    if claimed == number or (claimed > number and no_job_by_design):
        return status
    meta = job.get("metadata") or {}
    fixed = RunRef.patch_of(
        {
            **run,
            "number": number,
            "jobName": meta.get("name"),
            "generation": int((meta.get("annotations") or {}).get(GENERATION) or 0),
        }
    )
    return {**status, "run": fixed}


def job_run_number(job: Obj) -> int:
    try:
        return int(((job.get("metadata") or {}).get("labels") or {}).get(RUN) or 0)
    except ValueError:
        return 0


def next_run_number(status: Obj) -> int:
    numbers = [int(run_of(status).get("number") or 0)]
    numbers += [int(h.get("number") or 0) for h in status.get("history") or []]
    return max(numbers) + 1


@dataclass(frozen=True)
class Plan:
    """What the reconcile handler does.

    start: create run `run` (after stopping `stop`, if set); ensure: make sure run `run`'s
    children exist (idempotent); sync: the run continues under a new generation (only
    suspend/serving changed); none: the run already finished, nothing to create.
    """

    action: Literal["start", "ensure", "sync", "none"]
    run: int
    stop: int | None = None


def plan(status: Obj, generation: int, spec_hash: str, run_hash: str | None) -> Plan:
    """Decide from the status, the spec hash and the hash the current run was built from.

    `run_hash` is the `loraf.dev/spec-hash` of the current run's children (None: unknown,
    only looked up when the generation moved on).
    """
    run = run_of(status)
    number = run.get("number")
    if not number:
        return Plan("start", next_run_number(status))
    number = int(number)
    conds = status.get("conditions") or []
    if int(run.get("generation") or 0) == generation:
        return Plan("none" if finished(conds) else "ensure", number)
    if run_hash is not None and run_hash == spec_hash:
        return Plan("none" if finished(conds) else "sync", number)
    return Plan("start", number + 1, stop=number)


_VALID = Cond(COND_VALIDATED, "True", why.REASON_SPEC_VALID, "the spec is valid")


def start_conditions(suspend: bool) -> list[Cond]:
    """The conditions of a run that was just created (its Job exists, no pod yet)."""
    conds = [
        _VALID,
        Cond(COND_SUCCEEDED, "False", why.REASON_RUN_STARTED, ""),
        Cond(COND_FAILED, "False", why.REASON_RUN_STARTED, ""),
    ]
    if suspend:
        # Exactly what run_tracking.observe says of a suspended Job: no second patch.
        conds.append(Cond(COND_SUSPENDED, "True", why.REASON_QUEUED, QUEUED_MESSAGE))
        conds.append(Cond(COND_RUNNING, "False", why.REASON_QUEUED, QUEUED_MESSAGE))
    else:
        conds.append(
            Cond(COND_RUNNING, "False", why.REASON_NOT_STARTED, "the run's pod does not exist yet")
        )
        conds.append(Cond(COND_SUSPENDED, "False", why.REASON_NOT_SUSPENDED, ""))
        conds.append(
            Cond(COND_SCHEDULED, "Unknown", why.REASON_PENDING, "waiting for the Job controller")
        )
    return conds


#: Reasons of a run that waits, with no Job (no GPU held), for something its spec
#: references: a Secret (or one of its keys), or startFrom.fineTune's succeeded adapter.
WAIT_REASONS = (
    why.REASON_SECRET_NOT_FOUND,
    why.REASON_SECRET_KEY_MISSING,
    why.REASON_WAITING_FOR_STARTING_ADAPTER,
)


def wait_conditions(reason: str, message: str) -> list[Cond]:
    """A run that waits (WAIT_REASONS): no Job until what it references is there; the
    operator re-checks every LORAF_STATUS_INTERVAL_SECONDS."""
    waiting = [
        Cond(COND_SCHEDULED, "False", reason, ""),
        Cond(COND_RUNNING, "False", reason, message),
    ]
    return [
        _VALID,
        Cond(COND_SUCCEEDED, "False", why.REASON_RUN_STARTED, ""),
        Cond(COND_FAILED, "False", why.REASON_RUN_STARTED, ""),
        Cond(COND_SUSPENDED, "False", why.REASON_NOT_SUSPENDED, ""),
        *waiting,
    ]


def waits(conditions: Sequence[Condition]) -> bool:
    c = get(conditions, COND_RUNNING) or {}
    return c.get("status") == "False" and c.get("reason") in WAIT_REASONS


def invalid_conditions(message: str) -> list[Cond]:
    return [
        Cond(COND_VALIDATED, "False", why.REASON_INVALID_SPEC, message),
        Cond(COND_FAILED, "True", why.REASON_INVALID_SPEC, message),
        Cond(COND_SUCCEEDED, "False", why.REASON_INVALID_SPEC, ""),
        Cond(
            COND_RUNNING, "False", why.REASON_INVALID_SPEC, "no Job is created for an invalid spec"
        ),
    ]


def history_entry(
    status: Obj, completion_time: str, unfinished_reason: str = why.REASON_SUPERSEDED
) -> Obj:
    """The current run as a history entry (when a new run or an invalid spec replaces it).

    A finished run keeps its own outcome; a run stopped midway is `Stopped`, with the phase
    it was in (`stoppedIn`) and `unfinished_reason`.
    """
    run = run_of(status)
    conds = status.get("conditions") or []
    phase = derive_phase(conds)
    reason = unfinished_reason
    if finished(conds):
        reason = str(
            (get(conds, COND_FAILED if phase == "Failed" else COND_SUCCEEDED) or {}).get(
                "reason", ""
            )
        )
    done = finished(conds)
    entry = HistoryEntry.model_validate(
        {
            "number": int(run.get("number") or 0),
            "generation": run.get("generation"),
            # A run replaced midway is Stopped, never left reading "Running" in the history.
            "phase": phase if done else "Stopped",
            "stoppedIn": None if done else phase,
            "reason": reason,
            "startTime": run.get("startTime"),
            "completionTime": run.get("completionTime") or completion_time,
            "artifacts": (status.get("artifacts") or None) if phase == "Succeeded" else None,
        },
        extra="forbid",
    )
    return entry.to_dict()


def append_history(status: Obj, entry: Obj) -> list[Obj]:
    history = [h for h in status.get("history") or [] if h.get("number") != entry.get("number")]
    return [*history, entry][-HISTORY_CAP:]


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def gpu_hours(job: Obj | None, gpus: int, end: str) -> float:
    """GPU-hours a run's Job used: gpus x (end - Job start)."""
    if job is None or gpus <= 0:
        return 0.0
    start = _ts((job.get("status") or {}).get("startTime"))
    stop = _ts((job.get("status") or {}).get("completionTime")) or _ts(end)
    if start is None or stop is None or stop <= start:
        return 0.0
    return gpus * (stop - start).total_seconds() / 3600
