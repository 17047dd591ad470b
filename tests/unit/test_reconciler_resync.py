"""Status writes are retried on transient errors, message-only changes are throttled, and
a standby replica (kopf peering) resyncs nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from loraf_operator import reconciler as rmod
from loraf_operator.kube import ApiError
from loraf_operator.peering import standby
from loraf_operator.reconciler import Reconciler, message_only_change
from loraf_operator.settings import Settings

FORBIDDEN = '{"reason": "Forbidden", "message": "user cannot patch resource \\"x\\""}'


class FakeKube:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.patches: list[Any] = []
        self.status: dict[str, Any] = {"run": {"number": 1, "jobName": "ft-r1"}}

    async def patch(self, kind: str, ns: str, name: str, patch: Any, sub: Any = None) -> Any:
        if self.failures:
            self.failures -= 1
            raise ApiError(403, FORBIDDEN, "PATCH", "/x")
        self.patches.append(patch)
        self.status = {**self.status, **patch["status"]}
        rv = str(10 + len(self.patches))
        meta = {"namespace": ns, "name": name, "uid": "u", "generation": 1, "resourceVersion": rv}
        return {"metadata": meta, "status": self.status}

    async def get(self, *a: Any) -> Any:
        return None

    async def create(self, obj: Any) -> Any:
        return obj  # Events


def ft(conds: list[Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": "ft",
            "uid": "u",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {},
        "status": {"run": {"number": 1, "jobName": "ft-r1"}, "conditions": conds or []},
    }


JOB = {"metadata": {"name": "ft-r1"}, "spec": {}, "status": {}}


def pending_pod(message: str) -> dict[str, Any]:
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message}  # fmt: skip
    return {"metadata": {"name": "ft-r1-a", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {}, "status": {"phase": "Pending", "conditions": [cond]}}  # fmt: skip


def test_status_write_is_retried_on_a_transient_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rmod, "_PATCH_RETRY_DELAYS", (0.0, 0.0, 0.0))
    kube = FakeKube(failures=2)
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    asyncio.run(rec.sync("ns", "ft", {("ns", "ft"): [ft()]}, {("ns", "ft"): [JOB]}, {}))
    assert len(kube.patches) == 1  # two 403s (RBAC being restored), then it went through


def test_status_write_gives_up_after_its_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rmod, "_PATCH_RETRY_DELAYS", (0.0, 0.0, 0.0))
    kube = FakeKube(failures=10)
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        asyncio.run(rec.sync("ns", "ft", {("ns", "ft"): [ft()]}, {("ns", "ft"): [JOB]}, {}))
    assert kube.failures == 6 and not kube.patches  # 4 attempts; the resync repairs it later


def test_message_only_changes_are_throttled() -> None:
    kube = FakeKube()
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]

    async def go() -> None:
        fts = {("ns", "ft"): [ft()]}
        jobs = {("ns", "ft"): [JOB]}
        await rec.sync("ns", "ft", fts, jobs, {("ns", "ft-r1"): [pending_pod("0/3 nodes")]})
        assert len(kube.patches) == 1
        await rec.sync("ns", "ft", fts, jobs, {("ns", "ft-r1"): [pending_pod("0/4 nodes")]})
        assert len(kube.patches) == 1  # only the scheduler's message moved: held back
        assert ("ns", "ft") in rec._pending  # ... and re-synced once the throttle allows

    asyncio.run(go())


def test_message_only_change() -> None:
    a = [{"type": "Running", "status": "False", "reason": "Pending", "message": "x"}]
    b = [{**a[0], "message": "y"}]
    c = [{**a[0], "reason": "Unschedulable"}]
    assert message_only_change(a, b)
    assert not message_only_change(a, a) and not message_only_change(a, c)


def test_standby_follows_kopf_peering() -> None:
    """kopf's rule: paused while a live peer other than us has a priority >= ours."""
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    seen = "2026-01-01T11:59:50+00:00"
    me = {"priority": 10, "lifetime": 60, "lastseen": seen}
    assert not standby({"me": me}, "me", 10, now)
    assert standby({"me": me, "b": {**me, "priority": 11}}, "me", 10, now)
    assert standby({"me": me, "b": me}, "me", 10, now)  # same priority: kopf pauses both
    assert not standby({"me": me, "b": {**me, "priority": 9}}, "me", 10, now)
    dead = {**me, "priority": 99, "lastseen": "2026-01-01T11:58:00+00:00"}
    assert not standby({"me": me, "b": dead}, "me", 10, now)


def test_resync_patches_nothing_on_standby(monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby replica's resync reads the peering object and leaves the runs alone."""
    fresh = datetime.now(UTC).isoformat()
    leader = {"status": {"other": {"priority": 99, "lifetime": 60, "lastseen": fresh}}}

    class PeeredKube(FakeKube):
        def __init__(self) -> None:
            super().__init__()
            self.gets: list[Any] = []

        async def get(self, *a: Any) -> Any:
            self.gets.append(a)
            return leader if a[0] == "ClusterKopfPeering" else None

    kube = PeeredKube()
    cfg = Settings(peering="loraf", priority=1, status_interval_seconds=0)
    rec = Reconciler(kube, cfg)  # type: ignore[arg-type]
    asyncio.run(rec.resync({("ns", "ft"): [ft()]}))
    assert kube.gets == [("ClusterKopfPeering", "", "loraf")] and not kube.patches
    leader["status"]["other"]["priority"] = 0  # we lead now: the run is re-read
    asyncio.run(rec.resync({("ns", "ft"): [ft()]}))
    assert ("LoRAFineTune", "ns", "ft") in kube.gets


def _owned_job(run: int) -> dict[str, Any]:
    return {"metadata": {"name": f"ft-r{run}", "labels": {"loraf.dev/run": str(run)},
                         "annotations": {"loraf.dev/generation": "1"},
                         "ownerReferences": [{"uid": "u", "controller": True}]}}  # fmt: skip


@pytest.mark.parametrize(
    ("claimed", "index", "apiserver", "corrected"),
    [
        (7, [1], [1], 1),  # a forged run number: the owned Job says 1
        (2, [1], [1, 2], None),  # run 2 just created, the index lags: trust the status
        (None, [1], [], None),  # run cleared (invalid spec) and its Job deleted: index lag
        (None, [1], [1], 1),  # run erased while its Job still exists: restored
    ],
)
def test_run_bookkeeping_checks_the_apiserver_before_correcting(
    claimed: int | None, index: list[int], apiserver: list[int], corrected: int | None
) -> None:
    class JobsKube(FakeKube):
        async def get(self, kind: str, ns: str, name: str) -> Any:
            runs = {f"ft-r{r}": _owned_job(r) for r in apiserver}
            return runs.get(name) if kind == "Job" else None

    kube = JobsKube()
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    body = ft()
    body["status"]["run"] = {"number": claimed, "jobName": f"ft-r{claimed}"} if claimed else None
    jobs = {("ns", "ft"): [_owned_job(r) for r in index]}
    got = asyncio.run(rec._trusted(body, jobs))
    if corrected is None:
        assert got is body and not kube.patches
    else:
        assert got["status"]["run"]["number"] == corrected
        assert kube.patches[0]["status"]["run"]["jobName"] == f"ft-r{corrected}"
