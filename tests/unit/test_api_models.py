"""Unit tests for the API models: defaults, cross-field rules, helpers, examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from loraf_operator.api.exitcodes import (
    FAIL_FAST_CODES,
    RETRIED_FREE_CODES,
    ExitCode,
    reason_for,
)
from loraf_operator.api.models import (
    LoRAFineTune,
    LoRAFineTuneSpec,
    LoRAFineTuneStatus,
    LoRAServing,
    LoRAServingSpec,
    QuantizationSpec,
)
from loraf_operator.api.run_layout import RunLayout
from loraf_operator.api.trainer_config import TrainerConfig
from tests.manifests import MINIMAL_SPEC, mutate

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = MINIMAL_SPEC


def spec(**changes: Any) -> dict[str, Any]:
    """MINIMAL with dotted-path changes applied (value None deletes the key)."""
    return mutate(MINIMAL, **changes)


def test_defaults() -> None:
    s = LoRAFineTuneSpec.model_validate(MINIMAL)
    assert s.method == "lora"
    assert s.lora.r == 16 and s.lora.alpha is None and s.lora.effective_alpha == 32
    assert s.lora.dropout == 0.0 and s.lora.target_modules == ["all-linear"]
    assert s.quantization is None and s.effective_quantization is None
    assert s.effective_optimizer == "adamw_torch"
    # unset: chosen by the trainer's defaults rule (loraf_trainer.hyperparams)
    assert s.training.learning_rate is None and s.training.scheduler is None
    assert s.training.warmup_ratio is None and s.training.per_device_batch_size is None
    assert s.training.gradient_checkpointing is None and s.dataset.system_prompt is None
    assert s.training.checkpoint_minutes == 10 and s.training.seed == 42
    assert s.resources.gpus == 1 and s.resources.node_selector == {}
    assert s.dataset.eval_fraction == 0.1 and s.dataset.file_format == "auto"
    assert s.output.merged_weights is False and s.output.adapter_dtype == "bfloat16"
    assert s.backoff_limit == 3 and s.suspend is False and s.serving is None
    assert s.base_model.trust_remote_code is False


def test_qlora_defaults() -> None:
    s = LoRAFineTuneSpec.model_validate(spec(method="qlora"))
    assert s.effective_quantization == QuantizationSpec()
    assert s.effective_quantization.bits == 4 and s.effective_quantization.quant_type == "nf4"
    assert s.effective_optimizer == "paged_adamw_8bit"
    s = LoRAFineTuneSpec.model_validate(spec(method="qlora", **{"training.optimizer": "sgd"}))
    assert s.effective_optimizer == "sgd"
    s = LoRAFineTuneSpec.model_validate(spec(**{"lora.alpha": 8}))
    assert s.lora.effective_alpha == 8


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"quantization": {"bits": 4}}, "quantization is only allowed"),
        ({"training.epochs": 1}, "exactly one of epochs or maxSteps"),
        ({"training.maxSteps": None}, "exactly one of epochs or maxSteps"),
        ({"baseModel.s3": "s3://models/x"}, "exactly one of huggingFace, s3 or pvc"),
        ({"baseModel.huggingFace": None}, "exactly one of huggingFace, s3 or pvc"),
        ({"baseModel": {"s3": "s3://models/x", "revision": "main"}}, "revision is only allowed"),
        (
            {"baseModel": {"s3": "s3://models/x", "tokenSecretRef": {"name": "hf"}}},
            "tokenSecretRef is only allowed",
        ),
        ({"dataset.huggingFace": "tatsu-lab/alpaca"}, "exactly one of s3, pvc or huggingFace"),
        ({"dataset.eval": {"split": "test"}}, "exactly one of s3, pvc or huggingFace"),
        ({"resources": {"gpus": 0, "gpuType": "H100"}}, "gpuType needs gpus"),
        ({"resources": {"cpu": "lots"}}, "should match pattern"),
        ({"lora.r": 0}, "greater than or equal to 1"),
        ({"lora.r": 2048}, "less than or equal to 1024"),
        ({"lora.alpha": 0}, "greater than or equal to 1"),
        ({"lora.dropout": 1.0}, "less than 1"),
        ({"lora.targetModules": []}, "at least 1 item"),
        ({"training.learningRate": 0}, "greater than 0"),
        ({"dataset.evalFraction": 0.9}, "less than or equal to 0.5"),
        ({"dataset.format": "sharegpt"}, "Input should be"),
        ({"method": "full"}, "Input should be 'lora' or 'qlora'"),
        ({"output.s3": "https://bucket/x"}, "should match pattern"),
        ({"lora.rank": 8}, "Extra inputs are not permitted"),
        ({"bogus": True}, "Extra inputs are not permitted"),
        ({"output": None}, "Field required"),
    ],
)
def test_invalid_specs(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        LoRAFineTuneSpec.model_validate(spec(**changes))


def test_serving_spec_unique_adapters() -> None:
    base = {"baseModel": {"huggingFace": "a/b"}}
    ok = LoRAServingSpec.model_validate(
        {**base, "adapters": [{"name": "x", "uri": "s3://bkt/a/run-1/"}]}
    )
    assert ok.engine == "vllm" and ok.port == 8000 and ok.replicas == 1
    with pytest.raises(ValidationError, match="unique"):
        LoRAServingSpec.model_validate(
            {
                **base,
                "adapters": [
                    {"name": "x", "uri": "s3://bkt/a/"},
                    {"name": "x", "uri": "s3://bkt/b/"},
                ],
            }
        )


def test_spec_is_frozen() -> None:
    s = LoRAFineTuneSpec.model_validate(MINIMAL)
    with pytest.raises(ValidationError):
        setattr(s, "method", "qlora")  # noqa: B010 - mypy cannot see frozen


def test_status_ignores_unknown_and_parses_times() -> None:
    st = LoRAFineTuneStatus.model_validate(
        {
            "phase": "Running",
            "somethingNew": 1,
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "JobRunning",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
            "progress": {
                "step": 3,
                "totalSteps": 30,
                "peakGpuMemoryGiB": 7.5,
                "result": {"adapterUri": "s3://a/b/run-1/adapter/", "evalLossBase": 2.0},
            },
        }
    )
    assert st.progress is not None and st.progress.peak_gpu_memory_gi_b == 7.5
    assert st.progress.result is not None and st.progress.result.eval_loss_base == 2.0
    assert st.conditions[0].last_transition_time is not None
    assert st.to_dict()["conditions"][0]["lastTransitionTime"].startswith("2025-01-01T00:00:00")


def test_trainer_config_roundtrip_and_layout() -> None:
    obj = {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": "ft", "namespace": "ns", "uid": "u-1", "generation": 2},
        "spec": spec(**{"output.s3": "s3://artifacts/team/ft/"}),
    }
    cfg = TrainerConfig.for_resource(obj, run=3)
    layout = cfg.layout()
    assert layout.root == "s3://artifacts/team/ft/run-3"
    assert layout.adapter_uri == "s3://artifacts/team/ft/run-3/adapter/"
    assert layout.manifest_uri == "s3://artifacts/team/ft/run-3/manifest.json"
    assert layout.eval_report_uri == "s3://artifacts/team/ft/run-3/eval/report.json"
    assert layout.checkpoint_uri(40) == "s3://artifacts/team/ft/run-3/checkpoints/step-40/"
    # serving and startFrom name a run by its prefix or its adapter/ folder
    assert RunLayout.of_adapter(layout.adapter_uri) == layout == RunLayout.of_adapter(layout.root)
    assert TrainerConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValidationError):
        setattr(cfg, "run", 4)  # noqa: B010 - mypy cannot see frozen


def test_exit_codes() -> None:
    assert ExitCode.CONFIG_INVALID == 64 and ExitCode.CONFIG_INVALID.reason == "ConfigInvalid"
    assert ExitCode(65).reason == "DatasetInvalid" and ExitCode(66).reason == "ModelInvalid"
    assert ExitCode.PREEMPTED == 75 and reason_for(75) == "Preempted"
    assert reason_for(137) == "InfrastructureFailure"
    assert FAIL_FAST_CODES == (64, 65, 66, 77)
    assert reason_for(77) == "StorageAccessDenied" and ExitCode(77).fail_fast
    assert reason_for(69) == "StorageUnavailable" and not ExitCode(69).fail_fast
    assert RETRIED_FREE_CODES == (69, 75)


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_parse(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        if doc["kind"] == "LoRAFineTune":
            LoRAFineTune.model_validate(doc)
        elif doc["kind"] == "LoRAServing":
            LoRAServing.model_validate(doc)


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "quickstart.yaml",
        "mistral-7b-qlora.yaml",
        "llama3-8b-lora-bf16.yaml",
        "qwen2-7b-chat-s3.yaml",
        "with-serving.yaml",
    } <= names
