"""Memory planner arithmetic (no torch, no GPU)."""

from __future__ import annotations

import dataclasses

import pytest

from loraf_trainer import memory_planner as mp
from tests.unit.model_shapes import LLAMA3_8B, LLAMA3_70B

SHAPE = mp.ModelShape.from_config(LLAMA3_8B)
QLORA = mp.Workload(SHAPE, quantized=True, seq_len=1024, rows_per_step=4, fused_kernels=True)
LORA = mp.Workload(
    SHAPE,
    quantized=False,
    seq_len=4096,
    rows_per_step=2,
    fused_kernels=True,
    optimizer="adamw_torch",
    adapter_bytes=4,
)
MEMORY_MODE = mp.Workload(
    SHAPE, quantized=True, seq_len=2048, rows_per_step=2, fused_kernels=True, cpu_embeddings=True
)
GIB = mp.GIB


def test_shape_counts_match_peft() -> None:
    assert SHAPE.lora_params(16) == 41_943_040  # peft's print_trainable_parameters
    assert SHAPE.head_dim == 128 and SHAPE.kv_dim == 1024


@pytest.mark.parametrize(
    ("w", "micro", "ckpt", "measured_gib"),
    [  # peak allocated measured on an H100 (bench/results/gpu_*_llama3-8b.json)
        (QLORA, 4, 26, 11.55),
        (QLORA, 4, 0, 31.61),
        (QLORA, 2, 3, 17.51),
        (QLORA, 4, 14, 20.84),
        (LORA, 1, 0, 42.08),
        (LORA, 2, 8, 55.98),
        (LORA, 2, 0, 68.28),
        # with torch.compile of the layers (gpu_s2qlora_llama3-8b.json)
        (QLORA, 4, 23, 14.15),
        (QLORA, 4, 14, 20.92),
        (MEMORY_MODE, 1, 31, 5.78),
    ],
)
def test_estimates_within_10_percent_of_measured(
    w: mp.Workload, micro: int, ckpt: int, measured_gib: float
) -> None:
    est = mp.peak_allocated_bytes(w, micro, ckpt) / GIB
    assert abs(est - measured_gib) / measured_gib < 0.10


def test_more_checkpointing_less_memory_more_cost() -> None:
    mems = [mp.peak_allocated_bytes(QLORA, 4, k) for k in range(33)]
    costs = [mp.step_cost(QLORA, 4, k) for k in range(33)]
    assert mems == sorted(mems, reverse=True)
    assert costs == sorted(costs)


def test_plan_respects_budget_and_effective_batch() -> None:
    for budget in (12, 16, 24, 40, 80):
        p = mp.plan(QLORA, budget)
        assert p.micro_batch * p.grad_accum == 4
        assert p.est_peak_reserved_gib <= budget
    assert mp.plan(QLORA, 80).checkpointed_layers == 0  # room for everything: no recompute
    assert mp.plan(QLORA, 16).checkpointed_layers > mp.plan(QLORA, 24).checkpointed_layers


def test_qlora_prefers_large_micro_batch_over_less_recompute() -> None:
    # measured: micro 2×2 without recompute was slower than micro 4 with full recompute
    assert mp.step_cost(QLORA, 2, 0) > mp.step_cost(QLORA, 4, 32)
    assert mp.plan(QLORA, 24).micro_batch == 4


def test_no_fit_raises() -> None:
    with pytest.raises(mp.NoFit):
        mp.plan(LORA, 8)


def test_cpu_embeddings_free_the_table() -> None:
    on_gpu = QLORA.weight_bytes()
    on_cpu = mp.Workload(SHAPE, True, 1024, 4, cpu_embeddings=True).weight_bytes()
    assert on_gpu - on_cpu == 2 * SHAPE.embedding_params()


NO_DROPOUT_QLORA = dataclasses.replace(QLORA, lora_dropout=False)
NO_DROPOUT_LORA = dataclasses.replace(LORA, lora_dropout=False)
DPO_QLORA = dataclasses.replace(NO_DROPOUT_QLORA, sequences_per_row=2, reference_forward=True)


@pytest.mark.parametrize(
    ("w", "micro", "ckpt", "allocated_gib", "reserved_gib"),
    [  # dropout 0, measured on an H200 and an H100 (bench/results/gpu_fair*, gpu_explore*)
        (NO_DROPOUT_QLORA, 4, 3, 21.63, 22.20),  # compiled, the spec's defaults at 24 GiB
        (NO_DROPOUT_LORA, 2, 0, 52.75, 53.98),  # compiled
        (NO_DROPOUT_LORA, 2, 0, 58.56, 58.78),  # eager
        # DPO, Liger layers without compile (gpu_dpo_llama3-8b.json): chosen + rejected
        # in one pass; counted as one sequence per row the estimate was 23.18 GiB
        (DPO_QLORA, 4, 0, 40.48, 40.73),
    ],
)
def test_dropout_free_estimates_never_below_the_measured_peak(
    w: mp.Workload, micro: int, ckpt: int, allocated_gib: float, reserved_gib: float
) -> None:
    # "never above budget" needs the estimate at or above the measurement (issue 17: it
    # was 8-11 % below when dropout 0 was counted as keeping no adapter-input copies)
    assert mp.peak_allocated_bytes(w, micro, ckpt) / GIB >= allocated_gib
    est_reserved = mp.peak_reserved_bytes(w, micro, ckpt) / GIB
    assert reserved_gib <= est_reserved <= 1.2 * reserved_gib


