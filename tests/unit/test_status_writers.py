"""Status writers produce what the models declare, checked before the apiserver would
prune a misspelled key without a word (extra="forbid" on what is written)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from loraf_operator.api.models import (
    Condition,
    HistoryEntry,
    LoRAFineTuneStatus,
    LoRAServing,
    LoRAServingStatus,
    Progress,
    RunRef,
)
from loraf_operator.builders.labels import GENERATION, RUN
from loraf_operator.runs import history_entry, start_conditions, trusted_run
from loraf_operator.serving_status import Replicas, serving_status
from loraf_operator.status import apply
from loraf_trainer.status_reporter import StatusPublisher

NOW = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("model", "data", "where"),
    [
        (Progress, {"stgae": "Training"}, "stgae"),
        (Progress, {"plan": {"microBatchSiz": 2}}, "plan.microBatchSiz"),
        (LoRAFineTuneStatus, {"gpuHour": 1.0}, "gpuHour"),
        (LoRAFineTuneStatus, {"run": {"jobname": "x-r1"}}, "run.jobname"),
        (LoRAServingStatus, {"adapters": [{"name": "a", "stat": "Ready"}]}, "adapters.0.stat"),
    ],
)
def test_a_misspelled_key_is_refused(model: Any, data: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as e:
        model.patch_of(data)
    assert where in str(e.value)


def test_the_trainer_cannot_write_a_misspelled_progress_key() -> None:
    pub = StatusPublisher(None)
    pub.update({"stage": "Training", "totalSteps": 4, "storageError": None})
    # None stays: in the merge patch it clears the field.
    assert pub.last["totalSteps"] == 4 and pub.last["storageError"] is None
    with pytest.raises(ValidationError, match="totalStep"):
        pub.update({"totalStep": 4})
    pub.update(Progress(step=2, peakGpuMemoryGiB=1.5))
    assert pub.last["step"] == 2 and pub.last["peakGpuMemoryGiB"] == 1.5


def test_operator_writers_write_only_declared_fields() -> None:
    conds = apply([], start_conditions(False), 1, NOW)
    for c in conds:
        Condition.model_validate(c, extra="forbid")
    status = {
        "conditions": conds,
        "run": {"number": 1, "generation": 1, "jobName": "ft-r1", "startTime": NOW},
        "artifacts": {"adapterUri": "s3://b/run-1/adapter/"},
    }
    HistoryEntry.model_validate(history_entry(status, NOW), extra="forbid")
    job = {"metadata": {"name": "ft-r2", "labels": {RUN: "2"}, "annotations": {GENERATION: "3"}}}
    fixed = trusted_run(status, [job])["run"]
    assert RunRef.model_validate(fixed, extra="forbid").job_name == "ft-r2"
    LoRAFineTuneStatus.model_validate({**status, "run": fixed}, extra="forbid")


def test_serving_status_is_a_lora_serving_status() -> None:
    sv = LoRAServing.model_validate(
        {
            "metadata": {"name": "s", "namespace": "ns", "generation": 1},
            "spec": {
                "baseModel": {"huggingFace": "org/m"},
                "adapters": [{"name": "a", "uri": "s3://bkt/a/"}],
            },
        }
    )
    out = serving_status(sv, None, Replicas(missing=("Service s",)))
    assert out["url"] is None  # set on purpose: the patch removes a stale url
    LoRAServingStatus.model_validate(out, extra="forbid")
