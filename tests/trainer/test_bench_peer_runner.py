"""The GPU benchmark's peer runner (bench/gpu/runners.py build_trl, the denominator of
every speed ratio), at a tiny shape on the CPU: TRL's documented SFT recipe trains, and
its result carries what the suite's summary reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the peer runner needs trl (the trainer extra)")

ROOT = Path(__file__).resolve().parents[2]


def test_trl_runner_trains_at_a_tiny_shape(tmp_path: Path) -> None:
    from bench.gpu import shapes

    model_dir = shapes.make_checkpoint("tiny", tmp_path / "tiny")
    cfg = {"runner": "trl", "liger": False, "baseline": True, "group": "g", "id": "b"}
    cfg |= {"method": "lora", "seq": 64, "micro": 2, "ga": 1, "steps": 3, "gc": "none"}
    cfg |= {"shape": "tiny", "model_dir": str(model_dir), "round": 0}
    out = tmp_path / "r.json"
    argv = [sys.executable, "-m", "bench.gpu.run_one", json.dumps(cfg), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["tokens_per_s"] > 0 and len(res["losses"]) == 3
    assert 0 < res["trainable_params"] < res["total_params"]
    assert res["tokens_per_step"] == 2 * 64
