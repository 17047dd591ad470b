"""SFT → DPO chained on the local cluster (issue 20): the DPO fine-tune, applied together
with the SFT one it starts from, waits without a Job until the SFT run succeeded, then
trains from that run's verified adapter and reports its held-out preference accuracy.

Kept tiny (a few steps, short sequences); the accuracy claim itself is tested, with the
same data, by tests/trainer/test_dpo.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from loraf_dev import quickstart as qs
from tests.conftest import Cluster
from tests.e2e.helpers import apply, cond, get, namespace_state, wait_for
from tests.trainer.test_dpo import preference_rows

pytestmark = pytest.mark.e2e

PREFERENCES = "s3://loraf-data/quickstart/preferences.jsonl"


def test_dpo_waits_for_its_sft_run_then_starts_from_its_adapter(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]], s3: Any
) -> None:
    rows = preference_rows(qs.DATASET)
    bucket, _, key = PREFERENCES.removeprefix("s3://").partition("/")
    s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(r) + "\n" for r in rows))
    dpo = stage(
        "dpo",
        {
            "spec": {
                "objective": "dpo",
                "startFrom": {"fineTune": "sft"},
                "dataset": {"s3": PREFERENCES, "format": "preference", "evalFraction": 0.2},
                "training": {"maxSteps": 3, "learningRate": 1e-3, "evalPrompts": 1},
            }
        },
    )
    apply(cluster, namespace, dpo)

    def waiting() -> bool:
        running = cond(get(cluster, namespace, "dpo"), "Running")
        return running.get("reason") == "WaitingForStartingAdapter"

    wait_for("dpo to wait for its SFT run", waiting, seen=namespace_state(cluster, namespace))
    running = cond(get(cluster, namespace, "dpo"), "Running")
    assert "startFrom.fineTune sft: no such LoRAFineTune" in running["message"], running
    jobs = cluster.get_json("jobs", "-n", namespace)["items"]
    assert jobs == [], "a waiting run holds no Job (no GPU)"

    apply(cluster, namespace, stage("sft", {"spec": {"training": {"maxSteps": 2}}}))

    def done(name: str) -> Callable[[], bool]:
        def check() -> bool:
            obj = get(cluster, namespace, name)
            return "True" in (
                cond(obj, "Succeeded").get("status"),
                cond(obj, "Failed").get("status"),
            )

        return check

    wait_for("sft to finish", done("sft"), stall=300, seen=namespace_state(cluster, namespace))
    sft = get(cluster, namespace, "sft")
    assert cond(sft, "Succeeded").get("status") == "True", sft.get("status")
    wait_for("dpo to finish", done("dpo"), stall=300, seen=namespace_state(cluster, namespace))
    obj = get(cluster, namespace, "dpo")
    assert cond(obj, "Succeeded").get("status") == "True", (
        obj.get("status"),
        operator.logs()[-3000:],
    )
    # the trainer was given the SFT run's folder (resolved by the operator, in the config)
    cm = cluster.get_json("configmap", "-n", namespace, "-l", "loraf.dev/finetune=dpo")["items"]
    config = next(iter(cm[0]["data"].values()))
    run_prefix = sft["status"]["artifacts"]["adapterUri"].rstrip("/").removesuffix("/adapter")
    assert f"startAdapterUri: {run_prefix}" in config, config
    evaluation = obj["status"]["evaluation"]
    assert 0 <= evaluation["preferenceAccuracyStart"] <= 1
    assert 0 <= evaluation["preferenceAccuracyAdapter"] <= 1
    assert obj["status"]["progress"]["dpo"]["rewardMargin"] is not None
