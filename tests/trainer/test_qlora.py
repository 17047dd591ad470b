"""QLoRA on CPU: bitsandbytes 4-bit NF4 base, LoRA on top, a few steps, then a merged
export that reloads the base in bf16 (never merging into the 4-bit weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraf_trainer import cli

from .conftest import make_spec, write_manifest


def test_qlora_4bit_cpu_trains_and_merges_in_bf16(tmp_path: Path, pvc_root: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    spec = make_spec(
        method="qlora",
        quantization={"bits": 4, "quantType": "nf4", "doubleQuant": True},
        training={
            "maxSteps": 4,
            "perDeviceBatchSize": 2,
            "maxSeqLength": 128,
            "evalPrompts": 0,  # 4-bit generation on a CPU is slow; eval loss still runs
            "optimizer": "adamw_torch",
        },
        dataset={"maxRows": 40},
        output={"s3": "s3://unused/q", "mergedWeights": True},
    )
    rc = cli.main(
        [
            "run",
            str(write_manifest(tmp_path / "q.yaml", "qlora", spec)),
            "--output",
            str(tmp_path / "out"),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    run_dir = tmp_path / "out" / "run-1"
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["hyperparameters"]["quantization"]["bits"] == 4
    m = man["metrics"]
    assert m["steps"] == 4 and m["evalLossAdapter"] is not None
    # Logical parameter count (4-bit weights are packed two per byte): ~135M.
    assert 120e6 < m["totalParams"] < 150e6
    cfg = json.loads((run_dir / "merged" / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    adapter_cfg = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8
