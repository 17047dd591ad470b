"""`loraf train` failure paths that stop before any model work: exit codes and the
termination message. No torch is imported on these paths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraf_operator.api.exitcodes import ExitCode
from loraf_operator.api.trainer_config import TrainerConfig
from loraf_trainer import cli
from loraf_trainer.train import sft_config_kwargs


def spec(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "baseModel": {
            "pvc": {"claimName": "models", "path": "smollm2"},
            "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        "dataset": {"pvc": {"claimName": "data", "path": "train.jsonl"}, "format": "alpaca"},
        "training": {"maxSteps": 10},
        "output": {"s3": "s3://bucket/prefix"},
    }
    for k, v in over.items():
        s[k] = {**s.get(k, {}), **v} if isinstance(v, dict) else v
    return s


def trainer_config(**over: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "namespace": "ns",
            "name": "ft",
            "uid": "u-1",
            "generation": 1,
            "run": 1,
            "spec": spec(**over),
        }
    )


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LORAF_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("LORAF_NO_STATUS", "1")
    monkeypatch.setenv("LORAF_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("LORAF_WORK_DIR", str(tmp_path / "work"))
    # The trainer checks it can write its output before reading any input: give it a
    # (moto) bucket, so these tests reach the dataset checks.
    moto = pytest.importorskip("moto", reason="moto is a dev dependency")
    import boto3

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit")
    with moto.mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bucket")
        yield tmp_path


def write_config(tmp: Path, **over: object) -> Path:
    cfg = {
        "namespace": "ns",
        "name": "ft",
        "uid": "u",
        "generation": 1,
        "run": 1,
        "spec": spec(**over),
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def termination(tmp: Path) -> str:
    return (tmp / "termination-log").read_text()


def test_bad_row_exits_65_naming_row_and_field(env: Path) -> None:
    data = env / "pvc" / "data"
    data.mkdir(parents=True)
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(30)]
    rows[16]["output"] = " "
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    rc = cli.main(["train", "--config", str(write_config(env))])
    assert rc == ExitCode.DATASET_INVALID == 65
    assert termination(env) == "row 17: field 'output' is missing/empty"


def test_missing_dataset_file_exits_65(env: Path) -> None:
    assert cli.main(["train", "--config", str(write_config(env))]) == 65
    assert "does not exist" in termination(env)


def test_multi_node_without_gpus_is_refused_with_64(env: Path) -> None:
    # The apiserver refuses it already (the same model rule, as CEL); a config written by
    # hand still fails with 64 and says why, before any rank is started.
    cfg = write_config(env, resources={"gpus": 0, "nodes": 2})
    assert cli.main(["train", "--config", str(cfg)]) == ExitCode.CONFIG_INVALID
    assert "nodes > 1 needs gpus >= 1" in termination(env)


def test_unreadable_or_invalid_config_exits_64(env: Path) -> None:
    assert cli.main(["train", "--config", str(env / "nope.yaml")]) == 64
    assert "cannot read config" in termination(env)
    bad = env / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "namespace": "ns",
                "name": "ft",
                "uid": "u",
                "generation": 1,
                "run": 1,
                "spec": spec(training={"epochs": 1}),
            }
        )
    )
    assert cli.main(["train", "--config", str(bad)]) == 64
    assert "config invalid" in termination(env)


def test_config_accepts_one_or_zero_gpus() -> None:
    assert trainer_config(resources={"gpus": 1}).spec.resources.gpus == 1
    assert trainer_config(resources={"gpus": 0}).spec.resources.gpus == 0


def test_sft_config_kwargs(tmp_path: Path) -> None:
    cfg = trainer_config(method="qlora", training={"maxSteps": 7, "checkpointSteps": 3})
    kw = sft_config_kwargs(
        cfg, tmp_path, "bfloat16", on_gpu=True, has_eval=False, interactive=False
    )
    assert kw["max_steps"] == 7 and "num_train_epochs" not in kw
    assert kw["optim"] == "paged_adamw_8bit" and kw["bf16"] and not kw["fp16"]
    assert kw["save_strategy"] == "steps" and kw["save_steps"] == 3
    assert kw["eval_strategy"] == "no" and kw["disable_tqdm"]
    assert kw["completion_only_loss"] is True and kw["max_length"] == 1024
    cpu = sft_config_kwargs(
        trainer_config(training={"epochs": 2, "maxSteps": None}),
        tmp_path,
        "float32",
        on_gpu=False,
        has_eval=True,
        interactive=True,
    )
    assert cpu["num_train_epochs"] == 2 and "max_steps" not in cpu
    assert cpu["optim"] == "adamw_torch" and cpu["use_cpu"] and not cpu["bf16"]
    assert cpu["save_strategy"] == "no"
    assert kw["neftune_noise_alpha"] is None  # NEFTune is off unless asked for
    neft = trainer_config(training={"maxSteps": 7, "neftuneNoiseAlpha": 5})
    assert (
        sft_config_kwargs(neft, tmp_path, "float32", False, False, False)["neftune_noise_alpha"]
        == 5
    )


def test_next_run_number_skips_completed_runs(tmp_path: Path) -> None:
    from loraf_trainer.storage import LocalStore

    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1" / "manifest.json").write_text("{}")
    (tmp_path / "run-2").mkdir()  # interrupted: no manifest, resumed
    assert cli.next_run_number(lambda n: LocalStore(tmp_path / f"run-{n}")) == 2


def test_local_paths_become_inputs_of_loraf_run(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "train.jsonl").write_text("{}\n")
    (tmp_path / "eval").mkdir()
    spec, local = cli.local_inputs(
        {
            "baseModel": {"path": "models/m.gguf"},
            "dataset": {"path": "train.jsonl", "format": "alpaca", "eval": {"path": "eval"}},
        },
        tmp_path,
    )
    assert spec["baseModel"] == {
        "ggufFile": "m.gguf",
        "pvc": {"claimName": "local", "path": "models"},
    }
    assert spec["dataset"]["pvc"]["claimName"] == "local" and "path" not in spec["dataset"]
    assert local.model == tmp_path / "models" and local.data == tmp_path / "train.jsonl"
    assert local.eval == tmp_path / "eval"
    with pytest.raises(cli.ConfigInvalid, match="does not exist"):
        cli.local_inputs({"baseModel": {"path": "nope"}}, tmp_path)


def test_loraf_run_reads_a_local_dataset_without_output_s3(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest with plain paths and no spec.output: the rows are read from the path
    (row 2 is bad, so the run stops with 65 before any model work)."""
    (env / "model").mkdir()
    (env / "train.jsonl").write_text(
        json.dumps({"instruction": "q", "output": "a"}) + "\n" + json.dumps({"instruction": "q"})
    )
    manifest = env / "ft.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "loraf.dev/v1alpha1",
                "kind": "LoRAFineTune",
                "metadata": {"name": "local"},
                "spec": {
                    "baseModel": {"path": "model"},
                    "dataset": {"path": "train.jsonl", "format": "alpaca"},
                    "training": {"epochs": 3},
                },
            }
        )
    )
    rc = cli.main(["run", str(manifest), "--output", str(env / "out")])
    assert rc == ExitCode.DATASET_INVALID
    assert termination(env) == "row 2: field 'output' is missing/empty"
