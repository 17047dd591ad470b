"""Out-of-memory recovery inside the training step (spec.training.optimizations.oomRecovery).

A CUDA out-of-memory error in a forward or backward pass does not fail the run: the
gradients are put back as they were before that micro-batch, the micro-batch is split in
two halves run one after the other (twice the accumulation, same rows per optimizer step),
and training goes on at the same step. The split stays for the rest of the run, and doubles
again on the next error, down to one row per pass; then every decoder layer is
checkpointed (`escalate`); then the error is raised.

Splitting is exact when the loss is normalized by the step's token count
(`num_items_in_batch`, TRL's default for causal LMs): each half's summed loss is divided by
the same count. Otherwise each half is weighted as one more accumulation step.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def batch_rows(inputs: dict[str, Any]) -> int:
    ids = inputs.get("input_ids")
    return int(ids.shape[0]) if ids is not None else 1


def split_inputs(inputs: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """`parts` row slices of a collated batch; tensors without the batch dimension are
    shared by every slice."""
    import torch

    rows = batch_rows(inputs)
    n = min(parts, rows)
    chunks: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            for chunk, piece in zip(chunks, torch.tensor_split(value, n, dim=0), strict=True):
                chunk[key] = piece
        else:
            for chunk in chunks:
                chunk[key] = value
    return chunks


class OomRecovery:
    """Mixin for a transformers Trainer: `class T(OomRecovery, SFTTrainer)`."""

    oom_split: int = 1  # each collated micro-batch runs as this many passes
    oom_retries: int = 0
    # called after each recovery with (split, retries), e.g. to write status
    on_oom: Callable[[int, int], None] | None = None
    # called once splitting is exhausted: gives up something else (more activation
    # checkpointing) and returns True, or returns False to let the error through
    escalate: Callable[[], bool] | None = None
    current_gradient_accumulation_steps: int  # the Trainer's

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Any:
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        # Gradients accumulated by earlier micro-batches of this step: a pass that fails
        # mid-backward has added part of its own, so they are put back before the retry.
        saved = [p.grad.detach().clone() if p.grad is not None else None for p in params]
        while True:
            try:
                return self._split_step(model, inputs, num_items_in_batch)
            except torch.OutOfMemoryError as e:
                error = str(e).splitlines()[0]
                split = self.oom_split * 2 <= batch_rows(inputs)
                if not split and not (self.escalate is not None and self.escalate()):
                    raise
            # outside the except block: the traceback (and its activations) is released
            for p, g in zip(params, saved, strict=True):
                p.grad = g.clone() if g is not None else None
            gc.collect()
            torch.cuda.empty_cache()
            if split:
                self.oom_split *= 2
            self.oom_retries += 1
            log.warning(
                "CUDA out of memory (%s): %s",
                error,
                f"splitting each micro-batch into {self.oom_split} passes"
                if split
                else "one row per pass already; checkpointing every decoder layer",
            )
            if self.on_oom is not None:
                self.on_oom(self.oom_split, self.oom_retries)

    def _split_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> Any:
        parent: Any = super()
        if self.oom_split == 1:
            return parent.training_step(model, inputs, num_items_in_batch)
        chunks = split_inputs(inputs, self.oom_split)
        steps = self.current_gradient_accumulation_steps
        # read only when the loss is not normalized by num_items_in_batch
        self.current_gradient_accumulation_steps = steps * len(chunks)
        try:
            losses = [parent.training_step(model, c, num_items_in_batch) for c in chunks]
        finally:
            self.current_gradient_accumulation_steps = steps
        return sum(losses[1:], losses[0])
