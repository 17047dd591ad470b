"""Job + Pods -> conditions, with objects shaped like the apiserver returns them."""

from __future__ import annotations

from typing import Any

import pytest

from loraf_operator.run_tracking import observe, pod_failure, retry_note
from loraf_operator.status import Cond, apply

Obj = dict[str, Any]


def job(*conditions: tuple[str, str, str], suspend: bool = False, backoff: int = 3) -> Obj:
    return {
        "metadata": {"name": "demo-r1"},
        "spec": {"suspend": suspend, "backoffLimit": backoff},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions
            ]
        },
    }


def pod(
    name: str = "demo-r1-aaaaa",
    phase: str = "Pending",
    created: str = "2026-01-01T00:00:01Z",
    node: str = "",
    conditions: list[Obj] | None = None,
    state: Obj | None = None,
    status_extra: Obj | None = None,
) -> Obj:
    status: Obj = {"phase": phase, "conditions": conditions or []}
    if state is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    status.update(status_extra or {})
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


def running(name: str = "demo-r1-bbbbb", created: str = "2026-01-01T00:00:05Z") -> Obj:
    return pod(
        name,
        "Running",
        created,
        "gpu-node-0",
        [{"type": "PodScheduled", "status": "True"}],
        {"running": {"startedAt": "x"}},
    )


def failed(
    code: int,
    reason: str = "Error",
    message: str = "",
    name: str = "demo-r1-aaaaa",
    conditions: list[Obj] | None = None,
) -> Obj:
    return pod(
        name,
        "Failed",
        "2026-01-01T00:00:01Z",
        "gpu-node-0",
        [{"type": "PodScheduled", "status": "True"}, *(conditions or [])],
        {"terminated": {"exitCode": code, "reason": reason, "message": message}},
    )


def by_type(updates: list[Cond]) -> dict[str, Cond]:
    return {u.type: u for u in updates}


def test_no_job_no_news() -> None:
    assert observe(None, [], []) == []


def test_no_pod_yet() -> None:
    u = by_type(observe(job(), [], []))
    assert (u["Scheduled"].status, u["Running"].reason) == ("Unknown", "NotStarted")


def test_unschedulable_carries_the_scheduler_message() -> None:
    msg = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint."
    p = pod(
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}
        ]
    )
    u = by_type(observe(job(), [p], []))
    assert u["Scheduled"].status == "False" and u["Scheduled"].reason == "Unschedulable"
    assert msg in u["Scheduled"].message
    assert u["Running"].status == "False"


@pytest.mark.parametrize("why", ["ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"])
def test_container_waiting_problems(why: str) -> None:
    p = pod(
        node="gpu-node-1",
        conditions=[{"type": "PodScheduled", "status": "True"}],
        state={"waiting": {"reason": why, "message": "details"}},
    )
    u = by_type(observe(job(), [p], []))
    assert u["Scheduled"].status == "True"
    assert (u["Running"].status, u["Running"].reason, u["Running"].message) == (
        "False",
        why,
        "details",
    )


def test_container_creating_is_not_a_problem() -> None:
    p = pod(
        node="n",
        conditions=[{"type": "PodScheduled", "status": "True"}],
        state={"waiting": {"reason": "ContainerCreating"}},
    )
    assert by_type(observe(job(), [p], []))["Running"].reason == "ContainerCreating"


def test_running() -> None:
    u = by_type(observe(job(), [running()], []))
    assert (u["Running"].status, u["Running"].reason) == ("True", "PodRunning")
    assert "gpu-node-0" in u["Running"].message and "retry" not in u["Running"].message


def test_complete() -> None:
    u = by_type(observe(job(("Complete", "", "")), [], []))
    assert u["Succeeded"].status == "True" and u["Failed"].status == "False"
    assert u["Running"].status == "False"
    # never seen scheduled (it finished between two looks): Scheduled no longer stays Unknown
    assert (u["Scheduled"].status, u["Scheduled"].reason) == ("True", "Completed")


def test_complete_keeps_the_scheduled_condition_it_had() -> None:
    prev = [{"type": "Scheduled", "status": "True", "reason": "PodScheduled", "message": "on x"}]
    u = by_type(observe(job(("Complete", "", "")), [], prev))
    assert "Scheduled" not in u  # message and transition time stay


@pytest.mark.parametrize(
    ("code", "reason"), [(64, "ConfigInvalid"), (65, "DatasetInvalid"), (66, "ModelInvalid")]
)
def test_fail_fast_exit_codes_with_termination_message(code: int, reason: str) -> None:
    j = job(
        (
            "Failed",
            "PodFailurePolicy",
            f"Container trainer for pod ns/demo-r1-aaaaa failed with exit code {code} "
            "matching FailJob rule at index 0",
        )
    )
    u = by_type(observe(j, [failed(code, message="row 3: field 'output' is missing")], []))
    assert (u["Failed"].status, u["Failed"].reason) == ("True", reason)
    assert u["Failed"].message == "row 3: field 'output' is missing"


