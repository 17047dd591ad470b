"""spec.training.optimizations → the trainer's decision (pure; no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from loraf_operator.api.models import LoRAFineTuneSpec
from loraf_trainer import memory_planner as mp
from loraf_trainer import optimizations as opt
from tests.unit.model_shapes import LLAMA3_8B


def spec(method: str = "qlora", **training: Any) -> LoRAFineTuneSpec:
    return LoRAFineTuneSpec.model_validate(
        {
            "baseModel": {"huggingFace": "meta-llama/Meta-Llama-3-8B"},
            "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
            "method": method,
            # the dropout these budgets were measured with (the default is now 0)
            "lora": {"dropout": 0.05},
            "training": {
                "maxSteps": 10,
                "perDeviceBatchSize": 4,
                "maxSeqLength": 1024,
                **training,
            },
            "output": {"s3": "s3://out/run"},
        }
    )


def test_cpu_uses_the_spec_as_given() -> None:
    d = opt.decide(spec(), LLAMA3_8B, on_gpu=False, free_gib=None, liger=True)
    # no checkpointing on a CPU unless asked for (it only costs time there)
    assert (d.micro_batch, d.grad_accum, d.checkpointed_layers) == (4, 1, 0)
    assert d.plan is None and d.techniques == []
    asked = opt.decide(
        spec(gradientCheckpointing=True), LLAMA3_8B, on_gpu=False, free_gib=None, liger=True
    )
    assert asked.checkpointed_layers == 32 and asked.status()["techniques"] == []


def test_unset_batch_is_chosen_from_the_rows_and_planned_on_a_gpu() -> None:
    s = spec(perDeviceBatchSize=None, memoryBudgetGiB=24)
    d = opt.decide(s, LLAMA3_8B, on_gpu=True, free_gib=79.0, liger=True, train_rows=300)
    assert d.hyper is not None and d.hyper.rows_per_step == 16  # 300 rows: 16 x 19 steps
    assert d.micro_batch * d.grad_accum == 16  # the planner splits the chosen batch
    st = d.status()
    assert st["rowsPerStep"] == 16 and "perDeviceBatchSize" in st["defaults"]
    assert st["learningRate"] == d.hyper.learning_rate


def test_gpu_plans_inside_the_spec_budget() -> None:
    d = opt.decide(spec(memoryBudgetGiB=24), LLAMA3_8B, on_gpu=True, free_gib=79.0, liger=True)
    assert d.plan is not None and d.plan.budget_gib == 24
    assert d.micro_batch * d.grad_accum == 4
    assert 0 < d.checkpointed_layers < 32  # less recompute than "all", but not none at 24 GiB
    assert d.plan.est_peak_reserved_gib <= 24
    # with compile no Liger kernel runs (inductor fuses the layers; TRL computes the loss
    # with its own chunked LM head), and the plan says so
    assert d.techniques == ["memory-planner", "compile", "oom-recovery", "keep-input-dtype"]
    assert opt.sft_overrides(d)["use_liger_kernel"] is False
    assert "not used with compile" in d.notes[0]
    st = d.status()
    assert st["budgetGiB"] == 24 and st["microBatchSize"] == d.micro_batch
    # after two splits: a quarter of the rows per pass, four times the passes
    halved = d.status(split=2)
    assert halved["microBatchSize"] * halved["gradientAccumulationSteps"] == 4


def test_free_memory_is_the_budget_when_the_spec_has_none() -> None:
    d = opt.decide(spec(), LLAMA3_8B, on_gpu=True, free_gib=79.0, liger=True)
    assert d.plan is not None and d.plan.budget_gib == 79.0
    assert d.checkpointed_layers == 0  # 8B QLoRA at 4×1024 fits without recompute


def test_planner_off_keeps_the_spec_and_checkpointing_flag() -> None:
    s = spec(optimizations={"planner": False}, gradientCheckpointing=False)
    d = opt.decide(s, LLAMA3_8B, on_gpu=True, free_gib=79.0, liger=True)
    assert d.plan is None and (d.micro_batch, d.checkpointed_layers) == (4, 0)


def test_no_checkpointing_allowed_can_leave_no_fit() -> None:
    s = spec(memoryBudgetGiB=12, gradientCheckpointing=False)
    with pytest.raises(mp.NoFit, match="without checkpointing"):
        opt.decide(s, LLAMA3_8B, on_gpu=True, free_gib=None, liger=True)


def test_fused_kernels_need_liger_and_a_supported_architecture() -> None:
    d = opt.decide(spec(), LLAMA3_8B, on_gpu=True, free_gib=79.0, liger=False)
    assert not d.fused_kernels and "liger-kernel is not installed" in d.notes[0]
    other = SimpleNamespace(**(vars(LLAMA3_8B) | {"model_type": "gpt_neox"}))
    d = opt.decide(spec(), other, on_gpu=True, free_gib=79.0, liger=True)
    assert not d.fused_kernels and "gpt_neox" in d.notes[0]


def test_memory_mode_switches_reach_the_decision() -> None:
    s = spec(optimizations={"cpuEmbeddings": True, "compile": False, "oomRecovery": False})
    d = opt.decide(s, LLAMA3_8B, on_gpu=True, free_gib=79.0, liger=True)
    assert d.cpu_embeddings and not d.compile and not d.oom_recovery
    assert d.techniques == [
        "memory-planner",
        "fused-kernels",
        "cpu-embeddings",
        "keep-input-dtype",
    ]
    overrides = opt.sft_overrides(d)
    # without compile, Liger's layer kernels are the fused layers
    assert overrides["use_liger_kernel"] is True and "liger_kernel_config" not in overrides
    assert overrides["per_device_train_batch_size"] == d.micro_batch


def test_split_inputs_slices_rows_and_shares_the_rest() -> None:
    torch = pytest.importorskip("torch", reason="splitting works on torch tensors")
    from loraf_trainer.oom_recovery import split_inputs

    batch = {
        "input_ids": torch.arange(12).reshape(4, 3),
        "labels": torch.arange(12).reshape(4, 3),
        "scale": torch.tensor(2.0),
        "note": "kept",
    }
    parts = split_inputs(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [2, 2]
    assert torch.equal(torch.cat([p["labels"] for p in parts]), batch["labels"])
    assert all(p["scale"] is batch["scale"] and p["note"] == "kept" for p in parts)
    assert len(split_inputs(batch, 8)) == 4  # never more parts than rows


def test_architectures_without_known_layers_train_eagerly_and_fully_checkpointed() -> None:
    class Odd:  # a causal LM whose blocks live somewhere else
        def __init__(self) -> None:
            self.blocks = [object()]

    assert opt.decoder_layers(Odd()) is None
    assert opt.decoder_layers(SimpleNamespace(model=SimpleNamespace(layers=[1, 2]))) == [1, 2]
    d = opt.Decision(
        micro_batch=4, grad_accum=1, checkpointed_layers=3, layers=8, compile=True,
        liger_layers=False,
    )  # fmt: skip
    after = opt.apply_after_adapters(Odd(), d)
    assert not after.compile and after.liger_layers and "compile" in after.notes[0]
    assert d.compile and not d.notes  # frozen: the decision that was made stays as it was
    assert opt.limit_checkpointing(Odd(), 3) == -1


def test_a_config_without_a_decoder_shape_keeps_the_spec() -> None:
    gpt2_like = SimpleNamespace(model_type="gpt2", num_hidden_layers=12, hidden_size=768)
    d = opt.decide(spec(memoryBudgetGiB=24), gpt2_like, on_gpu=True, free_gib=79.0, liger=True)
    assert d.plan is None and d.micro_batch == 4 and "no decoder shape" in d.notes[-1]


def test_several_ranks_choose_a_strategy_and_turn_oom_recovery_off() -> None:
    raw = {
        "baseModel": {"huggingFace": "org/m"},
        "dataset": {"s3": "s3://bkt/d.jsonl", "format": "alpaca"},
        "training": {"maxSteps": 5, "perDeviceBatchSize": 2},
        "output": {"s3": "s3://bkt/o"},
        "resources": {"gpus": 2},
    }
    spec = LoRAFineTuneSpec.model_validate(raw)
    d = opt.decide(spec, LLAMA3_8B, True, 80.0, False, 1000, world_size=2)
    assert (d.strategy, d.world_size, d.oom_recovery) == ("ddp", 2, False)
    assert d.status()["strategy"] == "ddp" and d.status()["worldSize"] == 2
    one = opt.decide(spec, LLAMA3_8B, True, 80.0, False, 1000)
    assert (one.strategy, one.oom_recovery) == ("single", True)
    cpu = opt.decide(
        LoRAFineTuneSpec.model_validate({**raw, "resources": {"gpus": 2, "strategy": "fsdp"}}),
        LLAMA3_8B, False, None, False, 1000, world_size=2,
    )  # fmt: skip
    assert cpu.strategy == "ddp" and any("GPUs only" in n for n in cpu.notes)


def test_fsdp_swaps_a_bitsandbytes_optimizer_and_plans_with_its_state() -> None:
    # bitsandbytes' 8-bit update refused FSDP's sharded parameters on an H200 ("mixed
    # torch.Tensor and DTensor"): under FSDP the adapters train with adamw_torch
    raw = {
        "baseModel": {"huggingFace": "org/m"},
        "dataset": {"s3": "s3://bkt/d.jsonl", "format": "alpaca"},
        "method": "qlora",
        "training": {"maxSteps": 5, "perDeviceBatchSize": 4},
        "output": {"s3": "s3://bkt/o"},
        "resources": {"gpus": 1, "strategy": "fsdp"},
    }
    spec = LoRAFineTuneSpec.model_validate(raw)
    d = opt.decide(spec, LLAMA3_8B, True, 80.0, True, 1000)
    assert d.strategy == "fsdp" and d.optimizer == "adamw_torch" and not d.compile
    assert not d.keep_input_dtype and any("input cast kept" in n for n in d.notes)
    assert opt.sft_overrides(d)["optim"] == "adamw_torch"
    assert any("cannot update sharded parameters" in n for n in d.notes)
    unplanned = opt.decide(spec.model_copy(update={"training": spec.training.model_copy(update={
        "optimizations": spec.training.optimizations.model_copy(update={"planner": False})})}),
        LLAMA3_8B, True, 80.0, True, 1000)  # fmt: skip
    # the planner off changes nothing of what FSDP needs
    assert unplanned.plan is None and unplanned.optimizer == "adamw_torch"
    assert not unplanned.compile and not unplanned.keep_input_dtype
    single = opt.decide(spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"strategy": "auto"})}), LLAMA3_8B, True, 80.0, True, 1000)  # fmt: skip
    # one GPU keeps the spec's optimizer for FSDP's reason; it takes the fused one for speed
    assert not any("sharded" in n for n in single.notes) and single.keep_input_dtype
    assert single.optimizer == opt.FUSED_OPTIMIZER == opt.sft_overrides(single)["optim"]


def test_dpo_trains_without_compile() -> None:
    raw = {
        "baseModel": {"huggingFace": "org/m"},
        "dataset": {"s3": "s3://bkt/d.jsonl", "format": "preference"},
        "objective": "dpo",
        "method": "qlora",
        "training": {"maxSteps": 5, "perDeviceBatchSize": 4},
        "output": {"s3": "s3://bkt/o"},
    }
    d = opt.decide(LoRAFineTuneSpec.model_validate(raw), LLAMA3_8B, True, 80.0, True, 1000)
    assert not d.compile and "compile" not in d.techniques
    assert any("objective dpo" in n for n in d.notes)
    assert opt.sft_overrides(d)["use_liger_kernel"] is True  # Liger's layers run instead
    # the DPO trainer has no out-of-memory recovery, so the plan does not list it
    assert not d.oom_recovery and "oom-recovery" not in d.techniques
    assert any("oom recovery: SFT only" in n for n in d.notes)


def test_oom_recovery_reports_the_plan_that_runs_after_escalating() -> None:
    from loraf_trainer.train import recover_oom

    layers = [SimpleNamespace(gradient_checkpointing=i == 0) for i in range(4)]
    trainer = SimpleNamespace(model=SimpleNamespace(model=SimpleNamespace(layers=layers)))
    d = opt.Decision(1, 4, checkpointed_layers=1, layers=4, oom_recovery=True)
    seen: list[tuple[int, int, int]] = []

    def on_oom(plan: opt.Decision, split: int, retries: int) -> None:
        st = plan.status(split)
        seen.append((st["checkpointedLayers"], st["gradientAccumulationSteps"], retries))

    recover_oom(trainer, d, on_oom)
    trainer.on_oom(1, 1)
    assert trainer.escalate() is True and all(layer.gradient_checkpointing for layer in layers)
    trainer.on_oom(1, 2)
    assert seen == [(1, 4, 1), (4, 4, 2)]  # the status names the escalated plan
    assert trainer.escalate() is False  # every layer recomputes already: nothing left
    assert d.checkpointed_layers == 1  # the decision that was made is never changed
    with pytest.raises(AttributeError):
        setattr(d, "micro_batch", 2)  # noqa: B010 - frozen


def test_unset_optimizer_on_a_gpu_is_fused_adamw_when_it_costs_no_recompute() -> None:
    roomy = opt.decide(spec(memoryBudgetGiB=80), LLAMA3_8B, on_gpu=True, free_gib=None, liger=True)
    assert roomy.optimizer == opt.FUSED_OPTIMIZER and roomy.checkpointed_layers == 0
    assert f"optimizer: {opt.FUSED_OPTIMIZER}" in roomy.notes
    # the plan it keeps is the one planned with the fused optimizer's fp32 state
    assert roomy.plan is not None
    fused_w = opt.workload(spec(), LLAMA3_8B, True, False, 4)
    fused_w = mp.Workload(**{**fused_w.__dict__, "optimizer": opt.FUSED_OPTIMIZER})
    assert roomy.plan.est_peak_allocated_gib == round(
        mp.peak_allocated_bytes(fused_w, 4, 0) / mp.GIB, 2
    )
    # where its ~250 MB more state would cost a checkpointed layer, 8-bit AdamW stays
    budgets = [b / 4 for b in range(40, 120)]
    tight = [
        d
        for d in (
            opt.decide(spec(memoryBudgetGiB=b), LLAMA3_8B, on_gpu=True, free_gib=None, liger=True)
            for b in budgets
        )
        if d.optimizer is None
    ]
    assert tight, "some budget leaves no room for the fused optimizer's state"
    assert all(d.plan is not None for d in tight)


def test_a_set_optimizer_a_cpu_and_fsdp_keep_their_optimizer() -> None:
    asked = spec(memoryBudgetGiB=80, optimizer="paged_adamw_8bit")
    assert opt.decide(asked, LLAMA3_8B, on_gpu=True, free_gib=None, liger=True).optimizer is None
    assert opt.decide(spec(), LLAMA3_8B, on_gpu=False, free_gib=None, liger=True).optimizer is None
    lora = opt.decide(spec("lora", memoryBudgetGiB=80), LLAMA3_8B, True, None, True)
    assert lora.optimizer == opt.FUSED_OPTIMIZER  # same state size as adamw_torch
