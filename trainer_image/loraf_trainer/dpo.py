"""Preference tuning (objective dpo): TRL's DPOTrainer over the same model, plan and
callbacks as SFT, and the held-out preference accuracy of the evaluation report.

The reference model is never a second copy of the weights: with `dpo.reference: base`
it is the frozen base (adapters disabled); with `startingAdapter` it is TRL's frozen
"ref" copy of the adapter the run started from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loraf_operator.api.models import LoRAFineTuneSpec

from .data import Example, prompt_for_generation

# SFTConfig arguments DPOConfig does not take.
SFT_ONLY = ("packing", "completion_only_loss", "dataset_text_field")


def config_kwargs(sft_kwargs: dict[str, Any], spec: LoRAFineTuneSpec) -> dict[str, Any]:
    """DPOConfig arguments: the SFT run's (schedule, batch, precision, checkpoints) plus
    DPO's own from spec.dpo (pure; unit-tested)."""
    d = spec.effective_dpo
    kw = {k: v for k, v in sft_kwargs.items() if k not in SFT_ONLY}
    return kw | {"beta": d.beta, "loss_type": [d.loss_type]}


def build_trainer(
    model: Any,
    kwargs: dict[str, Any],
    reference: str,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any,
    callbacks: list[Any],
    mixins: Sequence[type] = (),
) -> Any:
    from trl import DPOConfig, DPOTrainer

    cls: type = type("LorafDPOTrainer", (*mixins, DPOTrainer), {})
    trainer = cls(
        model=model,
        ref_model=None,
        args=DPOConfig(**kwargs),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # TRL copies a PeftModel's adapter into a frozen "ref" adapter as the reference; for
    # the base as reference, drop it: TRL then disables the adapters instead.
    peft_config = getattr(trainer.model, "peft_config", {})
    if reference == "base" and "ref" in peft_config:
        trainer.model.delete_adapter("ref")
    return trainer


def answer_logprob(model: Any, tokenizer: Any, prompt: str, answer: str) -> float:
    """Mean log-probability of `answer`'s tokens after `prompt` (per token: a sum would
    prefer whichever answer is shorter)."""
    import torch

    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        a = [*a, tokenizer.eos_token_id]
    ids = torch.tensor([p + a], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp.gather(1, ids[0, len(p) :].unsqueeze(1)).mean())


def preference_accuracy(
    model: Any, tokenizer: Any, examples: Sequence[Example], system_prompt: str | None
) -> float | None:
    """Fraction of rows whose chosen answer the model scores above the rejected one, by
    mean token log-probability (a score of the model alone, so the starting model and
    the adapter are measured the same way)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    try:
        wins = 0
        for ex in examples:
            prompt = prompt_for_generation(ex, tokenizer, system_prompt)
            chosen = answer_logprob(model, tokenizer, prompt, ex.target)
            rejected = answer_logprob(model, tokenizer, prompt, ex.rejected)
            wins += chosen > rejected
    finally:
        model.train(was_training)
    return round(wins / len(examples), 4)


def margin_history(log_history: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """[step, reward margin] of each training log line (the report's DPO curve)."""
    return [
        [e["step"], round(float(e["rewards/margins"]), 4)]
        for e in log_history
        if "rewards/margins" in e and "step" in e
    ]