def test_fail_fast_when_pods_are_gone_reads_the_job_message() -> None:
    j = job(
        (
            "Failed",
            "PodFailurePolicy",
            "Container trainer for pod x failed with exit code 65 matching",
        )
    )
    assert by_type(observe(j, [], []))["Failed"].reason == "DatasetInvalid"


def test_failure_target_counts_as_failed() -> None:
    j = job(("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline"))
    u = by_type(observe(j, [running()], []))
    assert (u["Failed"].status, u["Failed"].reason) == ("True", "DeadlineExceeded")


def test_oomkilled_after_backoff() -> None:
    j = job(
        ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), backoff=0
    )
    u = by_type(observe(j, [failed(137, "OOMKilled")], []))
    assert u["Failed"].reason == "OOMKilled"
    assert "backoffLimit 0 exceeded" in u["Failed"].message


def test_backoff_limit_exceeded_names_the_last_attempt() -> None:
    j = job(
        ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), backoff=1
    )
    pods = [
        failed(1, message="CUDA error", name="a"),
        failed(1, message="CUDA error again", name="b"),
    ]
    u = by_type(observe(j, pods, []))
    assert u["Failed"].reason == "BackoffLimitExceeded"
    assert "failed 2 time(s)" in u["Failed"].message and "exit code 1" in u["Failed"].message


def test_preempted_pod_is_retried_not_failed() -> None:
    pods = [failed(75, message="SIGTERM: checkpoint at step 4"), running()]
    u = by_type(observe(job(), pods, []))
    assert u["Running"].status == "True"
    assert (
        "retry 1 after Preempted (exit code 75, not counted against backoffLimit)"
        in u["Running"].message
    )
    assert "Failed" not in u
    # Between the failure and the replacement pod:
    u = by_type(observe(job(), pods[:1], []))
    assert (u["Running"].status, u["Running"].reason) == ("False", "Preempted")


def test_retry_number_counts_failures_whose_pods_are_gone() -> None:
    """`retry N` counts the Job's status.failed (pods deleted since still count) plus the
    not-counted failures still visible, not only the failed pods that exist."""
    j = {**job(), "status": {"failed": 2, "conditions": []}}
    pods = [failed(75, name="c"), running()]  # two counted failures whose pods were deleted
    u = by_type(observe(j, pods, []))
    assert u["Running"].message.endswith(
        "retry 3 after Preempted (exit code 75, not counted against backoffLimit)"
    ), u["Running"].message
    # The Job's count lags its pods: the visible failure counts already.
    assert retry_note([failed(1, name="a")], job()).startswith(
        "retry 1 after InfrastructureFailure"
    )
    # Counted failures beyond backoffLimit (as the Job counts them) end the run at once.
    j = {**job(backoff=2), "status": {"failed": 3, "conditions": []}}
    assert by_type(observe(j, [failed(1, name="z")], []))["Failed"].status == "True"
    assert retry_note([], job()) == ""


@pytest.mark.parametrize(
    ("cond_reason", "expected"),
    [
        ("PreemptionByScheduler", "Preempted"),
        ("EvictionByEvictionAPI", "Evicted"),
        ("TerminationByKubelet", "Evicted"),
    ],
)
def test_disruption_target(cond_reason: str, expected: str) -> None:
    p = failed(
        137,
        conditions=[
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": cond_reason,
                "message": "by the scheduler",
            }
        ],
    )
    f = pod_failure(p)
    assert f.reason == expected and f.retried_free
    assert "not counted" in retry_note([p])


def test_suspended_before_start_is_queued_after_start_is_suspended() -> None:
    j = job(("Suspended", "JobSuspended", ""), suspend=True)
    u = by_type(observe(j, [], []))
    assert (u["Suspended"].status, u["Suspended"].reason) == ("True", "Queued")
    prev = apply([], [Cond("Running", "True", "PodRunning")], 1, "T")
    u = by_type(observe(j, [], prev))
    assert u["Suspended"].reason == "Suspended"
    # Still Suspended on the next event (Running is now False/Suspended).
    prev = apply(prev, list(u.values()), 1, "T")
    assert by_type(observe(j, [], prev))["Suspended"].reason == "Suspended"


def test_resumed() -> None:
    prev = apply([], [Cond("Suspended", "True", "Queued")], 1, "T")
    assert by_type(observe(job(), [running()], prev))["Suspended"].reason == "Resumed"
    prev = apply([], [Cond("Suspended", "False", "Resumed")], 1, "T")
    assert by_type(observe(job(), [running()], prev))["Suspended"].reason == "Resumed"  # no churn


def test_deleting_pods_are_ignored() -> None:
    p = running()
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    assert by_type(observe(job(), [p], []))["Running"].status == "False"


