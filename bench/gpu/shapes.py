"""Random-init checkpoints with the real shapes of popular 7-8B models, plus a throwaway
tokenizer. Speed and memory do not depend on weight values (DESIGN.md), and no hub
access is needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Published config.json values (architecture-relevant fields only).
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "mistral-7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32768,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "qwen2-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    },
    # Llama-3-70B (Meta's config.json): built layer by layer in 4 bits (bench/gpu/layerwise.py).
    "llama3-70b": {
        "model_type": "llama",
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    # A few MB: lets the harness itself be tested on a CPU.
    "tiny": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
}


def build_config(shape: str) -> Any:
    from transformers import AutoConfig

    kw = dict(SHAPES[shape])
    model_type = kw.pop("model_type")
    return AutoConfig.for_model(model_type, **kw)


def save_tokenizer(dest: Path, vocab_words: int = 1000) -> None:
    """A word-level tokenizer: rows arrive pre-tokenized, so it only has to exist (TRL's
    collator reads pad/eos ids, and the project's loader wants a tokenizer folder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {f"w{i}": i + 3 for i in range(vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(dest)


def make_config_only(shape: str, dest: Path) -> Path:
    """config.json and a tokenizer, no weights: the layer-by-layer builder makes those."""
    dest.mkdir(parents=True, exist_ok=True)
    build_config(shape).save_pretrained(dest)
    save_tokenizer(dest)
    return dest


def make_checkpoint(shape: str, dest: Path, seed: int = 0) -> Path:
    """Write a random-init bf16 checkpoint (sharded safetensors) + tokenizer into dest,
    once: a marker file makes later calls return at once."""
    import torch
    from transformers import AutoModelForCausalLM

    marker = dest / ".bench-complete"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = build_config(shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(dest, max_shard_size="5GB")
    save_tokenizer(dest)
    marker.write_text(json.dumps({"shape": shape, "seed": seed}))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return dest
