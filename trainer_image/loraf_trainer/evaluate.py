"""Base vs adapter on the held-out rows: eval loss, perplexity, generations and how well
each answer matches the reference.

The base numbers come from the same PeftModel with its adapter disabled, so both sides
see identical weights, tokenization and batches; only the adapter differs. Answer match
(pure, unit-tested): ROUGE-L F1 over lower-cased words, and key-token recall, the share
of the reference's key tokens (numbers, and words of 4+ letters outside a short stopword
list) that the answer contains.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from loraf_operator.api.run_layout import EVAL_DIR, EVAL_REPORT, EVAL_REPORT_MD, LOSS_SVG

from .data import Example, prompt_for_generation, user_text

_WORD = re.compile(r"[\w@.\-]+")
_STOP = frozenset(
    [
        "this",
        "that",
        "with",
        "from",
        "have",
        "your",
        "what",
        "when",
        "where",
        "which",
        "will",
        "would",
        "there",
        "their",
        "them",
        "then",
        "than",
        "they",
        "been",
        "into",
        "about",
        "also",
        "just",
        "only",
        "some",
        "such",
        "very",
        "more",
        "most",
        "other",
        "over",
        "here",
        "does",
        "should",
        "could",
    ]
)


def words(text: str) -> list[str]:
    return [w.strip(".-").lower() for w in _WORD.findall(text) if w.strip(".-")]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 of two texts over lower-cased words (longest common subsequence)."""
    a, r = words(answer), words(reference)
    if not a or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def key_tokens(reference: str) -> list[str]:
    out: list[str] = []
    for w in words(reference):
        key = any(ch.isdigit() for ch in w) or (len(w) >= 4 and w not in _STOP)
        if key and w not in out:
            out.append(w)
    return out


def key_token_recall(answer: str, reference: str) -> float | None:
    """Share of the reference's key tokens found among the answer's words (None: the
    reference has none)."""
    keys = key_tokens(reference)
    if not keys:
        return None
    have = set(words(answer))
    return sum(k in have for k in keys) / len(keys)


def perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))  # exp(50) is already meaningless; avoid overflow


def eval_losses(trainer: Any, has_eval: bool) -> dict[str, float | None]:
    if not has_eval:
        return {"evalLossBase": None, "evalLossAdapter": None}
    adapter = trainer.evaluate(metric_key_prefix="eval")["eval_loss"]
    with trainer.model.disable_adapter():
        base = trainer.evaluate(metric_key_prefix="eval_base")["eval_base_loss"]
    return {"evalLossBase": float(base), "evalLossAdapter": float(adapter)}


def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    import torch

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(
        tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    ).strip()


