"""Run bookkeeping: which run to act on, history entries, run numbers from the owned Jobs."""

from __future__ import annotations

from typing import Any

from loraf_operator.runs import (
    Plan,
    append_history,
    gpu_hours,
    history_entry,
    next_run_number,
    plan,
    start_conditions,
    trusted_run,
    wait_conditions,
)
from loraf_operator.status import apply, derive_phase

T0, T9 = "2026-01-01T00:00:00Z", "2026-01-01T09:00:00Z"


def status(
    number: int | None = None, gen: int = 1, done: str | None = None, **extra: Any
) -> dict[str, Any]:
    st: dict[str, Any] = {"conditions": [], **extra}
    if number:
        st["run"] = {"number": number, "generation": gen, "startTime": T0}
    if done:
        st["conditions"] = [
            {
                "type": done,
                "status": "True",
                "reason": "Completed" if done == "Succeeded" else "OOMKilled",
            }
        ]
    return st


def test_plan() -> None:
    assert plan(status(), 1, "h", None).action == "start"
    assert plan(status(), 1, "h", None).run == 1
    assert plan(status(1, gen=1), 1, "h", None).action == "ensure"  # resume/restart
    assert plan(status(1, gen=1, done="Succeeded"), 1, "h", None).action == "none"
    p = plan(status(1, gen=1), 2, "h2", "h1")  # spec changed
    assert (p.action, p.run, p.stop) == ("start", 2, 1)
    assert plan(status(1, gen=1), 2, "h", "h").action == "sync"  # only suspend/serving changed
    assert plan(status(1, gen=1), 2, "h", None).action == "start"  # children gone: unknown
    assert plan(status(2, gen=3, history=[{"number": 1}]), 4, "b", "a").run == 3


def test_next_run_number_after_invalid_spec() -> None:
    assert next_run_number({"history": [{"number": 1}, {"number": 4}]}) == 5


def test_start_conditions() -> None:
    c = apply([], start_conditions(False), 1, "T")
    assert derive_phase(c) == "Scheduling"
    c = apply([], start_conditions(True), 1, "T")
    assert derive_phase(c) == "Queued"


def test_history() -> None:
    running = status(1, gen=1)
    running["conditions"] = apply([], [*start_conditions(False)], 1, "T")
    e = history_entry(running, T9)
    assert e == {
        "number": 1,
        "generation": 1,
        "phase": "Stopped",
        "stoppedIn": "Scheduling",
        "reason": "Superseded",
        "startTime": T0,
        "completionTime": T9,
    }
    ok = status(1, done="Succeeded", artifacts={"adapterUri": "s3://b/run-1/adapter/"})
    e = history_entry(ok, T9)
    assert e["phase"] == "Succeeded" and e["artifacts"]["adapterUri"] == "s3://b/run-1/adapter/"
    assert history_entry(status(1, done="Failed"), T9)["reason"] == "OOMKilled"
    hist = append_history({"history": [{"number": i} for i in range(1, 21)]}, {"number": 21})
    assert len(hist) == 20 and hist[-1]["number"] == 21 and hist[0]["number"] == 2


def _job(run: int, gen: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": f"ft-r{run}", "labels": {"loraf.dev/run": str(run)},
                         "annotations": {"loraf.dev/generation": str(gen)}}}  # fmt: skip


def test_run_bookkeeping_comes_from_the_owned_jobs() -> None:
    st = status(1, gen=1)
    assert trusted_run(st, [_job(1)]) is st  # agrees: untouched
    assert trusted_run(st, []) is st  # no Job yet: nothing to go by
    forged = {**st, "run": {**st["run"], "number": 7, "jobName": "ft-r7"}}
    fixed = trusted_run(forged, [_job(1)])
    assert fixed["run"]["number"] == 1 and fixed["run"]["jobName"] == "ft-r1"
    assert plan(fixed, 1, "h", None) == Plan("ensure", 1)  # not "ensure 7": no second Job
    # Run 2 replaced run 1 and waits for a Secret (no Job on purpose; r1 not yet gone).
    waiting = status(2, gen=2)
    waiting["conditions"] = apply([], wait_conditions("SecretNotFound", "no Secret"), 2, "T")
    assert trusted_run(waiting, [_job(1)]) is waiting
    # Newest owned Job wins over an older number in the status.
    assert trusted_run(st, [_job(1), _job(3, gen=4)])["run"]["generation"] == 4


def test_gpu_hours() -> None:
    job = {
        "status": {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:30:00Z"}
    }
    assert gpu_hours(job, 2, "2026-01-01T05:00:00Z") == 1.0
    assert (
        gpu_hours({"status": {"startTime": "2026-01-01T00:00:00Z"}}, 1, "2026-01-01T01:00:00Z")
        == 1.0
    )
    assert gpu_hours(None, 1, "x") == 0.0 and gpu_hours(job, 0, "x") == 0.0


def test_a_suspended_start_needs_no_second_status_patch() -> None:
    from loraf_operator.run_tracking import observe

    started = apply([], start_conditions(True), 1, "T")
    job = {
        "spec": {"suspend": True},
        "status": {
            "conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]
        },
    }
    assert apply(started, observe(job, [], started), 1, "T2") == started


def test_job_deleted_fails_the_run() -> None:
    from loraf_operator.run_tracking import job_deleted

    c = apply([], job_deleted("demo-r1"), 1, "T")
    assert derive_phase(c) == "Failed"
    assert "demo-r1" in next(x for x in c if x["type"] == "Failed")["message"]


def test_wait_conditions_hold_no_failure() -> None:
    from loraf_operator.runs import wait_conditions, waits
    from loraf_operator.status import apply, derive_phase

    conds = apply([], wait_conditions("SecretNotFound", "Secret s3 does not exist"), 1)
    assert waits(conds)
    assert derive_phase(conds) == "Scheduling"  # not Failed: the user may still create it
    by = {c["type"]: c for c in conds}
    assert by["Running"]["reason"] == "SecretNotFound" and by["Failed"]["status"] == "False"
    keyed = apply(conds, wait_conditions("SecretKeyMissing", "no key"), 1)
    assert {c["type"]: c for c in keyed}["Running"]["reason"] == "SecretKeyMissing"
