"""serving_status: Ready only when every child of a LoRAServing exists (issue 16 item 2)."""

from __future__ import annotations

from typing import Any

from loraf_operator.api.models import LoRAServing
from loraf_operator.serving_handlers import serving_status


def serving(name: str = "svc") -> LoRAServing:
    return LoRAServing.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns", "generation": 2},
            "spec": {
                "baseModel": {"huggingFace": "a/b"},
                "adapters": [{"name": "x", "uri": "s3://bkt/a/run-1/"}],
            },
        }
    )


def ready_deployment() -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_ready_when_every_child_exists() -> None:
    st = serving_status(serving(), ready_deployment())
    assert ready(st)["status"] == "True"
    assert st["url"] == "http://svc.ns.svc:8000/v1"
    assert [a["state"] for a in st["adapters"]] == ["Ready"]


def test_not_ready_without_its_service() -> None:
    st = serving_status(serving(), ready_deployment(), ("Service svc",))
    c = ready(st)
    assert c["status"] == "False" and c["reason"] == "Creating"
    assert "Service svc" in c["message"]
    assert st["url"] is None  # no URL for a Service that does not exist
    assert [a["state"] for a in st["adapters"]] == ["Loading"]


def test_not_ready_without_its_config_map() -> None:
    st = serving_status(serving(), ready_deployment(), ("ConfigMap svc-adapters",))
    assert ready(st)["status"] == "False"
    assert st["url"] == "http://svc.ns.svc:8000/v1"
