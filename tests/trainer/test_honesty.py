"""The trainer against a plain peft loop with the same hyper-parameters (issue 19).

Both train SmolLM2-135M-Instruct with LoRA r=8 (alpha 16, dropout 0, q_proj/v_proj) for
STEPS optimizer steps of AdamW at a constant learning rate without warmup, on the same 8
alpaca rows (one full batch per step, so row order cannot matter), from the same seed,
and are evaluated on the same 4 held-out rows. The loop is written the way the peft docs
do it: chat template, loss on the answer tokens only, gradient clipping at 1.0 (the
Trainer's default), nothing else. The trainer runs through `loraf run`.

- the base eval losses agree to BASE_TOL: both see the same tokens and labels;
- the adapters' eval losses agree to ADAPTER_TOL (relative). The tolerance means
  something: one optimizer step of the loop moves its eval loss by more than twice it
  (checked below), so a change of the maths (a warmup from 0, dropout, another learning
  rate, loss normalization) fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraf_trainer import cli

from .conftest import GGUF, write_manifest

STEPS, LR, SEED, ROWS, EVAL_ROWS = 5, 2e-3, 42, 8, 4
BASE_TOL, ADAPTER_TOL = 1e-3, 0.005


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _batch(tok: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Right-padded ids and labels: -100 on the prompt (system + user turn) and padding."""
    import torch

    seqs, labels = [], []
    for r in rows:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")  # alpaca
        prompt = [{"role": "user", "content": user}]
        answer = [{"role": "assistant", "content": r["output"]}]
        p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(prompt + answer, tokenize=False)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        n = len(tok(p_ids, add_special_tokens=False)["input_ids"])
        seqs.append(ids)
        labels.append([-100] * n + ids[n:])
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    return {
        "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


def _plain_peft_loop(model_dir: Path, train: list[Any], evals: list[Any]) -> list[float]:
    """Eval loss before training and after each of STEPS steps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    set_seed(SEED)
    model = get_peft_model(
        base,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0
    )
    tb, eb = _batch(tok, train), _batch(tok, evals)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(**eb).loss)

    losses = [eval_loss()]
    for _ in range(STEPS):
        model.train()
        model(**tb).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(eval_loss())
    return losses


def test_trainer_matches_a_plain_peft_loop(
    tmp_path: Path, smollm2_dir: Path, quickstart_rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraf_trainer import model_loading

    rows = _rows(quickstart_rows)
    train, evals = rows[:ROWS], rows[ROWS : ROWS + EVAL_ROWS]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    spec = {
        "baseModel": {"path": str(smollm2_dir / GGUF)},
        "dataset": {"path": "train.jsonl", "format": "alpaca", "eval": {"path": "eval.jsonl"}},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
        "training": {
            "maxSteps": STEPS,
            "learningRate": LR,
            "scheduler": "constant",
            "warmupRatio": 0.0,
            "perDeviceBatchSize": ROWS,
            "optimizer": "adamw_torch",
            "maxSeqLength": 256,
            "seed": SEED,
            "evalPrompts": 0,
        },
    }
    manifest = write_manifest(tmp_path / "honesty.yaml", "honesty", spec)
    monkeypatch.setenv("LORAF_NO_STATUS", "1")
    monkeypatch.setenv("LORAF_TERMINATION_LOG", str(tmp_path / "termination-log"))
    rc = cli.main(
        ["run", str(manifest), "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w")]
    )
    assert rc == 0
    m = json.loads((tmp_path / "out" / "run-1" / "manifest.json").read_text())
    got_base, got = m["metrics"]["evalLossBase"], m["metrics"]["evalLossAdapter"]
    t = m["hyperparameters"]["training"]
    assert (t["learningRate"], t["scheduler"], t["warmupSteps"]) == (LR, "constant", 0)
    assert m["hyperparameters"]["plan"]["defaults"] == []  # nothing left to the rule

    model_dir = model_loading.materialize(
        model_loading.ResolvedModel(smollm2_dir, GGUF, "smollm2", None)
    )
    loop = _plain_peft_loop(model_dir, train, evals)
    print(
        f"\neval loss: loop {[round(x, 4) for x in loop]}; trainer base {got_base:.4f} → {got:.4f}"
    )
    assert got_base == pytest.approx(loop[0], rel=BASE_TOL)
    assert got == pytest.approx(loop[-1], rel=ADAPTER_TOL)
    # the tolerance is tighter than what one step changes
    assert abs(loop[-2] - loop[-1]) > 2 * ADAPTER_TOL * loop[-1]


def test_warmup_starts_above_zero() -> None:
    """The trainer's scheduler (FirstStepWarmup over transformers' own): with a warmup
    of 4 steps, the optimizer steps run at 1/4, 2/4, 3/4 and then the full rate."""
    import torch
    from transformers import get_scheduler

    from loraf_trainer.train import FirstStepWarmup

    class Library:  # what Trainer.create_scheduler does
        lr_scheduler = None

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            self.lr_scheduler = get_scheduler(
                "constant_with_warmup", optimizer, num_warmup_steps=4, num_training_steps=10
            )
            return self.lr_scheduler

    class Trainer(FirstStepWarmup, Library):
        pass

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = Trainer().create_scheduler(10, opt)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])  # the rate this optimizer step uses
        opt.step()
        sched.step()
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
