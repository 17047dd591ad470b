"""Model configs the trainer's pure logic is tested on (attribute names as in transformers)."""

from __future__ import annotations

from types import SimpleNamespace

LLAMA3_8B = SimpleNamespace(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)

# The seeds' hardware table: QLoRA on 2× A100 80GB, LoRA on 4× A100 80GB.
LLAMA3_70B = SimpleNamespace(
    model_type="llama",
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)
