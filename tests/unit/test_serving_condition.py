"""The Serving condition is written by the Reconciler, under its per-object lock, and an
invalid LoRAFineTune never makes the serving link raise."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from loraf_operator.reconciler import Reconciler
from loraf_operator.serving_handlers import on_finetune_event
from loraf_operator.settings import Settings
from loraf_operator.status import Cond

KEY = ("ns", "ft")
ADAPTER = "s3://out/ft/run-1/adapter/"


class RecordingKube:
    """Records what the operator writes; status patches answer like the apiserver."""

    def __init__(self) -> None:
        self.applied: list[Any] = []
        self.status_patches: list[Any] = []
        self.rv = 10
        self.body: dict[str, Any] = {}  # the LoRAFineTune as the apiserver holds it

    async def apply(self, obj: Any) -> Any:
        self.applied.append(obj)
        return obj

    async def patch(self, kind: str, ns: str, name: str, patch: Any, sub: Any = None) -> Any:
        assert (kind, sub) == ("LoRAFineTune", "status")
        self.status_patches.append(patch["status"])
        self.rv += 1
        self.body = {**self.body, "status": {**self.body["status"], **patch["status"]}}
        self.body["metadata"] = {**self.body["metadata"], "resourceVersion": str(self.rv)}
        return self.body

    async def get(self, *a: Any) -> Any:
        return None

    async def create(self, obj: Any) -> Any:
        return obj  # Events


def succeeded(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    cond = {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "done"}
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {
            "namespace": "ns",
            "name": "ft",
            "uid": "u",
            "generation": 1,
            "resourceVersion": "10",
        },
        "spec": spec
        or {
            "baseModel": {"huggingFace": "org/model"},
            "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
            "training": {"maxSteps": 1},
            "output": {"s3": "s3://out/ft", "credentialsSecretRef": {"name": "s3"}},
            "serving": {"enabled": True, "engine": "transformers"},
        },
        "status": {
            "run": {"number": 1, "jobName": "ft-r1"},
            "conditions": [cond],
            "artifacts": {"adapterUri": ADAPTER},
        },
    }


def memo_for(kube: RecordingKube) -> kopf.Memo:
    memo = kopf.Memo()
    memo.kube = kube
    memo.reconciler = Reconciler(kube, Settings())  # type: ignore[arg-type]
    return memo


def test_an_invalid_spec_event_serves_nothing_and_raises_nothing() -> None:
    kube = RecordingKube()
    body = succeeded({"baseModel": {"huggingFace": "org/model"}, "serving": {"enabled": True}})
    kube.body = body
    asyncio.run(on_finetune_event(memo_for(kube), "MODIFIED", body))  # no ValidationError
    assert not kube.applied and not kube.status_patches


def test_the_serving_condition_is_written_under_the_reconcilers_lock() -> None:
    kube = RecordingKube()
    kube.body = body = succeeded()
    memo = memo_for(kube)

    async def go() -> None:
        lock = memo.reconciler._locks[KEY]
        await lock.acquire()  # e.g. a reconcile of the same object in progress
        task = asyncio.create_task(on_finetune_event(memo, "MODIFIED", body))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not kube.applied and not kube.status_patches  # waits for the lock
        lock.release()
        await task

    asyncio.run(go())
    assert [sv["metadata"]["name"] for sv in kube.applied] == ["ft"]  # its dedicated serving
    (conds,) = [p["conditions"] for p in kube.status_patches]
    serving = next(c for c in conds if c["type"] == "Serving")
    assert (serving["status"], serving["reason"]) == ("True", "AdapterAdded")
    assert any(c["type"] == "Succeeded" for c in conds)  # the other conditions are kept
    # The watch event of an older copy (no Serving condition yet) changes nothing: the
    # Reconciler decides on its own newer copy.
    asyncio.run(on_finetune_event(memo, "MODIFIED", body))
    assert len(kube.status_patches) == 1


def test_a_later_reconciler_write_keeps_the_serving_condition() -> None:
    """Before issue 18 the serving link patched around the Reconciler, so its next write
    from the watch's older copy dropped the condition."""
    kube = RecordingKube()
    stale = succeeded()
    stale["status"]["conditions"] = [
        {"type": "Running", "status": "True", "reason": "Running", "message": "training"}
    ]
    kube.body = stale
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]

    async def serving(_: Any) -> Cond:
        return Cond("Serving", "True", "AdapterAdded", "adapter ft is in LoRAServing ft")

    async def go() -> None:
        await rec.decide_condition(stale, serving)
        job = {"metadata": {"name": "ft-r1"}, "spec": {}, "status": {"active": 1}}
        pod = {"metadata": {"name": "ft-r1-a"}, "spec": {}, "status": {"phase": "Failed"}}
        await rec.sync("ns", "ft", {KEY: [stale]}, {KEY: [job]}, {("ns", "ft-r1"): [pod]})

    asyncio.run(go())
    assert len(kube.status_patches) == 2, kube.status_patches
    assert "Serving" in [c["type"] for c in kube.status_patches[1]["conditions"]]
