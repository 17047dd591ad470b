"""spec.startFrom.fineTune resolution (pure): a run starts only from a succeeded run."""

from __future__ import annotations

import re
from typing import Any

import pytest

from loraf_operator import start_from
from loraf_operator.api.models import LoRAFineTune
from tests.manifests import finetune, mutate

DPO = mutate(
    finetune("dpo"),
    **{
        "metadata.namespace": "team",
        "spec.objective": "dpo",
        "spec.dataset.format": "preference",
        "spec.startFrom": {"fineTune": "sft"},
    },
)


def sft(phase: str, succeeded: str, adapter: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Succeeded", "status": succeeded, "reason": "x"}],
    }
    if adapter:
        status["artifacts"] = {"adapterUri": adapter}
    return mutate(finetune("sft"), **{"metadata.namespace": "team", "status": status})


def test_a_succeeded_fine_tune_gives_its_run_folder() -> None:
    got = start_from.resolve(
        LoRAFineTune.model_validate(DPO), sft("Succeeded", "True", "s3://bkt/sft/run-2/adapter/")
    )
    assert got == "s3://bkt/sft/run-2"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (None, "no such LoRAFineTune in namespace team"),
        (sft("Running", "False", None), "has not succeeded yet (phase Running)"),
        # a forged or stale artifact without Succeeded=True is not a starting point
        (sft("Failed", "False", "s3://bkt/sft/run-1/adapter/"), "phase Failed"),
    ],
)
def test_waits_until_the_fine_tune_succeeded(source: dict[str, Any] | None, words: str) -> None:
    with pytest.raises(start_from.Waiting, match=re.escape(words)):
        start_from.resolve(LoRAFineTune.model_validate(DPO), source)


def test_no_fine_tune_reference_needs_nothing() -> None:
    s3 = mutate(DPO, **{"spec.startFrom": {"s3": "s3://bkt/sft/run-1/"}})
    assert start_from.resolve(LoRAFineTune.model_validate(s3), None) is None
    assert start_from.resolve(LoRAFineTune.model_validate(finetune("plain")), None) is None
