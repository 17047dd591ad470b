"""Issue 14 on one GPU: the FSDP path at world size 1 and a Llama-3-70B-shape QLoRA, each
through the trainer's own path (runners.build_project: train.prepare_model and
train.build_trainer, as train.run calls them), one subprocess per row:

    python3 -m bench.gpu.multi_gpu --models /dev/shm/models --out $OUT
    python3 -m bench.gpu.multi_gpu --only qlora-70b ...          # one row

- qlora-70b: r=16 all-linear on a random-init 70B-shape base built and quantized layer by
  layer (layerwise.py: no checkpoint on disk, host memory never holds the bf16 weights);
  the planner plans for 110 GiB. Peak VRAM, tokens/s and the planner's
  estimate (`plan.estimatedPeakGiB`, `planner_estimate`) side by side.
- fsdp1-*: `resources.strategy: fsdp` on Llama-3-8B's shape under torchrun with one rank
  (FSDP full shard through the Trainer, QLoRA with bnb_4bit_quant_storage).

`--shape-70b tiny --shape-fsdp tiny` runs the same rows at a few-MB shape (CPU: the smoke
test in tests/trainer/test_bench_multi_gpu.py). Writes gpu_multigpu_<70b shape>_<row ids>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu.suite import run_config


def rows(shape_70b: str, shape_fsdp: str, steps: int) -> list[dict[str, Any]]:
    # compile off: one run per row within the device's time limit (compile is measured in
    # the single-GPU suites); Liger, the planner and OOM recovery as the trainer defaults.
    base = {"runner": "project", "compile": False, "steps": steps, "group": "multigpu"}
    return [
        {
            "id": "qlora-70b",
            **base,
            "method": "qlora",
            "shape": shape_70b,
            "layerwise": True,
            # below the H200's 141 GiB: the planner is ~10 % under measured peaks (DESIGN.md)
            "budget_gib": 110,
            "seq": 1024,
            "micro": 4,
            "ga": 1,
        },
        {
            "id": "fsdp1-qlora-8b",
            **base,
            "method": "qlora",
            "shape": shape_fsdp,
            "strategy": "fsdp",
            "torchrun": True,
            "seq": 1024,
            "micro": 4,
            "ga": 1,
        },
        {
            "id": "fsdp1-lora-8b",
            **base,
            "method": "lora",
            "shape": shape_fsdp,
            "strategy": "fsdp",
            "torchrun": True,
            "seq": 2048,
            "micro": 2,
            "ga": 1,
        },
    ]


def command(cfg: dict[str, Any], res_file: Path) -> list[str]:
    run_one = ["-m", "bench.gpu.run_one", json.dumps(cfg), str(res_file)]
    if cfg.get("torchrun"):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=1", *run_one]  # fmt: skip
    return [sys.executable, *run_one]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="/dev/shm/models")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shape-70b", default="llama3-70b")
    ap.add_argument("--shape-fsdp", default="llama3-8b")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated row ids")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per row")
    ap.add_argument("--estimate-budget-gib", type=float, help="planner_estimate budget (CPU)")
    a = ap.parse_args(argv)

    from bench.gpu import shapes

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {x for x in a.only.split(",") if x}
    results: list[dict[str, Any]] = []
    todo = [r for r in rows(a.shape_70b, a.shape_fsdp, a.steps) if not only or r["id"] in only]
    path = out / f"gpu_multigpu_{a.shape_70b}_{'_'.join(r['id'] for r in todo)}.json"
    for i, cfg in enumerate(todo):
        model_dir = Path(a.models) / (cfg["shape"] + ("-config" if cfg.get("layerwise") else ""))
        t = time.perf_counter()
        if cfg.get("layerwise"):
            shapes.make_config_only(cfg["shape"], model_dir)
        else:
            shapes.make_checkpoint(cfg["shape"], model_dir)
        cfg = cfg | {"model_dir": str(model_dir)}
        if a.estimate_budget_gib:
            cfg["estimate_budget_gib"] = a.estimate_budget_gib
        res_file = out / f"run-multigpu-{i}.json"
        print(f"== {cfg['id']}: {json.dumps(cfg)}", flush=True)
        res = run_config(command(cfg, res_file), cfg, res_file, a.timeout)
        res["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(res)
        doc = {
            "suite": "multigpu",
            "command": " ".join(["python3", "-m", "bench.gpu.multi_gpu", *(argv or sys.argv[1:])]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": results,
        }
        path.write_text(json.dumps(doc, indent=1))
        keys = ("tokens_per_s", "peak_reserved_gib", "peak_allocated_gib", "error")
        summary = {k: res.get(k) for k in keys if k in res}
        est = (res.get("plan") or {}).get("estimatedPeakGiB")
        print(f"{cfg['id']}: ok={res.get('ok')} {summary} planner estimate {est}", flush=True)
    return 0 if results and all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
