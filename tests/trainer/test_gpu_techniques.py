"""GPU techniques through the trainer's own build path (train.prepare_model +
train.build_trainer), on a tiny random Llama built here: out-of-memory recovery, and
compile + partial checkpointing + CPU embeddings giving the same training as eager.

The CUDA error is injected (this machine has no GPU): a hook on the first decoder layer
raises torch.OutOfMemoryError in the backward pass of a 4-row micro-batch, after the
step's first micro-batch has already accumulated gradients. Recovery must put those
gradients back, split the micro-batch and go on, ending with the same adapter weights
as a run that used 2-row micro-batches from the start."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the trainer test needs torch (the trainer extra)")

from loraf_operator.api.models import LoRAFineTuneSpec  # noqa: E402
from loraf_operator.api.trainer_config import TrainerConfig  # noqa: E402

SEQ, ROWS, VOCAB = 32, 24, 256


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    ).save_pretrained(path)
    return path


def config(model_dir: Path, micro: int, accum: int, checkpointing: bool) -> TrainerConfig:
    spec = LoRAFineTuneSpec.model_validate(
        {
            "baseModel": {"pvc": {"claimName": "m", "path": str(model_dir)}},
            "dataset": {"s3": "s3://data/rows.jsonl", "format": "text"},
            "method": "lora",
            # no dropout: the split run and the reference must draw the same numbers
            "lora": {"r": 4, "dropout": 0.0, "targetModules": ["all-linear"]},
            "training": {
                "maxSteps": 3,
                "learningRate": 0.01,
                "perDeviceBatchSize": micro,
                "gradientAccumulationSteps": accum,
                "maxSeqLength": SEQ,
                "gradientCheckpointing": checkpointing,
                "warmupRatio": 0.0,
                "checkpointMinutes": None,
            },
            "output": {"s3": "s3://out/run"},
        }
    )
    return TrainerConfig(namespace="t", name="oom", uid="0", generation=1, run=1, spec=spec)


def train(
    model_dir: Path,
    tmp: Path,
    micro: int,
    accum: int,
    fault: Any = None,
    checkpointing: bool = False,
    run: bool = True,
    **switches: Any,
) -> Any:
    from datasets import Dataset

    from loraf_trainer import model_loading, optimizations
    from loraf_trainer import train as ltrain

    cfg = config(model_dir, micro, accum, checkpointing)
    device = model_loading.pick_device()
    # The decision is made before the weights load; on a GPU it turns these on.
    real_decide = optimizations.decide

    def decide(*args: Any, **kw: Any) -> optimizations.Decision:
        return dataclasses.replace(real_decide(*args, **kw), oom_recovery=True, **switches)

    optimizations.decide = decide
    try:
        model, decision = ltrain.prepare_model(cfg, model_dir, device)
    finally:
        optimizations.decide = real_decide
    gen = torch.Generator().manual_seed(7)
    rows = torch.randint(3, VOCAB, (ROWS, SEQ), generator=gen).tolist()
    calls: list[tuple[int, int]] = []
    trainer = ltrain.build_trainer(
        cfg,
        model,
        decision,
        model_loading.load_tokenizer(model_dir),
        Dataset.from_dict({"input_ids": rows}),
        None,
        tmp,
        device,
        [],
        on_oom=lambda _plan, split, retries: calls.append((split, retries)),
    )
    if fault is not None:
        layer0 = model.get_base_model().model.layers[0]
        layer0.register_full_backward_hook(fault)
    trainer.oom_calls = calls
    if run:
        trainer.train()
    return trainer


def lora_weights(trainer: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


def test_oom_mid_accumulation_splits_and_matches_small_micro_batches(
    tiny_llama: Path, tmp_path: Path
) -> None:
    seen = {"big_backwards": 0}

    def fault(module: Any, grad_in: Any, grad_out: Any) -> None:
        if grad_out[0].shape[0] > 2:
            seen["big_backwards"] += 1
            if seen["big_backwards"] == 2:  # the step's 2nd micro-batch, mid-backward
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    recovered = train(tiny_llama, tmp_path / "a", micro=4, accum=2, fault=fault)
    reference = train(tiny_llama, tmp_path / "b", micro=2, accum=4)

    assert recovered.oom_calls == [(2, 1)]
    assert recovered.oom_retries == 1 and recovered.oom_split == 2
    assert seen["big_backwards"] == 2  # no 4-row pass ran after the split
    assert recovered.state.global_step == reference.state.global_step == 3
    a, b = lora_weights(recovered), lora_weights(reference)
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2  # A and B of 7 linears × 2 layers
    moved = 0
    for name, wa in a.items():
        torch.testing.assert_close(wa, b[name], rtol=1e-4, atol=1e-6, msg=name)
        moved += int("lora_B" in name and wa.abs().max().item() > 0)
    assert moved == 14  # training changed every B (they start at zero)
    la = [h["loss"] for h in recovered.state.log_history if "loss" in h]
    lb = [h["loss"] for h in reference.state.log_history if "loss" in h]
    assert la == pytest.approx(lb, rel=1e-4)


def test_oom_at_one_row_per_pass_checkpoints_every_layer_and_goes_on(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from loraf_trainer import optimizations

    def fault(module: Any, args: Any) -> None:
        layers = optimizations.decoder_layers(recovered_model[0])
        if not all(getattr(x, "gradient_checkpointing", False) for x in layers or []):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    recovered_model: list[Any] = []
    trainer = train(tiny_llama, tmp_path / "a", micro=2, accum=1, run=False)
    recovered_model.append(trainer.model)
    trainer.model.get_base_model().model.layers[0].register_forward_pre_hook(fault)
    trainer.train()
    reference = train(tiny_llama, tmp_path / "b", micro=1, accum=2, checkpointing=True)

    # split to one row per pass, then every layer checkpointed (it had none)
    assert trainer.oom_calls == [(2, 1), (2, 2)]
    assert trainer.state.global_step == 3
    a, b = lora_weights(trainer), lora_weights(reference)
    for name, wa in a.items():
        torch.testing.assert_close(wa, b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_oom_at_one_row_per_pass_fails_the_run_for_good(tiny_llama: Path, tmp_path: Path) -> None:
    from loraf_trainer.errors import ConfigInvalid
    from loraf_trainer.train import train_or_fail

    def fault(module: Any, grad_in: Any, grad_out: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer = train(tiny_llama, tmp_path / "c", micro=2, accum=1, fault=fault, run=False)
    with pytest.raises(ConfigInvalid, match="CUDA out of memory at step 0") as info:
        train_or_fail(trainer, None)
    assert info.value.exit_code == 64  # FailJob: no retry of the same spec
    # it split (2 rows → 1 per pass), then checkpointed every layer, then gave up
    assert trainer.oom_calls == [(2, 1), (2, 2)]


def test_compile_partial_checkpointing_and_cpu_embeddings_train_like_eager(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from torch._dynamo.utils import counters

    from loraf_trainer import optimizations

    eager = train(tiny_llama, tmp_path / "e", micro=4, accum=1)
    fast = train(
        tiny_llama,
        tmp_path / "f",
        micro=4,
        accum=1,
        checkpointing=True,
        checkpointed_layers=1,  # of 2: the planner's partial checkpointing
        compile=True,
        cpu_embeddings=True,
    )
    layers = optimizations.decoder_layers(fast.model)
    assert layers is not None
    assert [bool(getattr(x, "gradient_checkpointing", False)) for x in layers] == [True, False]
    assert all(getattr(x, "_compiled_call_impl", None) is not None for x in layers)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled, not an eager fallback
    optimizations.release_compiled(fast.model, optimizations.Decision(4, 1, 1, 2, compile=True))
    assert all(x._compiled_call_impl is None for x in layers)  # eager for eval/generation
    emb = fast.model.get_base_model().get_input_embeddings()
    assert type(emb).__name__ == "CpuEmbedding"
    a, b = lora_weights(fast), lora_weights(eager)
    for name, wa in a.items():
        torch.testing.assert_close(wa, b[name], rtol=1e-3, atol=1e-5, msg=name)


def test_keeping_the_input_dtype_changes_no_number_under_autocast(tiny_llama: Path) -> None:
    """The GPU default `keep-input-dtype` (optimizations.Decision): under bf16 autocast,
    skipping peft's cast of each LoRA input to the fp32 adapters gives the same loss and
    the same adapter gradients, bit for bit (autocast casts the input back for the GEMM)."""
    from peft import LoraConfig, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))

    seen: list[Any] = []  # the dtype reaching one adapter: the two paths do differ
    lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
    lora_a.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))

    def loss_and_grads(keep: bool) -> tuple[Any, list[Any]]:
        model.zero_grad()
        with disable_input_dtype_casting(model, active=keep), torch.autocast("cpu", torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [
            p.grad.clone()
            for n, p in model.named_parameters()
            if "lora_" in n and p.grad is not None
        ]
        assert grads and all(g.dtype == torch.float32 for g in grads)  # fp32 adapters
        return loss.detach(), grads

    cast_loss, cast_grads = loss_and_grads(keep=False)
    kept_loss, kept_grads = loss_and_grads(keep=True)
    assert (seen[0], seen[-1]) == (torch.float32, torch.bfloat16)
    assert torch.equal(cast_loss, kept_loss)
    assert all(torch.equal(a, b) for a, b in zip(cast_grads, kept_grads, strict=True))
    assert any(g.abs().sum() > 0 for g in kept_grads)
