"""A LoRAServing's status from its Deployment and its replicas' reports (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from loraf_operator.api.models import LoRAServing
from loraf_operator.serving_status import Replicas, engine_exit, serving_status
from loraf_trainer.vllm_sync import vllm_reason

A = {"name": "a", "uri": "s3://bkt/a/run-1/"}
B = {"name": "b", "uri": "s3://bkt/b/run-1/"}


def sv() -> LoRAServing:
    return LoRAServing.model_validate(
        {
            "metadata": {"name": "s", "namespace": "ns", "generation": 2},
            "spec": {"baseModel": {"huggingFace": "org/m"}, "adapters": [A, B]},
        }
    )


READY_DEP = {
    "metadata": {"generation": 3},
    "status": {"observedGeneration": 3, "readyReplicas": 1, "updatedReplicas": 1},
}


def report(*states: tuple[dict[str, str], str, str | None]) -> dict[str, Any]:
    return {
        "adapters": [
            {**a, "state": st, **({"reason": why} if why else {})} for a, st, why in states
        ]
    }


@pytest.mark.parametrize(
    ("reports", "want"),
    [
        ([], {"a": "Loading", "b": "Loading"}),
        ([report((A, "Ready", None), (B, "Ready", None))], {"a": "Ready", "b": "Ready"}),
        # One replica still loading b: b is not Ready yet.
        (
            [report((A, "Ready", None), (B, "Ready", None)), report((A, "Ready", None))],
            {"a": "Ready", "b": "Loading"},
        ),
        # Any replica refusing it makes it Failed, with that replica's reason.
        (
            [report((A, "Ready", None), (B, "Failed", "sha256 differs"))],
            {"a": "Ready", "b": "Failed"},
        ),
        # A report about another uri of the same name (an older spec) does not count.
        ([report(({"name": "a", "uri": "s3://bkt/a/run-0/"}, "Ready", None))],
         {"a": "Loading", "b": "Loading"}),
    ],
)  # fmt: skip
def test_adapter_states_come_from_the_replicas(
    reports: list[dict[str, Any]], want: dict[str, str]
) -> None:
    st = serving_status(sv(), READY_DEP, Replicas(reports=reports))
    assert {a["name"]: a["state"] for a in st["adapters"]} == want
    failed = [a for a in st["adapters"] if a["state"] == "Failed"]
    assert all(a["reason"] == "sha256 differs" for a in failed)


def pod(name: str, state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs = {"name": "server", "state": state, **({"lastState": last} if last else {})}
    side = {"name": "sync-adapters", "state": {"terminated": {"exitCode": 1, "message": "x"}}}
    return {"metadata": {"name": name}, "status": {"containerStatuses": [cs, side]}}


def test_an_engine_that_exits_makes_ready_false_with_its_message() -> None:
    crashed = {
        "terminated": {
            "exitCode": 1,
            "message": "Traceback ...\nValueError: max_model_len must be positive",
            "finishedAt": "2026-12-01T10:00:00Z",
        }
    }
    pods = [pod("p1", {"running": {}}), pod("p2", {"waiting": {}}, last=crashed)]
    why = engine_exit(pods)
    assert why is not None and "code 1" in why and "p2" in why
    assert why.endswith("ValueError: max_model_len must be positive")
    not_ready = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}}
    st = serving_status(sv(), not_ready, Replicas(engine_exit=why))
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "EngineExited", why)
    # Only the server container counts, and a clean exit is no failure.
    assert engine_exit([pod("p3", {"terminated": {"exitCode": 0}})]) is None


def test_vllm_reasons_are_unwrapped() -> None:
    msg = (
        "Call to add_lora method failed: Worker failed with error 'LoRA rank 32 is greater "
        "than max_lora_rank 16.', please check the stack trace above for the root cause"
    )
    assert vllm_reason(msg) == "LoRA rank 32 is greater than max_lora_rank 16."
    assert vllm_reason("plain message") == "plain message"


def ready_cond(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_ready_needs_every_child() -> None:
    st = serving_status(sv(), READY_DEP, Replicas(reports=[report((A, "Ready", None))]))
    assert ready_cond(st)["status"] == "True"
    assert st["url"] == "http://s.ns.svc:8000/v1"
    no_svc = serving_status(sv(), READY_DEP, Replicas(missing=("Service s",)))
    c = ready_cond(no_svc)
    assert (c["status"], c["reason"]) == ("False", "Creating") and "Service s" in c["message"]
    assert no_svc["url"] is None  # no URL for a Service that does not exist
    assert [a["state"] for a in no_svc["adapters"]] == ["Loading", "Loading"]
    no_cm = serving_status(sv(), READY_DEP, Replicas(missing=("ConfigMap s-adapters",)))
    assert ready_cond(no_cm)["status"] == "False"
    assert no_cm["url"] == "http://s.ns.svc:8000/v1"


def test_adapter_summary_names_every_adapter_for_kubectl_get() -> None:
    st = serving_status(
        sv(), READY_DEP, Replicas(reports=[report((A, "Ready", None), (B, "Failed", "bad"))])
    )
    assert st["adapterSummary"] == "a, b (Failed)"
    empty = LoRAServing.model_validate(
        {
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"baseModel": {"huggingFace": "o/m"}},
        }
    )
    assert serving_status(empty, READY_DEP)["adapterSummary"] is None