def test_dpo_plans_for_both_sequences_of_a_row() -> None:
    sft, dpo = mp.plan(NO_DROPOUT_QLORA, 24), mp.plan(DPO_QLORA, 24)
    assert dpo.est_peak_reserved_gib <= 24
    # twice the activations: checkpointing where SFT needs almost none (3 layers)
    assert dpo.checkpointed_layers > 3 * sft.checkpointed_layers
    # and the reference pass: more than the two sequences' own share of the step
    two_sequences = dataclasses.replace(DPO_QLORA, reference_forward=False)
    assert mp.step_cost(DPO_QLORA, 4, 0) > mp.step_cost(two_sequences, 4, 0)


def test_dropout_free_plan_at_24_gib_stays_inside_with_the_measured_peak() -> None:
    p = mp.plan(NO_DROPOUT_QLORA, 24)
    assert (p.micro_batch, p.checkpointed_layers) == (4, 3)  # what ran: 22.20 GiB reserved
    assert 22.20 <= p.est_peak_reserved_gib <= 24


# -- more than one GPU: DDP (everything on every GPU) vs FSDP full shard (split N ways)

SHAPE_70B = mp.ModelShape.from_config(LLAMA3_70B)


def _w70(quantized: bool, world: int, sharded: bool = False) -> mp.Workload:
    return mp.Workload(
        SHAPE_70B,
        quantized=quantized,
        seq_len=1024,
        rows_per_step=4,
        fused_kernels=True,
        optimizer="paged_adamw_8bit" if quantized else "adamw_torch",
        adapter_bytes=2 if quantized else 4,
        world_size=world,
        sharded=sharded,
    )


def test_fsdp_splits_weights_and_adapter_state_but_gathers_two_layers() -> None:
    one, four = _w70(False, 1), _w70(False, 4, sharded=True)
    layer = one.layer_weight_bytes()
    head_and_emb = 2 * 2 * SHAPE_70B.embedding_params()
    assert four.weight_bytes() == (80 * layer) // 4 + 2 * layer + head_and_emb
    assert four.adapter_state_bytes() == one.adapter_state_bytes() // 4
    # DDP keeps a second copy of the adapter gradients in its buckets
    ddp = _w70(False, 4)
    n = SHAPE_70B.lora_params(16)
    assert ddp.adapter_state_bytes() == one.adapter_state_bytes() + 4 * n
    assert ddp.weight_bytes() == one.weight_bytes()


@pytest.mark.parametrize(
    ("shape", "quantized", "world", "budget", "strategy", "expected"),
    [
        # 8B fits one 80 GB GPU: data parallel is the faster choice on two
        (SHAPE, False, 2, 80, "auto", "ddp"),
        (SHAPE, True, 1, 80, "auto", "single"),
        # 70B bf16 (~131 GiB of weights) fits no single 80 GB GPU: sharded over four
        (SHAPE_70B, False, 4, 80, "auto", "fsdp"),
        # 70B 4-bit (~37 GiB) fits one 80 GB GPU: DDP on two (the seeds' table: 2× A100 80GB)
        (SHAPE_70B, True, 2, 80, "auto", "ddp"),
        # ...but not one 40 GB GPU: then it must be sharded
        (SHAPE_70B, True, 2, 40, "auto", "fsdp"),
        # what the spec insists on is kept
        (SHAPE, False, 2, 80, "fsdp", "fsdp"),
        (SHAPE, False, 1, 80, "fsdp", "fsdp"),
    ],
)
def test_strategy_table(
    shape: mp.ModelShape, quantized: bool, world: int, budget: float, strategy: str, expected: str
) -> None:
    w = _w70(quantized, world)
    w = mp.Workload(**{**w.__dict__, "shape": shape})
    chosen, p = mp.plan_strategy(w, budget, strategy)
    assert chosen == expected
    assert p.est_peak_reserved_gib <= budget


def test_no_fit_on_too_few_gpus_even_sharded() -> None:
    # 70B LoRA bf16 on two 80 GB GPUs: 65 GiB of weights each plus activations and the
    # gathered layers does not fit (the seeds' table says four GPUs)
    with pytest.raises(mp.NoFit):
        mp.plan_strategy(_w70(False, 2), 80, "auto")
    with pytest.raises(mp.NoFit):  # forced DDP never shards
        mp.plan_strategy(_w70(False, 4), 80, "ddp")
