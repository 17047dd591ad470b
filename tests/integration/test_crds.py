"""The generated CRDs against a real kube-apiserver: examples apply and round-trip,
bad manifests are rejected naming the field, explain and printer columns work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraf_operator.api.models import LoRAFineTune, LoRAServing
from tests.manifests import finetune, mutate, serving

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

VALID = finetune("bad")
VALID_SERVING = serving("bad")


def create(cluster: Any, ns: str, obj: dict[str, Any] | str, check: bool = False) -> Any:
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return cluster.kubectl(
        "create", "--validate=strict", "-n", ns, "-f", "-", input=text, check=check
    )


# ---------------------------------------------------------------------------------------------
# valid manifests


def test_minimal_is_accepted_and_defaulted(cluster: Any, crds: Any, namespace: str) -> None:
    create(cluster, namespace, VALID, check=True)
    obj = cluster.get_json("lorafinetune", "bad", "-n", namespace)
    spec = obj["spec"]
    # Scalar defaults and the nested defaults under `default: {}` objects.
    assert spec["method"] == "lora" and spec["backoffLimit"] == 3
    assert spec["lora"]["r"] == 16 and spec["lora"]["targetModules"] == ["all-linear"]
    assert spec["resources"]["gpus"] == 1
    # no learning-rate default in the CRD: the trainer's rule chooses it (hyperparams)
    assert "learningRate" not in spec["training"] and spec["lora"]["dropout"] == 0
    LoRAFineTune.model_validate(obj)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_apply_and_round_trip(cluster: Any, crds: Any, namespace: str, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    res = cluster.kubectl(
        "apply", "--validate=strict", "--server-side", "-n", namespace, "-f", str(path)
    )
    assert res.returncode == 0, res.stderr
    models: dict[str, type[LoRAFineTune] | type[LoRAServing]] = {
        "LoRAFineTune": LoRAFineTune,
        "LoRAServing": LoRAServing,
    }
    for doc in docs:
        kind = doc["kind"]
        stored = cluster.get_json(kind.lower(), doc["metadata"]["name"], "-n", namespace)
        model = models[kind]
        # The stored object (with server defaults) parses into the same spec as the file.
        assert model.model_validate(stored).spec == model.model_validate(doc).spec


# ---------------------------------------------------------------------------------------------
# invalid manifests: (id, manifest, text the error must contain)

F = VALID
S = VALID_SERVING
INVALID: list[tuple[str, dict[str, Any], str]] = [
    # types
    ("r-type", mutate(F, **{"spec.lora.r": "eight"}), "spec.lora.r"),
    ("lr-type", mutate(F, **{"spec.training.learningRate": "fast"}), "spec.training.learningRate"),
    ("suspend-type", mutate(F, **{"spec.suspend": "no"}), "spec.suspend"),
    (
        "trust-type",
        mutate(F, **{"spec.baseModel.trustRemoteCode": "yes"}),
        "spec.baseModel.trustRemoteCode",
    ),
    (
        "targets-type",
        mutate(F, **{"spec.lora.targetModules": "all-linear"}),
        "spec.lora.targetModules",
    ),
    # bounds
    ("r-zero", mutate(F, **{"spec.lora.r": 0}), "spec.lora.r"),
    ("r-huge", mutate(F, **{"spec.lora.r": 2048}), "spec.lora.r"),
    ("alpha-zero", mutate(F, **{"spec.lora.alpha": 0}), "spec.lora.alpha"),
    ("dropout-one", mutate(F, **{"spec.lora.dropout": 1.0}), "spec.lora.dropout"),
    ("targets-empty", mutate(F, **{"spec.lora.targetModules": []}), "spec.lora.targetModules"),
    ("lr-zero", mutate(F, **{"spec.training.learningRate": 0}), "spec.training.learningRate"),
    (
        "batch-zero",
        mutate(F, **{"spec.training.perDeviceBatchSize": 0}),
        "spec.training.perDeviceBatchSize",
    ),
    ("evalfraction", mutate(F, **{"spec.dataset.evalFraction": 0.9}), "spec.dataset.evalFraction"),
    ("gpus-negative", mutate(F, **{"spec.resources.gpus": -1}), "spec.resources.gpus"),
    ("cpu-quantity", mutate(F, **{"spec.resources": {"cpu": "lots"}}), "spec.resources.cpu"),
    (
        "memory-quantity",
        mutate(F, **{"spec.resources": {"memory": "32 GB"}}),
        "spec.resources.memory",
    ),
    ("backoff-negative", mutate(F, **{"spec.backoffLimit": -1}), "spec.backoffLimit"),
    (
        "serving-replicas",
        mutate(F, **{"spec.serving": {"enabled": True, "replicas": -1}}),
        "spec.serving.replicas",
    ),
    # enums and patterns
    ("method-enum", mutate(F, **{"spec.method": "full"}), "spec.method"),
    ("bias-enum", mutate(F, **{"spec.lora.bias": "some"}), "spec.lora.bias"),
    ("format-enum", mutate(F, **{"spec.dataset.format": "sharegpt"}), "spec.dataset.format"),
    ("scheduler-enum", mutate(F, **{"spec.training.scheduler": "step"}), "spec.training.scheduler"),
    ("optimizer-enum", mutate(F, **{"spec.training.optimizer": "adam"}), "spec.training.optimizer"),
    (
        "bits-enum",
        mutate(F, **{"spec.method": "qlora", "spec.quantization": {"bits": 2}}),
        "spec.quantization.bits",
    ),
    (
        "engine-enum",
        mutate(F, **{"spec.serving": {"enabled": True, "engine": "tgi"}}),
        "spec.serving.engine",
    ),
    ("output-s3-pattern", mutate(F, **{"spec.output.s3": "https://bucket/x"}), "spec.output.s3"),
    (
        "endpoint-pattern",
        mutate(F, **{"spec.output.endpoint": "minio:9000"}),
        "spec.output.endpoint",
    ),
    (
        "model-s3-pattern",
        mutate(F, **{"spec.baseModel": {"s3": "s3://UPPER/x"}}),
        "spec.baseModel.s3",
    ),
    (
        "adapter-name-pattern",
        mutate(F, **{"spec.serving": {"enabled": True, "adapterName": "Bad Name!"}}),
        "spec.serving.adapterName",
    ),
    # required
    ("no-output", mutate(F, **{"spec.output": None}), "spec.output"),
    ("no-dataset-format", mutate(F, **{"spec.dataset.format": None}), "spec.dataset.format"),
    ("no-spec", mutate(F, spec=None), "spec"),
    # CEL cross-field rules
    (
        "quant-with-lora",
        mutate(F, **{"spec.quantization": {"bits": 4}}),
        "spec.quantization is only allowed when spec.method is qlora",
    ),
    (
        "epochs-and-steps",
        mutate(F, **{"spec.training.epochs": 1}),
        "exactly one of epochs or maxSteps",
    ),
    (
        "neither-epochs-nor-steps",
        mutate(F, **{"spec.training.maxSteps": None}),
        "exactly one of epochs or maxSteps",
    ),
    (
        "two-model-sources",
        mutate(F, **{"spec.baseModel.s3": "s3://models/x"}),
        "spec.baseModel: Forbidden: exactly one of huggingFace, s3 or pvc must be set; set: huggingFace s3",  # noqa: E501
    ),
    (
        "no-model-source",
        mutate(F, **{"spec.baseModel": {"trustRemoteCode": False}}),
        "exactly one of huggingFace, s3 or pvc",
    ),
    (
        "revision-without-hub",
        mutate(F, **{"spec.baseModel": {"s3": "s3://models/x", "revision": "main"}}),
        "spec.baseModel.revision",
    ),
    (
        "token-without-hub",
        mutate(F, **{"spec.baseModel": {"s3": "s3://models/x", "tokenSecretRef": {"name": "hf"}}}),
        "spec.baseModel.tokenSecretRef",
    ),
    (
        "two-dataset-sources",
        mutate(F, **{"spec.dataset.huggingFace": "tatsu-lab/alpaca"}),
        "spec.dataset: Forbidden: exactly one of s3, pvc or huggingFace must be set; set: s3 huggingFace",  # noqa: E501
    ),
    (
        "empty-eval-source",
        mutate(F, **{"spec.dataset.eval": {"split": "test"}}),
        "spec.dataset.eval",
    ),
    (
        "gputype-without-gpus",
        mutate(F, **{"spec.resources": {"gpus": 0, "gpuType": "NVIDIA-H100"}}),
        "spec.resources.gpuType",
    ),
    # unknown fields (strict field validation)
    ("unknown-lora-field", mutate(F, **{"spec.lora.rank": 8}), 'unknown field "spec.lora.rank"'),
    ("unknown-spec-field", mutate(F, **{"spec.epochs": 3}), 'unknown field "spec.epochs"'),
    (
        "unknown-output-field",
        mutate(F, **{"spec.output.secretKey": "x"}),
        'unknown field "spec.output.secretKey"',
    ),
    # LoRAServing
    (
        "svc-duplicate-adapter",
        mutate(
            S,
            **{
                "spec.adapters": [
                    {"name": "a", "uri": "s3://artifacts/a/"},
                    {"name": "a", "uri": "s3://artifacts/b/"},
                ]
            },
        ),
        "spec.adapters[1]",
    ),
    (
        "svc-adapter-uri",
        mutate(S, **{"spec.adapters": [{"name": "a", "uri": "/tmp/a"}]}),
        "spec.adapters[0].uri",
    ),
    ("svc-port", mutate(S, **{"spec.port": 70000}), "spec.port"),
    ("svc-engine", mutate(S, **{"spec.engine": "tgi"}), "spec.engine"),
    (
        "svc-two-sources",
        mutate(S, **{"spec.baseModel.s3": "s3://models/x"}),
        "spec.baseModel: Forbidden: exactly one of huggingFace, s3 or pvc must be set; set: huggingFace s3",  # noqa: E501
    ),
]


def test_at_least_25_distinct_invalid_cases() -> None:
    assert len({case_id for case_id, _, _ in INVALID}) == len(INVALID) >= 25


@pytest.mark.parametrize(("case_id", "manifest", "needle"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_rejected(
    cluster: Any, crds: Any, namespace: str, case_id: str, manifest: dict[str, Any], needle: str
) -> None:
    res = create(cluster, namespace, manifest)
    assert res.returncode != 0, f"{case_id} was accepted"
    assert needle in res.stderr, res.stderr


def test_model_agrees_with_apiserver_on_invalid() -> None:
    """Every manifest the apiserver rejects, the models reject too (one source of truth)."""
    from pydantic import ValidationError

    models: dict[str, type[LoRAFineTune] | type[LoRAServing]] = {
        "LoRAFineTune": LoRAFineTune,
        "LoRAServing": LoRAServing,
    }
    for case_id, manifest, _ in INVALID:
        with pytest.raises(ValidationError):
            models[manifest["kind"]].model_validate(manifest)
            pytest.fail(f"model accepted {case_id}")


# ---------------------------------------------------------------------------------------------
# explain, printer columns, categories


def test_explain_shows_descriptions(cluster: Any, crds: Any) -> None:
    deadline = time.monotonic() + 60
    while True:  # the OpenAPI v3 document is published a moment after Established
        res = cluster.kubectl("explain", "loraf.spec.lora.r", check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert res.returncode == 0, res.stderr
    assert "LoRA rank" in res.stdout and "integer" in res.stdout
    res = cluster.kubectl("explain", "lorasvc.spec.adapters")
    assert "Adapters to load" in res.stdout
    # Every condition type the operator writes (api.conditions), not a hand-kept few.
    res = cluster.kubectl("explain", "loraf.status.conditions")
    assert all(f"{t}:" in res.stdout for t in ("Validated", "Scheduled", "Serving")), res.stdout


def test_printer_columns_from_status(cluster: Any, crds: Any, namespace: str) -> None:
    create(cluster, namespace, mutate(VALID, **{"metadata.name": "cols"}), check=True)
    # A LoRAServing beside it: `kubectl get loraf` must still list LoRAFineTunes only (a
    # category named "loraf" would shadow the short name and print both kinds).
    create(cluster, namespace, mutate(VALID_SERVING, **{"metadata.name": "other"}), check=True)
    status = {
        "status": {
            "phase": "Running",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "progress": {"percent": 40, "loss": 1.25, "eta": "1m10s", "step": 4, "totalSteps": 10},
            "artifacts": {"adapterUri": "s3://artifacts/run/run-1/adapter/"},
        }
    }
    cluster.kubectl(
        "patch",
        "lorafinetune",
        "cols",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    out = cluster.kubectl("get", "loraf", "cols", "-n", namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "MODEL", "METHOD", "PROGRESS", "LOSS", "ETA", "AGE"]
    assert row.split()[:7] == [
        "cols",
        "Running",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "lora",
        "40",
        "1.25",
        "1m10s",
    ]
    wide = cluster.kubectl("get", "loraf", "cols", "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert header.split()[-2:] == ["GPUS", "ARTIFACT"]
    assert row.split()[-2:] == ["1", "s3://artifacts/run/run-1/adapter/"]
    # The status subresource is the only way to write status: a spec update ignores it.
    stored = cluster.get_json("loraf", "cols", "-n", namespace)
    assert LoRAFineTune.model_validate(stored).status.progress.percent == 40  # type: ignore[union-attr]
    # Categories: `kubectl get ml` lists it.
    listed = cluster.kubectl("get", "ml", "-n", namespace).stdout
    assert "lorafinetune.loraf.dev/cols" in listed and "loraserving.loraf.dev/other" in listed


def test_serving_columns(cluster: Any, crds: Any, namespace: str) -> None:
    create(cluster, namespace, mutate(VALID_SERVING, **{"metadata.name": "svc"}), check=True)
    status = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AllAdaptersLoaded",
                    "message": "",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
            "url": "http://svc.ns.svc:8000/v1",
            "readyReplicas": 1,
            "adapters": [
                {"name": "a", "uri": "s3://artifacts/a/run-1/", "state": "Ready"},
                {"name": "b", "uri": "s3://artifacts/b/run-1/", "state": "Failed"},
            ],
            # What the operator writes (serving_status.adapter_summary): a printer column
            # over adapters[*].name would show only "a".
            "adapterSummary": "a, b (Failed)",
        }
    }
    cluster.kubectl(
        "patch",
        "loraserving",
        "svc",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    out = cluster.kubectl("get", "lorasvc", "svc", "-n", namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "URL", "ADAPTERS", "AGE"]
    assert row.split()[:3] == ["svc", "True", "http://svc.ns.svc:8000/v1"]
    assert "a, b (Failed)" in row, row
