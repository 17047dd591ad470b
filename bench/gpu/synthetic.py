"""Fixed-length, pre-tokenized rows: tokens/s is exact (no padding, no truncation), and
the rows have structure a model can learn (a Zipf unigram over a sub-vocabulary and
repeated spans), so the loss curve moves and loss parity means something."""

from __future__ import annotations

from typing import Any

import numpy as np


def rows(n: int, seq_len: int, vocab: int, seed: int = 1234) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sub = rng.choice(np.arange(3, vocab), size=min(2048, vocab - 3), replace=False)
    weights = 1.0 / np.arange(1, len(sub) + 1) ** 1.1
    weights /= weights.sum()
    out = []
    span = 32
    for _ in range(n):
        ids = sub[rng.choice(len(sub), size=seq_len, p=weights)]
        # Every other span repeats the one before it: something in-context to learn.
        for start in range(span, seq_len - span + 1, 2 * span):
            ids[start : start + span] = ids[start - span : start]
        out.append(ids.astype(np.int64).tolist())
    return out


def dataset(n: int, seq_len: int, vocab: int, seed: int = 1234) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows(n, seq_len, vocab, seed)})


def preference_dataset(n: int, seq_len: int, vocab_words: int = 1000, seed: int = 1234) -> Any:
    """Preference rows in the throwaway word-level tokenizer's words (one token each):
    a prompt of seq_len/2 tokens, chosen and rejected answers of seq_len/2 - 1 (TRL adds
    EOS), so every pair is exactly 2 x seq_len tokens through the policy."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    half = seq_len // 2

    def words(k: int) -> str:
        return " ".join(f"w{i}" for i in rng.integers(0, vocab_words, size=k))

    return Dataset.from_dict(
        {
            "prompt": [words(half) for _ in range(n)],
            "chosen": [words(half - 1) for _ in range(n)],
            "rejected": [words(half - 1) for _ in range(n)],
        }
    )
