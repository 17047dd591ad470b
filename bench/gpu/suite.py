"""Run a named suite of configurations, one subprocess each, into one JSON file.

    python -m bench.gpu.suite smoke  --models /dev/shm/models --out $OUT
    python -m bench.gpu.suite qlora  ...   (goals 1, 2 + loss parity)
    python -m bench.gpu.suite lora   ...   (goal 3, planner budgets, ablation)

Ratios are to the TRL+Liger run (`baseline: true`) of the same group.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu import fair

Q = {"method": "qlora"}
FUSED = "adamw_torch_fused"
L = {"method": "lora"}


def trl(liger: bool, **kw: Any) -> dict[str, Any]:
    return {"runner": "trl", "liger": liger, "baseline": liger} | kw


def unsloth(**kw: Any) -> dict[str, Any]:
    """Unsloth's recipe in its own folder of pins (bench/gpu/unsloth-wheels.sh)."""
    return {"runner": "unsloth", "site": "/tmp/site-uns"} | kw


def project(**kw: Any) -> dict[str, Any]:
    """The trainer with the spec's defaults (planner on the GPU's free memory, Liger,
    compile, OOM recovery) unless a switch says otherwise (runners.make_spec)."""
    return {"runner": "project"} | kw


def suites(steps: int) -> dict[str, list[dict[str, Any]]]:
    g1 = {"group": "qlora-1024x4", "seq": 1024, "micro": 4, "ga": 1, **Q}
    g2 = {"group": "qlora-2048x2", "seq": 2048, "micro": 2, "ga": 1, **Q}
    g3 = {"group": "lora-4096x2", "seq": 4096, "micro": 2, "ga": 1, **L}
    s = steps
    # memory mode as a user sets it (≤ 7 GiB): planner off, every layer checkpointed
    mem_mode = {
        "id": "a",
        **project(planner=False, cpu_embed=True, lora_dropout=0.0),
        **g2,
        "steps": 12,
        "budget_gib": 7,
    }
    return {
        # Where the time goes (profiles) and torch.compile of the decoder layers. Produced
        # before the trainer had the techniques: `budget_gib` rows then ran the planner in
        # the suite and the techniques in the runner (bench/README.md).
        "explore": [
            {"id": "b", **trl(True), **g1, "steps": 16},
            {"id": "a-plan24", **project(budget_gib=24, compile=False), **g1, "steps": 16},
            {"id": "a-plan24-compile", **project(budget_gib=24), **g1, "steps": 16},
            {"id": "a-plan80", **project(budget_gib=80, compile=False), **g3, "steps": 10},
            {"id": "a-plan80-compile", **project(budget_gib=80), **g3, "steps": 10},
            {
                "id": "a-plan80-nodrop",
                **project(budget_gib=80, compile=False, lora_dropout=0.0),
                **g3,
                "steps": 10,
            },
            {
                "id": "a-plan80-compile-nodrop",
                **project(budget_gib=80, lora_dropout=0.0),
                **g3,
                "steps": 10,
            },
        ],
        # Goals 1, 2 and 4 at 16/24 GiB, loss parity over `steps`, ablation.
        "qlora": [
            {"id": "b", **trl(True), **g1, "steps": s},
            {"id": "a-24", **project(budget_gib=24), **g1, "steps": s},
            {"id": "b", **trl(True), **g2, "steps": 12},
            {"id": "a-mem", **project(budget_gib=7, cpu_embed=True), **g2, "steps": 12},
            {"id": "a-plain", **project(plain=True), **g1, "steps": 12},
            {"id": "a-16", **project(budget_gib=16), **g1, "steps": 12},
            {
                "id": "a-24-nolayers",
                **project(budget_gib=24, liger_layers=False),
                **g1,
                "steps": 12,
            },
        ],
        # After "qlora": compile without Liger's layer kernels is the default now.
        "final": [
            {"id": "b", **trl(True), **g1, "steps": s},
            {"id": "a-24", **project(budget_gib=24), **g1, "steps": s},
            {"id": "b", **trl(True), **g2, "steps": 12},
            # memory mode as a user sets it: planner off, every layer checkpointed
            {"id": "a-mem", **project(planner=False, cpu_embed=True), **g2, "steps": 12},
            {"id": "b", **trl(True), **g3, "steps": 10},
            {"id": "a-default", **project(), **g3, "steps": 10},
            # 8 rows of 4096 tokens without checkpointing need ~4× the GPU: recovery
            # must split twice and go on
            {"id": "a-oom", **project(planner=False, gc="none"), **g3, "micro": 8, "steps": 3},
            {"id": "a-nocast", **project(no_cast=True), **g3, "steps": 10},
        ],
        # Issue 17: every ratio against the strongest TRL+Liger configuration that fits the
        # same budget (checkpointing off where it fits: measured 23.4 GiB for QLoRA 1024×4,
        # 60.5 GiB for LoRA 4096×2), the same dropout (0, the spec's default) for both;
        # interleaved over `--rounds` (fair_summary reads the rounds).
        # fair2/fair2-lora: after the profile, both sides with torch's fused AdamW (the
        # trainer's default on a GPU where it fits; TRL's fastest optimizer in 24 GiB)
        "fair2": [
            {
                "id": "b",
                **trl(True, gc="none", lora_dropout=0.0, optim="adamw_torch_fused"),
                **g1,
                "steps": 50,
                "budget_gib": 24,
                "goal_ratio": 1.5,
            },
            {"id": "a", **project(budget_gib=24, lora_dropout=0.0), **g1, "steps": 50},
        ],
        "fair2-lora": [
            {
                "id": "b",
                **trl(True, gc="none", lora_dropout=0.0, optim="adamw_torch_fused"),
                **g3,
                "steps": 12,
            },
            {"id": "a", **project(lora_dropout=0.0), **g3, "steps": 12, "goal_tokens_per_s": 16000},
        ],
        # Issue 17, third session: Unsloth (the anchor users cite) next to the strongest TRL
        # in 24 GiB, and two candidates for the trainer: peft's input cast to the fp32
        # adapters off (under bf16 autocast the adapter GEMMs run in bf16 either way) and
        # CUDA graphs over the compiled layers (the QLoRA step is launch-bound)
        "x17": [
            {"id": "u", **unsloth(gc="none", lora_dropout=0.0, optim=FUSED), **g1, "steps": 12},
            {"id": "b", **trl(True, gc="none", lora_dropout=0.0, optim=FUSED), **g1, "steps": 12},
            {"id": "a", **project(budget_gib=24, lora_dropout=0.0), **g1, "steps": 12},
            {
                "id": "a-nocast",
                **project(budget_gib=24, lora_dropout=0.0, no_cast=True),
                **g1,
                "steps": 12,
            },
            {"id": "u-gc", **unsloth(lora_dropout=0.0, optim=FUSED), **g1, "steps": 12},
            {"id": "a", **project(lora_dropout=0.0), **g3, "steps": 12},
            {"id": "a-nocast", **project(lora_dropout=0.0, no_cast=True), **g3, "steps": 12},
            {
                "id": "a-cg",
                **project(budget_gib=24, lora_dropout=0.0, compile_mode="reduce-overhead"),
                **g1,
                "steps": 12,
            },
        ],
        # LoRA bf16: Unsloth next to the trainer and the strongest TRL (one round: the
        # device time left after fair3/fair3-mem)
        "x17-lora": [
            {"id": "b", **trl(True, gc="none", lora_dropout=0.0, optim=FUSED), **g3, "steps": 12},
            {"id": "a", **project(lora_dropout=0.0), **g3, "steps": 12},
            {"id": "u", **unsloth(gc="none", lora_dropout=0.0, optim=FUSED), **g3, "steps": 12},
        ],
        # fair3: after the x17 exploration, the trainer with its new default
        # (keep-input-dtype), the strongest TRL and Unsloth in the same call
        "fair3": [
            {
                "id": "b",
                **trl(True, gc="none", lora_dropout=0.0, optim=FUSED),
                **g1,
                "steps": 50,
                "budget_gib": 24,
                "goal_ratio": 1.5,
            },
            {"id": "a", **project(budget_gib=24, lora_dropout=0.0), **g1, "steps": 50},
            {"id": "u", **unsloth(gc="none", lora_dropout=0.0, optim=FUSED), **g1, "steps": 50},
        ],
        # memory mode against the fastest TRL that fits 10 GiB (checkpointed, fused AdamW:
        # +0.25 GiB of state, 7.9 GiB) and Unsloth's offloaded checkpointing
        "fair3-mem": [
            {
                "id": "b",
                **trl(True, lora_dropout=0.0, optim=FUSED),
                **g2,
                "steps": 12,
                "budget_gib": 10,
                "goal_ratio": 1.2,
            },
            mem_mode,
            {"id": "u-gc", **unsloth(lora_dropout=0.0, optim=FUSED), **g2, "steps": 12},
        ],
        "fair": [
            {
                "id": "b",
                **trl(True, gc="none", lora_dropout=0.0),
                **g1,
                "steps": 50,
                "budget_gib": 24,
                "goal_ratio": 1.5,
            },
            {"id": "a", **project(budget_gib=24, lora_dropout=0.0), **g1, "steps": 50},
        ],
        "fair-mem": [
            # memory mode (≤ 7 GiB) against the fastest TRL that fits 10 GiB: checkpointed
            {
                "id": "b",
                **trl(True, lora_dropout=0.0),
                **g2,
                "steps": 12,
                "budget_gib": 10,
                "goal_ratio": 1.2,
            },
            mem_mode,
        ],
        "fair-lora": [
            {"id": "b", **trl(True, gc="none", lora_dropout=0.0), **g3, "steps": 12},
            {"id": "a", **project(lora_dropout=0.0), **g3, "steps": 12, "goal_tokens_per_s": 16000},
        ],
        # Issue 20: QLoRA DPO through the trainer's path vs TRL's documented DPO recipe
        # (reference = base, adapters disabled), both without checkpointing (fits an H200)
        "dpo": [
            {
                "id": "b",
                **trl(False, gc="none", baseline=True),
                **g1,
                "objective": "dpo",
                "steps": 10,
            },
            {"id": "a", **project(), **g1, "objective": "dpo", "steps": 10},
        ],
        # Issue 17: where the time goes now (both fair-suite configurations, profiled over
        # two steps), and the optimizer's share: bitsandbytes' 8-bit AdamW updates each of
        # the 448 LoRA tensors with its own launches; torch's fused AdamW is one kernel
        "profile": [
            {
                "id": "b",
                **trl(True, gc="none", lora_dropout=0.0),
                **g1,
                "steps": 10,
                "profile": "{out}/profile_trl_qlora.txt",
            },
            {
                "id": "a",
                **project(budget_gib=24, lora_dropout=0.0),
                **g1,
                "steps": 10,
                "profile": "{out}/profile_project_qlora.txt",
            },
            {
                "id": "b-fused",
                **trl(True, gc="none", lora_dropout=0.0, baseline=False),
                **g1,
                "steps": 12,
                "optim": "adamw_torch_fused",
            },
            {
                "id": "a-fused",
                **project(budget_gib=24, lora_dropout=0.0),
                **g1,
                "steps": 12,
                "optim": "adamw_torch_fused",
            },
        ],
        # Goal 3, goal 4 at 80 GiB (the GPU's free memory), ablation, a real CUDA OOM.
        "lora": [
            {"id": "b", **trl(True), **g3, "steps": 10},
            {"id": "a-default", **project(), **g3, "steps": 10},
            {"id": "a-nocast", **project(no_cast=True), **g3, "steps": 10},
            {"id": "a-nolayers", **project(liger_layers=False), **g3, "steps": 10},
            {"id": "b", **trl(True), **g1, "steps": 12},
            {"id": "a-default", **project(), **g1, "steps": 12},
            # 8 rows of 4096 tokens without checkpointing need ~4× the GPU: recovery
            # must split twice and go on
            {"id": "a-oom", **project(planner=False, gc="none"), **g3, "micro": 8, "steps": 3},
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("suite")
    ap.add_argument("--models", default="/dev/shm/models")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", default="", help="comma-separated group:id filters")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the suite, A B / B A interleaved")
    ap.add_argument(
        "--long-steps-rounds",
        type=int,
        default=1,
        help="rounds that keep the configured step count (loss parity); later ones run 12",
    )
    a = ap.parse_args()

    from bench.gpu import shapes

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(a.models) / a.shape
    t0 = time.perf_counter()
    shapes.make_checkpoint(a.shape, model_dir)
    made_s = round(time.perf_counter() - t0, 1)
    print(f"checkpoint {model_dir} ready in {made_s}s", flush=True)

    only = {x for x in a.only.split(",") if x}
    results: list[dict[str, Any]] = []
    for i, cfg in enumerate(fair.interleave(suites(a.steps)[a.suite], a.rounds)):
        if only and f"{cfg['group']}:{cfg['id']}" not in only:
            continue
        if cfg["round"] >= a.long_steps_rounds:
            cfg = cfg | {"steps": min(cfg["steps"], 12)}
        cfg = cfg | {"shape": a.shape, "model_dir": str(model_dir)}
        if "profile" in cfg:
            cfg["profile"] = cfg["profile"].format(out=a.out)
        if "save_adapter" in cfg:
            cfg["save_adapter"] = cfg["save_adapter"].format(models=a.models)
        res_file = out / f"run-{a.suite}-{i}.json"
        print(f"== {cfg['group']} {cfg['id']}: {json.dumps(cfg)}", flush=True)
        cmd = [sys.executable, "-m", "bench.gpu.run_one", json.dumps(cfg), str(res_file)]
        res = run_config(cmd, cfg, res_file, a.timeout)
        results.append(res)
        _write(out / f"gpu_{a.suite}_{a.shape}.json", a, made_s, results)
    return 0


def run_config(cmd: list[str], cfg: dict[str, Any], res_file: Path, timeout: int) -> dict[str, Any]:
    """One configuration in its own process (Liger patches classes globally): its result
    file, or a failed result saying why, with the wall time it took."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if cfg.get("site"):  # a runner with its own pins (Unsloth's trl/datasets) goes first
        env["PYTHONPATH"] = os.pathsep.join([cfg["site"], env.get("PYTHONPATH", "")])
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)  # the project runner sets the trainer's
    t = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, timeout=timeout, check=False)
        res: dict[str, Any] = json.loads(res_file.read_text())
        res_file.unlink()
    except (subprocess.TimeoutExpired, FileNotFoundError, json.JSONDecodeError) as e:
        res = {"config": cfg, "ok": False, "error": f"{type(e).__name__}: {e}"}
    res["wall_s"] = round(time.perf_counter() - t, 1)
    return res


def _write(path: Path, a: Any, made_s: float, results: list[dict[str, Any]]) -> None:
    base = {
        (r["config"]["group"], r["config"]["round"]): r
        for r in results
        if r.get("ok") and r["config"].get("baseline")
    }
    for r in results:
        b = base.get((r["config"]["group"], r["config"]["round"]))
        if r.get("ok") and b:
            r["speedup_vs_trl_liger"] = round(r["tokens_per_s"] / b["tokens_per_s"], 3)
            n = min(len(r["losses"]), len(b["losses"]))
            if n and r is not b and r["config"]["steps"] == b["config"]["steps"]:
                rel = [
                    abs(x - y) / abs(y)
                    for x, y in zip(r["losses"][:n], b["losses"][:n], strict=True)
                ]
                r["loss_parity"] = {
                    "steps": n,
                    "max_rel_diff": round(max(rel), 5),
                    "mean_rel_diff": round(sum(rel) / n, 5),
                }
    doc = {
        "suite": a.suite,
        "shape": a.shape,
        "checkpoint_create_s": made_s,
        "command": " ".join(sys.argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": fair.summary(results),
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=1))
    for r in results:
        c = r["config"]
        if r.get("ok"):
            print(
                f"{c['group']:14s} {c['id']:12s} {r['tokens_per_s']:9.1f} tok/s "
                f"x{r.get('speedup_vs_trl_liger', float('nan')):.3f} "
                f"alloc {r.get('peak_allocated_gib')} res {r.get('peak_reserved_gib')} GiB "
                f"mfu {r['lora_mfu_vs_989']:.3f} loss {r['losses'][:1]}..{r['losses'][-1:]}",
                flush=True,
            )
        else:
            print(f"{c['group']:14s} {c['id']:12s} FAILED {r.get('error')}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