def generations(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    n: int,
    max_new_tokens: int = 64,
    on_answer: Callable[[int, int, float], None] | None = None,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Greedy answers of base and adapter for the first n held-out rows. `on_answer(done,
    of, seconds)` after each row: rows answered, rows in all, seconds since the first."""
    import time

    rows = []
    picked = list(examples)[:n]
    t0 = time.monotonic()
    was_training = model.training
    model.eval()
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        for ex in picked:
            prompt = prompt_for_generation(ex, tokenizer, system_prompt)
            adapted = generate(model, tokenizer, prompt, max_new_tokens)
            with model.disable_adapter():
                base = generate(model, tokenizer, prompt, max_new_tokens)
            reference = ex.target or ex.text
            rows.append(
                {
                    "row": ex.row,
                    "user": user_text(ex),
                    "prompt": prompt,
                    "reference": reference,
                    "base": base,
                    "adapter": adapted,
                    **match_scores(base, adapted, reference),
                }
            )
            if on_answer is not None:
                on_answer(len(rows), len(picked), time.monotonic() - t0)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return rows


def match_scores(base: str, adapter: str, reference: str) -> dict[str, float | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "rougeLBase": r(rouge_l(base, reference)),
        "rougeLAdapter": r(rouge_l(adapter, reference)),
        "keyRecallBase": r(key_token_recall(base, reference)),
        "keyRecallAdapter": r(key_token_recall(adapter, reference)),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(sum(xs) / len(xs), 4) if xs else None


def loss_history(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[list[float]]]:
    """[step, loss] pairs of the training and eval losses from the Trainer's log."""
    train = [[e["step"], e["loss"]] for e in log_history if "loss" in e and "step" in e]
    evals = [[e["step"], e["eval_loss"]] for e in log_history if "eval_loss" in e and "step" in e]
    return {"train": train, "eval": evals}


def build_report(
    losses: Mapping[str, float | None],
    gens: list[dict[str, Any]],
    eval_rows: int,
    history: Mapping[str, list[list[float]]] | None = None,
) -> dict[str, Any]:
    base, adapter = losses.get("evalLossBase"), losses.get("evalLossAdapter")
    match = {
        key: _mean([g.get(key) for g in gens])
        for key in ("rougeLBase", "rougeLAdapter", "keyRecallBase", "keyRecallAdapter")
    }
    return {
        "evalRows": eval_rows,
        "evalLossBase": base,
        "evalLossAdapter": adapter,
        "perplexityBase": perplexity(base),
        "perplexityAdapter": perplexity(adapter),
        "answerMatch": match,
        "generations": gens,
        "lossHistory": dict(history) if history else {"train": [], "eval": []},
    }


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")


def report_markdown(report: Mapping[str, Any], title: str) -> str:
    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    m = report.get("answerMatch") or {}
    lines = [
        f"# Evaluation: {title}",
        "",
        f"Held-out rows: {report['evalRows']}",
        "",
        "| | base | adapter |",
        "|---|---|---|",
        f"| eval loss | {num(report['evalLossBase'])} | {num(report['evalLossAdapter'])} |",
        f"| perplexity | {num(report['perplexityBase'])} | {num(report['perplexityAdapter'])} |",
    ]
    if report["generations"]:
        n = len(report["generations"])
        lines += [
            f"| answer match, ROUGE-L F1 (mean of {n}) | {num(m.get('rougeLBase'))} | "
            f"{num(m.get('rougeLAdapter'))} |",
            f"| answer match, key-token recall (mean of {n}) | {num(m.get('keyRecallBase'))} | "
            f"{num(m.get('keyRecallAdapter'))} |",
        ]
    lines.append("")
    if (report.get("lossHistory") or {}).get("train"):
        # report.md sits beside the plot (api.run_layout)
        lines += [f"![training and eval loss]({PurePosixPath(LOSS_SVG).name})", ""]
    if report["generations"]:
        lines += [
            "## Answers to held-out prompts (greedy)",
            "",
            "ROUGE-L of each answer against the reference in brackets.",
            "",
            "| row | prompt | reference | base | adapter |",
            "|---|---|---|---|---|",
        ]
        for g in report["generations"]:
            user = g.get("user") or g["prompt"]
            lines.append(
                f"| {g['row']} | {_cell(user)} | {_cell(g['reference'])} | "
                f"{_cell(g['base'])} ({num(g.get('rougeLBase'))}) | "
                f"{_cell(g['adapter'])} ({num(g.get('rougeLAdapter'))}) |"
            )
    return "\n".join(lines) + "\n"


def loss_svg(history: Mapping[str, Sequence[Sequence[float]]], width: int = 480) -> str | None:
    """A small SVG line plot of the training (blue) and eval (orange) loss by step; None
    without training losses. Hand-written: the trainer image has no plotting library."""
    train, evals = list(history.get("train") or []), list(history.get("eval") or [])
    if not train:
        return None
    pts = train + evals
    height, pad = 240, 40
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = 0.0, max(p[1] for p in pts) * 1.05 or 1.0
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / (y1 - y0)

    def xy(p: Sequence[float]) -> str:
        return f"{pad + (p[0] - x0) * sx:.1f},{height - pad - (p[1] - y0) * sy:.1f}"

    def line(series: list[Sequence[float]], colour: str) -> str:
        if not series:
            return ""
        dots = (
            "".join(
                f'<circle cx="{xy(p).split(",")[0]}" cy="{xy(p).split(",")[1]}" r="2.5" '
                f'fill="{colour}"/>'
                for p in series
            )
            if len(series) < 30
            else ""
        )
        return (
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
            f'points="{" ".join(xy(p) for p in series)}"/>{dots}'
        )

    ax = f"{pad},{pad} {pad},{height - pad} {width - pad},{height - pad}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<polyline fill="none" stroke="#444" points="{ax}"/>'
        f'<text x="{pad}" y="{pad - 8}">loss (0 to {y1:.2f})</text>'
        f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">step {x1:g}</text>'
        f'<text x="{pad}" y="{height - pad + 16}">{x0:g}</text>'
        f"{line(train, '#1f77b4')}{line(evals, '#ff7f0e')}"
        f'<text x="{width - pad}" y="{pad - 8}" text-anchor="end" fill="#1f77b4">train'
        f'<tspan fill="#ff7f0e"> eval</tspan></text></svg>\n'
    )


def write_report(run_dir: Path, report: Mapping[str, Any], title: str) -> None:
    """The report's files under a run folder: eval/report.json, eval/report.md and the
    loss plot (when there is a loss history)."""
    (run_dir / EVAL_DIR).mkdir(parents=True, exist_ok=True)
    (run_dir / EVAL_REPORT).write_text(json.dumps(report, indent=2))
    (run_dir / EVAL_REPORT_MD).write_text(report_markdown(report, title))
    svg = loss_svg(report["lossHistory"])
    if svg:
        (run_dir / LOSS_SVG).write_text(svg)
