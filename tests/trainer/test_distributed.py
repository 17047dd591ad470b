"""More than one rank on the CPU (gloo): `loraf run --nproc-per-node 2` starts torchrun,
trains data parallel and writes the same adapter as one rank with the same effective batch
(2 rows per step: 1 row on each of 2 ranks vs 2 rows on 1 rank; the same rows, in the same
order, so only floating-point summation order differs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import make_spec, write_manifest

# Relative difference of the adapters (Frobenius norm of the difference over the norm of
# the single-rank adapter, over all LoRA tensors). Summation order alone gave 8.0e-06
# (measured); the tolerance leaves two orders of magnitude for other CPUs and libraries.
TOLERANCE = 1e-3
STEPS = 4


def _run(manifest: Path, out: Path, work: Path, pvc: Path, ranks: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "LORAF_NO_STATUS": "1",
        "LORAF_TERMINATION_LOG": str(work / "termination-log"),
        "OMP_NUM_THREADS": "1",
    }
    work.mkdir(parents=True)
    argv = [sys.executable, "-m", "loraf_trainer", "run", str(manifest), "--output", str(out)]
    argv += ["--pvc-root", str(pvc), "--work-dir", str(work), "--nproc-per-node", str(ranks)]
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    return {"log": log, "manifest": json.loads((out / "run-1" / "manifest.json").read_text())}


def _adapter(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out / "run-1" / "adapter" / "adapter_model.safetensors"))


def test_two_ranks_match_one_rank_with_the_same_effective_batch(
    tmp_path: Path, pvc_root: Path
) -> None:
    import torch

    common = {
        "lora": {"r": 8, "targetModules": ["q_proj", "v_proj"], "dropout": 0.0},
        "training": {"maxSteps": STEPS, "maxSeqLength": 64, "evalPrompts": 0, "loggingSteps": 1},
        "output": {"s3": "s3://unused/dist", "adapterDtype": "float32"},
    }
    one = make_spec(**common)
    one["training"] = {**one["training"], "perDeviceBatchSize": 2}
    two = make_spec(**common)
    two["training"] = {**two["training"], "perDeviceBatchSize": 1}
    single = _run(
        write_manifest(tmp_path / "one.yaml", "one", one), tmp_path / "o1", tmp_path / "w1",
        pvc_root, 1,
    )  # fmt: skip
    double = _run(
        write_manifest(tmp_path / "two.yaml", "two", two), tmp_path / "o2", tmp_path / "w2",
        pvc_root, 2,
    )  # fmt: skip
    assert "--nproc-per-node=2" in double["log"]  # torchrun started the ranks
    plan = double["manifest"]["hyperparameters"]["plan"]
    assert (plan["strategy"], plan["worldSize"]) == ("ddp", 2)
    assert single["manifest"]["hyperparameters"]["plan"]["worldSize"] == 1
    assert double["manifest"]["metrics"]["steps"] == STEPS
    a, b = _adapter(tmp_path / "o1"), _adapter(tmp_path / "o2")
    assert a.keys() == b.keys() and a
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    norm = sum(float(a[k].pow(2).sum()) for k in a) ** 0.5
    # lora_B starts at zero: a non-zero norm shows both runs trained
    moved = sum(float(a[k].abs().sum()) for k in a if "lora_B" in k)
    assert moved > 0
    print(f"adapter relative difference, 2 ranks vs 1: {diff / norm:.2e}")
    assert diff / norm < TOLERANCE, f"relative difference {diff / norm:.2e}"
    assert torch.isfinite(torch.tensor(diff))
