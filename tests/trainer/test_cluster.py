"""`loraf train --config` against the real apiserver and the real S3 server: base model
and dataset read from S3, status.progress patched at the configured rate, artifacts
uploaded with the manifest last and verifying."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraf_operator.api.models import Progress
from loraf_operator.api.trainer_config import TrainerConfig
from loraf_trainer.artifacts import verify_manifest
from loraf_trainer.storage import S3Store, S3Uri

from .conftest import GGUF, make_spec

pytestmark = pytest.mark.cluster
INTERVAL = 2


def watch_progress(
    kubeconfig: str,
    namespace: str,
    name: str,
    stop: threading.Event,
    events: list[tuple[float, dict[str, Any]]],
) -> None:
    from kubernetes import client, config, watch

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    last_rv = None
    while not stop.is_set():
        w = watch.Watch()
        for ev in w.stream(
            api.list_namespaced_custom_object,
            "loraf.dev",
            "v1alpha1",
            namespace,
            "lorafinetunes",
            field_selector=f"metadata.name={name}",
            timeout_seconds=2,
        ):
            obj = ev["object"]
            rv = obj["metadata"]["resourceVersion"]
            progress = obj.get("status", {}).get("progress")
            if progress and rv != last_rv:
                events.append((time.monotonic(), progress))
                last_rv = rv
            if stop.is_set():
                w.stop()
                break


def test_train_reports_status_and_uploads_to_s3(
    cluster: Any,
    crds: list[str],
    namespace: str,
    s3: Any,
    s3_bucket: str,
    smollm2_dir: Path,
    quickstart_rows: Path,
    tmp_path: Path,
) -> None:
    s3.upload_file(str(smollm2_dir / GGUF), s3_bucket, f"models/smollm2/{GGUF}")
    s3.upload_file(str(quickstart_rows), s3_bucket, "data/train.jsonl")
    spec = make_spec(
        baseModel={"s3": f"s3://{s3_bucket}/models/smollm2/", "ggufFile": GGUF, "pvc": None},
        dataset={"s3": f"s3://{s3_bucket}/data/train.jsonl", "pvc": None},
        training={"maxSteps": 8, "statusIntervalSeconds": INTERVAL, "evalPrompts": 1},
        output={"s3": f"s3://{s3_bucket}/artifacts/ft"},
    )
    spec = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
        for k, v in spec.items()
    }
    obj = {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": "ft", "namespace": namespace},
        "spec": spec,
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
    live = cluster.get_json("lorafinetune", "ft", "-n", namespace)
    cfg = TrainerConfig.for_resource(live, run=1)
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())

    events: list[tuple[float, dict[str, Any]]] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_progress, daemon=True, args=(cluster.kubeconfig, namespace, "ft", stop, events)
    )
    watcher.start()
    env = {
        **cluster.env,
        "LORAF_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "LORAF_CACHE": str(tmp_path / "cache"),
    }
    env.pop("LORAF_NO_STATUS", None)
    t0 = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraf_trainer",
            "train",
            "--config",
            str(tmp_path / "config.yaml"),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.monotonic() - t0
    time.sleep(1.5)
    stop.set()
    watcher.join(timeout=10)
    assert res.returncode == 0, res.stderr[-4000:]

    final = cluster.get_json("lorafinetune", "ft", "-n", namespace)
    progress = final["status"]["progress"]
    assert progress["stage"] == "Done" and progress["runNumber"] == 1
    assert progress["step"] == progress["totalSteps"] == 8 and progress["percent"] == 100
    # The trainer writes only status.progress (an operator on a shared cluster may add
    # its own fields beside it): every key it wrote is a declared Progress field.
    allowed = {f.alias or name for name, f in Progress.model_fields.items()}
    assert set(progress) <= allowed, set(progress) - allowed
    result = progress["result"]
    run_uri = f"s3://{s3_bucket}/artifacts/ft/run-1"
    assert result["adapterUri"] == f"{run_uri}/adapter/"
    assert result["manifestUri"] == f"{run_uri}/manifest.json"
    assert result["evalLossAdapter"] < result["evalLossBase"]
    assert len(result["sha256"]) == 64 and result["sizeBytes"] > 0

    store = S3Store(s3, S3Uri.parse(run_uri))
    assert verify_manifest(store) == []
    keys = store.list_keys("")
    assert "adapter/adapter_model.safetensors" in keys and "eval/report.md" in keys

    # Rate: during training at most one patch per interval, plus the forced ones
    # (train begin, epoch ends, train end, stage changes).
    stages = [p.get("stage") for _, p in events]
    assert "Training" in stages and stages[-1] == "Done"
    # Evaluation and upload are stages of their own, in order, and never flip back to
    # Training (Trainer.evaluate logs through the training callbacks) (issue 16 item 6).
    order = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert order[-4:] == ["Training", "Evaluating", "Uploading", "Done"], order
    # At the last step the ETA is what evaluation and upload will take, not 0s.
    ended = [p for _, p in events if p.get("stage") == "Training" and p.get("percent") == 100]
    assert ended and ended[-1]["etaSeconds"] > 0, ended[-1:]
    assert progress["etaSeconds"] == 0
    # The trainer's writes are its own in managedFields.
    managers = {
        m["manager"]
        for m in cluster.get_json("lorafinetune", "ft", "-n", namespace, "--show-managed-fields")[
            "metadata"
        ]["managedFields"]
        if m.get("subresource") == "status"
    }
    assert "loraf-trainer" in managers and "OpenAPI-Generator" not in managers, managers
    train_times = [t for t, p in events if p.get("stage") == "Training"]
    steps_seen = sorted({p["step"] for _, p in events if p.get("stage") == "Training"})
    assert len(steps_seen) >= 2, steps_seen  # progress arrived while training
    span = train_times[-1] - train_times[0]
    # 8 steps x 2 rows stay inside the first epoch: forced = train begin + train end.
    assert len(train_times) <= span / INTERVAL + 4, (len(train_times), span)
    print(
        f"\n{len(events)} status patches observed in {elapsed:.1f}s "
        f"({len(train_times)} during {span:.1f}s of training, interval {INTERVAL}s)"
    )
    assert (
        json.loads(store.get_bytes("manifest.json") or b"{}")["resource"]["uid"]
        == live["metadata"]["uid"]
    )
    assert os.path.isdir(tmp_path / "cache" / "models" / "s3")
