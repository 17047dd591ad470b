"""Base vs adapter on the held-out rows: eval loss, perplexity and generations.

The base numbers come from the same PeftModel with its adapter disabled, so both sides
see identical weights, tokenization and batches; only the adapter differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .data import Example, prompt_for_generation


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
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Greedy answers of base and adapter for the first n held-out rows."""
    rows = []
    was_training = model.training
    model.eval()
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        for ex in list(examples)[:n]:
            prompt = prompt_for_generation(ex, tokenizer, system_prompt)
            adapted = generate(model, tokenizer, prompt, max_new_tokens)
            with model.disable_adapter():
                base = generate(model, tokenizer, prompt, max_new_tokens)
            rows.append(
                {
                    "row": ex.row,
                    "prompt": prompt,
                    "reference": ex.target or ex.text,
                    "base": base,
                    "adapter": adapted,
                }
            )
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return rows


def build_report(
    losses: Mapping[str, float | None], gens: list[dict[str, Any]], eval_rows: int
) -> dict[str, Any]:
    base, adapter = losses.get("evalLossBase"), losses.get("evalLossAdapter")
    return {
        "evalRows": eval_rows,
        "evalLossBase": base,
        "evalLossAdapter": adapter,
        "perplexityBase": perplexity(base),
        "perplexityAdapter": perplexity(adapter),
        "generations": gens,
    }


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")


def report_markdown(report: Mapping[str, Any], title: str) -> str:
    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    lines = [
        f"# Evaluation: {title}",
        "",
        f"Held-out rows: {report['evalRows']}",
        "",
        "| | base | adapter |",
        "|---|---|---|",
        f"| eval loss | {num(report['evalLossBase'])} | {num(report['evalLossAdapter'])} |",
        f"| perplexity | {num(report['perplexityBase'])} | {num(report['perplexityAdapter'])} |",
        "",
    ]
    if report["generations"]:
        lines += [
            "## Generations (greedy)",
            "",
            "| row | prompt | reference | base | adapter |",
            "|---|---|---|---|---|",
        ]
        for g in report["generations"]:
            lines.append(
                f"| {g['row']} | {_cell(g['prompt'])} | {_cell(g['reference'])} | "
                f"{_cell(g['base'])} | {_cell(g['adapter'])} |"
            )
    return "\n".join(lines) + "\n"
