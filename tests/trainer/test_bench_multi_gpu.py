"""The issue-14 GPU benchmark (bench/gpu/multi_gpu.py) at a few-MB shape on the CPU, so
its one GPU call does not fail on the harness: the layer-by-layer 4-bit builder trains
through the trainer's path, the torchrun row starts and reports, the JSON is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_multi_gpu_bench_rows_run_at_a_tiny_shape(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.gpu.multi_gpu", "--models", str(tmp_path / "m")]
    argv += ["--out", str(tmp_path), "--shape-70b", "tiny", "--shape-fsdp", "tiny"]
    argv += ["--steps", "3", "--estimate-budget-gib", "141", "--only", "qlora-70b,fsdp1-qlora-8b"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    doc = json.loads((tmp_path / "gpu_multigpu_tiny_qlora-70b_fsdp1-qlora-8b.json").read_text())
    assert doc["command"].startswith("python3 -m bench.gpu.multi_gpu")
    by_id = {r["config"]["id"]: r for r in doc["results"]}
    assert set(by_id) == {"qlora-70b", "fsdp1-qlora-8b"}
    for r in by_id.values():
        assert r["ok"] and r["tokens_per_s"] > 0 and len(r["losses"]) == 3, r
        assert r["planner_estimate"]["estimatedPeakGiB"] > 0
        assert r["trainable_params"] > 0
    assert by_id["qlora-70b"]["plan"]["strategy"] == "single"
    # On a CPU accelerate cannot shard: the plan says what ran, with the reason
    fsdp = by_id["fsdp1-qlora-8b"]["plan"]
    assert fsdp["strategy"] == "single" and any("GPUs only" in n for n in fsdp["notes"])
    assert by_id["fsdp1-qlora-8b"]["planner_estimate"]["strategy"] == "fsdp"
