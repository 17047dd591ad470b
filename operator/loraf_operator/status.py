"""Conditions as patches, and the one function that derives the display phase from them.

Which types and reasons exist, and what they mean: `api.conditions`. Conditions follow
the Kubernetes API conventions: a list keyed by `type`, CamelCase `reason`,
`observedGeneration`, and a `lastTransitionTime` that moves only when `status` changes.
They are plain dicts in wire format (camelCase, `api.models.Condition`), ready to patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .api.conditions import (
    COND_FAILED,
    COND_RUNNING,
    COND_SCHEDULED,
    COND_SUCCEEDED,
    COND_SUSPENDED,
    COND_VALIDATED,
    REASON_QUEUED,
    TYPES,
    WARNING_REASONS,
)
from .api.models import Phase

#: The order conditions are written in (stable output for kubectl and diffs).
ORDER = tuple(TYPES)

Status = Literal["True", "False", "Unknown"]
Condition = dict[str, Any]

QUEUED_MESSAGE = "the Job is suspended (spec.suspend or a queue such as Kueue holds it)"


@dataclass(frozen=True)
class Cond:
    """A desired condition: what the operator concluded, before timestamps are applied."""

    type: str
    status: Status
    reason: str
    message: str = ""


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def get(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    c = get(conditions, type_)
    return c is not None and c.get("status") == "True"


def reason(conditions: Sequence[Condition], type_: str) -> str:
    c = get(conditions, type_)
    return str(c.get("reason", "")) if c else ""


def apply(
    conditions: Sequence[Condition],
    updates: Iterable[Cond],
    generation: int,
    now: str | None = None,
) -> list[Condition]:
    """`conditions` with `updates` applied; lastTransitionTime moves only on a status change.

    Returns a new list (inputs untouched), sorted by ORDER then type.
    """
    now = now or now_iso()
    by_type = {str(c.get("type")): dict(c) for c in conditions}
    for u in updates:
        old = by_type.get(u.type)
        changed = old is None or old.get("status") != u.status
        by_type[u.type] = {
            "type": u.type,
            "status": u.status,
            "reason": u.reason,
            "message": u.message,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed or not old else old.get("lastTransitionTime", now),
        }
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(by_type.values(), key=lambda c: (rank.get(c["type"], len(ORDER)), c["type"]))


def transitions(old: Sequence[Condition], new: Sequence[Condition]) -> list[Condition]:
    """Conditions of `new` whose status or reason differs from `old` (one event each)."""
    out = []
    for c in new:
        prev = get(old, c["type"])
        if prev is None or prev.get("status") != c["status"] or prev.get("reason") != c["reason"]:
            out.append(c)
    return out


def is_warning(c: Condition) -> bool:
    return c.get("reason") in WARNING_REASONS and (
        c["type"] == COND_FAILED or c.get("status") != "True" or c["type"] == COND_RUNNING
    )


def derive_phase(conditions: Sequence[Condition]) -> Phase:
    """THE display phase. Never read back for control flow: conditions are the contract.

    Failed > Succeeded > Suspended (Queued before the pod ever ran) > Running >
    Scheduling (a run exists, its pod is not running yet) > Pending.
    """
    if is_true(conditions, COND_FAILED):
        return "Failed"
    if is_true(conditions, COND_SUCCEEDED):
        return "Succeeded"
    if is_true(conditions, COND_SUSPENDED):
        return "Queued" if reason(conditions, COND_SUSPENDED) == REASON_QUEUED else "Suspended"
    if is_true(conditions, COND_RUNNING):
        return "Running"
    if get(conditions, COND_SCHEDULED) is not None:
        return "Scheduling"
    return "Pending"


_PHASE_SOURCE: dict[str, tuple[str, ...]] = {
    "Failed": (COND_FAILED,),
    "Succeeded": (COND_SUCCEEDED,),
    "Queued": (COND_SUSPENDED,),
    "Suspended": (COND_SUSPENDED,),
    "Running": (COND_RUNNING,),
    # While scheduling, a pod problem (image pull) says more than "not scheduled yet".
    "Scheduling": (COND_RUNNING, COND_SCHEDULED),
    "Pending": (COND_VALIDATED,),
}


def summary(conditions: Sequence[Condition]) -> tuple[Phase, str]:
    """(phase, one-line message) for status.phase / status.message and `kubectl get`."""
    phase = derive_phase(conditions)
    for type_ in _PHASE_SOURCE[phase]:
        c = get(conditions, type_)
        if c is None or not c.get("message"):
            continue
        if (
            phase == "Scheduling"
            and type_ == COND_RUNNING
            and c.get("reason") not in WARNING_REASONS
        ):
            continue
        return phase, f"{c.get('reason')}: {c.get('message')}"
    return phase, ""
