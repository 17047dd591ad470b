"""The Argo CD health checks in docs/argocd/ run by a real Lua interpreter (lupa, Lua 5.1:
Argo CD's gopher-lua speaks 5.1) against sample statuses shaped like the operator's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (dev extra) is not installed")

ROOT = Path(__file__).resolve().parents[2]
FT_LUA = ROOT / "docs" / "argocd" / "lorafinetune-health.lua"
SERVING_LUA = ROOT / "docs" / "argocd" / "loraserving-health.lua"


def health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script.read_text())
    return {"status": result["status"], "message": result["message"]}


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def finetune(
    *conditions: dict[str, Any], generation: int = 1, observed: int = 1, **status: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {"method": "lora"},
    }
    if conditions or status:
        obj["status"] = {"observedGeneration": observed, "conditions": list(conditions), **status}
    return obj


VALID = cond("Validated", "True", "SpecValid")

FINETUNE_CASES = [
    ("new, no status yet", finetune(), "Progressing", "Waiting for the loraf operator"),
    (
        "validated, pod unschedulable (waiting for a GPU)",
        finetune(
            VALID,
            cond(
                "Scheduled",
                "False",
                "Unschedulable",
                "0/4 nodes are available: Insufficient nvidia.com/gpu",
            ),
        ),
        "Progressing",
        "Unschedulable: 0/4 nodes are available: Insufficient nvidia.com/gpu",
    ),
    (
        "training",
        finetune(
            VALID,
            cond("Scheduled", "True", "PodScheduled"),
            cond("Running", "True", "PodRunning", "step 10/30"),
        ),
        "Progressing",
        "PodRunning: step 10/30",
    ),
    (
        "image cannot be pulled",
        finetune(VALID, cond("Running", "False", "ImagePullBackOff", "Back-off pulling image")),
        "Degraded",
        "ImagePullBackOff: Back-off pulling image",
    ),
    (
        "preempted, retrying: still progressing",
        finetune(VALID, cond("Running", "False", "Preempted", "exit code 75")),
        "Progressing",
        None,
    ),
    (
        "succeeded",
        finetune(
            VALID,
            cond("Running", "False", "Completed"),
            cond("Succeeded", "True", "Completed", "adapter uploaded"),
        ),
        "Healthy",
        "Completed: adapter uploaded",
    ),
    (
        "dataset invalid",
        finetune(VALID, cond("Failed", "True", "DatasetInvalid", "row 3: missing 'output'")),
        "Degraded",
        "DatasetInvalid: row 3: missing 'output'",
    ),
    (
        "spec rejected by the operator",
        finetune(cond("Validated", "False", "InvalidSpec", "lora.r must be > 0")),
        "Degraded",
        "InvalidSpec: lora.r must be > 0",
    ),
    (
        "suspended (queued by Kueue)",
        finetune(VALID, cond("Suspended", "True", "Queued", "waiting for quota")),
        "Suspended",
        "Queued: waiting for quota",
    ),
    (
        "a stale success after a spec change is not Healthy",
        finetune(VALID, cond("Succeeded", "True", "Completed"), generation=2, observed=1),
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    (
        "failure wins over an old success",
        finetune(
            VALID, cond("Succeeded", "True", "Completed"), cond("Failed", "True", "OOMKilled", "")
        ),
        "Degraded",
        "OOMKilled",
    ),
]


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [c[1:] for c in FINETUNE_CASES],
    ids=[c[0] for c in FINETUNE_CASES],
)
def test_lorafinetune_health(obj: dict[str, Any], status: str, message: str | None) -> None:
    got = health(FT_LUA, obj)
    assert got["status"] == status
    if message is not None:
        assert got["message"] == message


def serving(
    *conditions: dict[str, Any],
    replicas: int = 1,
    adapters: list[Any] | None = None,
    generation: int = 1,
    observed: int = 1,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAServing",
        "metadata": {"name": "s", "namespace": "ns", "generation": generation},
        "spec": {"replicas": replicas},
    }
    if conditions:
        obj["status"] = {
            "observedGeneration": observed,
            "conditions": list(conditions),
            "adapters": adapters or [],
        }
    return obj


SERVING_CASES = [
    ("no status", serving(), "Progressing"),
    ("loading", serving(cond("Ready", "False", "Loading", "loading base model")), "Progressing"),
    ("ready", serving(cond("Ready", "True", "Serving", "1/1 replicas")), "Healthy"),
    ("crash looping", serving(cond("Ready", "False", "CrashLoopBackOff")), "Degraded"),
    ("engine exited", serving(cond("Ready", "False", "EngineExited", "code 2")), "Degraded"),
    (
        "an adapter failed",
        serving(
            cond("Ready", "True", "Serving"),
            adapters=[
                {"name": "a", "state": "Ready"},
                {"name": "b", "state": "Failed", "reason": "not found in S3"},
            ],
        ),
        "Degraded",
    ),
    ("scaled to zero", serving(cond("Ready", "False", "ScaledDown"), replicas=0), "Suspended"),
    ("stale", serving(cond("Ready", "True"), generation=3, observed=2), "Progressing"),
]


@pytest.mark.parametrize(
    ("obj", "status"), [c[1:] for c in SERVING_CASES], ids=[c[0] for c in SERVING_CASES]
)
def test_loraserving_health(obj: dict[str, Any], status: str) -> None:
    assert health(SERVING_LUA, obj)["status"] == status


def test_failed_adapter_message_names_it() -> None:
    obj = serving(
        cond("Ready", "True"), adapters=[{"name": "b", "state": "Failed", "reason": "not found"}]
    )
    assert health(SERVING_LUA, obj)["message"] == "Adapter b failed: not found"


def test_docs_embed_the_same_lua() -> None:
    """docs/gitops.md shows the checks in argocd-cm form: the same text as the files."""
    doc = (ROOT / "docs" / "gitops.md").read_text()
    for script in (FT_LUA, SERVING_LUA):
        for line in script.read_text().splitlines():
            if line.strip():
                assert line in doc, f"docs/gitops.md lacks {script.name} line: {line!r}"