# -- issue 16 item 7: endings are not contradictory ---------------------------------------


def phases(*steps: tuple[Obj | None, list[Obj]]) -> list[str]:
    """The display phase after each (job, pods) look, as the operator would write it."""
    from loraf_operator.status import summary

    conds: list[Obj] = []
    out = []
    for j, ps in steps:
        conds = apply(conds, observe(j, ps, conds), 1)
        out.append(str(summary(conds)[0]))
    return out


def succeeded(name: str = "demo-r1-bbbbb") -> Obj:
    p = running(name)
    p["status"]["phase"] = "Succeeded"
    p["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    ]
    return p


def test_a_finished_pod_before_the_job_completes_is_no_scheduling_flicker() -> None:
    got = phases(
        (job(), [running()]),
        (job(), [succeeded()]),  # the pod is done, the Job not Complete yet
        (job(("Complete", "Completed", "")), [succeeded()]),
    )
    assert got == ["Running", "Running", "Succeeded"]


@pytest.mark.parametrize("code", [65, 66])
def test_a_permanent_failure_is_failed_at_once_and_never_says_retrying(code: int) -> None:
    got = phases((job(), [running()]), (job(), [failed(code, message="bad row 7")]))
    assert got == ["Running", "Failed"]
    ups = by_type(observe(job(), [failed(code, message="bad row 7")], []))
    assert "retrying" not in ups["Running"].message and "retry" not in ups["Failed"].message
    assert ups["Scheduled"].status == "True"


def test_the_last_allowed_attempt_failing_is_failed_not_waiting_for_a_retry() -> None:
    pods = [failed(1, name=f"demo-r1-{i}") for i in "abcd"]  # backoffLimit 3: 4th failure
    assert phases((job(), [running()]), (job(), pods)) == ["Running", "Failed"]
    ups = by_type(observe(job(), pods, []))
    assert ups["Failed"].reason == "BackoffLimitExceeded"
    # a retry still allowed is Scheduling again, and says so
    ups = by_type(observe(job(), pods[:2], []))
    assert ups["Scheduled"].message == "waiting for the Job controller to retry"


def test_a_failed_run_keeps_no_scheduled_unknown() -> None:
    conds: list[Obj] = []
    conds = apply(conds, observe(job(), [failed(1)], conds), 1)  # retry 1 of 3
    assert next(c for c in conds if c["type"] == "Scheduled")["status"] == "Unknown"
    final = job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    conds = apply(conds, observe(final, [failed(1)], conds), 1)
    sched = next(c for c in conds if c["type"] == "Scheduled")
    assert sched["status"] == "True" and "retry" not in sched["message"], sched


# -- pod creation refused (the Job's FailedCreate events) --------------------------------------


def _failed_create(uid: str, first: str, last: str, message: str) -> Obj:
    return {
        "reason": "FailedCreate",
        "type": "Warning",
        "involvedObject": {"kind": "Job", "name": "demo-r1", "uid": uid},
        "firstTimestamp": first,
        "lastTimestamp": last,
        "message": message,
    }


def test_creation_refused_waits_then_fails() -> None:
    from datetime import UTC, datetime

    from loraf_operator.run_tracking import creation_refused

    j = {**job(), "metadata": {"name": "demo-r1", "uid": "u1"}}
    evs = [
        _failed_create("u1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "old"),
        _failed_create("u1", "2026-01-01T00:00:05Z", "2026-01-01T00:01:00Z", "no PriorityClass"),
        _failed_create("other-uid", "2025-01-01T00:00:00Z", "2026-01-01T00:02:00Z", "stranger"),
    ]
    at = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
    waiting = {c.type: c for c in creation_refused(j, [], evs, at, 180)}
    assert waiting["Running"].reason == "FailedCreate" and waiting["Running"].status == "False"
    assert "no PriorityClass" in waiting["Running"].message  # the newest event of this Job
    assert "2026-01-01T00:03:00Z" in waiting["Running"].message  # first event + timeout
    assert waiting["Scheduled"].reason == "FailedCreate"
    later = datetime(2026, 1, 1, 0, 3, 0, tzinfo=UTC)
    failed = {c.type: c for c in creation_refused(j, [], evs, later, 180)}
    assert failed["Failed"].status == "True" and failed["Failed"].reason == "PodCreationRefused"
    assert "no PriorityClass" in failed["Failed"].message
    # A pod exists, the Job is suspended or finished, or the events are another Job's: nothing.
    assert creation_refused(j, [pod()], evs, later, 180) == []
    assert creation_refused({**j, "spec": {"suspend": True}}, [], evs, later, 180) == []
    assert creation_refused(j, [], evs[2:], later, 180) == []
    done = {**job(("Complete", "", "")), "metadata": {"name": "demo-r1", "uid": "u1"}}
    assert creation_refused(done, [], evs, later, 180) == []
