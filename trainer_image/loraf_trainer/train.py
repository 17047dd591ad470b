"""One training run, end to end: `run(ctx)` is the trainer's thin main, one call per stage.

check storage → load + validate the dataset (before any model or GPU work) → resolve and
load the base → plan and attach LoRA (`prepare_model`: the frozen Decision, logged once in
its final form) → resume from the newest checkpoint and train with TRL (`fit`) → evaluate
base vs adapter (`evaluate_run`) → save, merge, manifest → upload, manifest last (`upload`,
files named by api.run_layout). Each stage publishes its own progress; the result is
returned and published.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraf_operator.api.models import LoRAFineTuneSpec, OutputSpec
from loraf_operator.api.run_layout import ADAPTER_DIR, ADAPTER_WEIGHTS, MERGED_DIR, RunLayout
from loraf_operator.api.trainer_config import TrainerConfig

from . import (
    adapters,
    artifacts,
    data,
    dpo,
    evaluate,
    hyperparams,
    launch,
    memory_planner,
    model_loading,
    oom_recovery,
    optimizations,
    ranks,
)
from .checkpoints import (
    TRAINER_STATE,
    Preemption,
    StepInterrupted,
    fetch_latest_checkpoint,
    prior_runtime_seconds,
    run_train_loss,
    trainer_state,
    training_complete,
)
from .errors import ConfigInvalid, DatasetInvalid, ModelInvalid, Preempted
from .sources import load_rows
from .status_reporter import Remaining, StatusPublisher, Ticker
from .storage import Retry, Store, check_readable, s3_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalInputs:
    """Plain local paths given to `loraf run` (instead of s3/pvc/hub sources)."""

    model: Path | None = None
    data: Path | None = None
    eval: Path | None = None
    start_adapter: Path | None = None  # startFrom.path: a run folder (manifest + adapter/)


@dataclass
class RunContext:
    cfg: TrainerConfig
    store: Store  # the run root: .../run-<n>/
    work_dir: Path
    publisher: StatusPublisher
    preemption: Preemption
    interactive: bool = False  # progress bar (loraf run) instead of log lines (pod)
    max_new_tokens: int = 48
    retry: Retry = field(default_factory=Retry)  # S3 outages (storage_retry), as the store
    local: LocalInputs = field(default_factory=LocalInputs)
    _s3: Any = field(default=None, repr=False)

    def s3(self) -> Any:
        """S3 client for inputs (model, dataset), with spec.output's endpoint/region."""
        if self._s3 is None:
            out = self.cfg.spec.output
            self._s3 = s3_client(out.endpoint, out.region, out.retry, notify=self.retry.note)
        return self._s3


def storage_retry(cfg: TrainerConfig, publisher: StatusPublisher) -> Retry:
    """The run's S3 outage policy (spec.output.retry); each failure shows in
    status.progress.storageError until S3 answers again."""

    def on_error(message: str, failures: int) -> None:
        publisher.update({"storageError": message, "storageRetries": failures}, force=True)

    def on_recovered() -> None:
        publisher.update({"storageError": None}, force=True)

    return Retry(
        timeout_s=cfg.spec.output.retry.timeout_seconds,
        on_error=on_error,
        on_recovered=on_recovered,
    )


def check_storage(ctx: RunContext) -> None:
    """Before any data or model is loaded: the output can be listed and written, and
    every S3 input's bucket can be read. Wrong keys fail here (exit 77, whichever input
    would have touched S3 first); an outage is retried (then exit 69)."""
    spec = ctx.cfg.spec
    ctx.store.check_access()
    inputs: list[tuple[str, type[Exception]]] = []
    if spec.dataset.s3:
        inputs.append((spec.dataset.s3, DatasetInvalid))
    if spec.dataset.eval is not None and spec.dataset.eval.s3:
        inputs.append((spec.dataset.eval.s3, DatasetInvalid))
    if spec.base_model.s3:
        inputs.append((spec.base_model.s3, ModelInvalid))
    for uri, missing in inputs:
        if not check_readable(ctx.s3(), uri, ctx.retry):
            raise missing(f"cannot read {uri}: NoSuchBucket")


def load_dataset(ctx: RunContext) -> data.Prepared:
    ds = ctx.cfg.spec.dataset
    seed = ctx.cfg.spec.training.seed
    columns = ds.columns.model_dump(exclude_none=True) if ds.columns else {}
    s3 = ctx.s3() if ds.s3 or (ds.eval and ds.eval.s3) else None
    rows = load_rows(ds, ds.file_format, ctx.work_dir, s3, ctx.retry, local=ctx.local.data)
    eval_rows = (
        load_rows(
            ds.eval, ds.file_format, ctx.work_dir / "eval", s3, ctx.retry, local=ctx.local.eval
        )
        if ds.eval
        else None
    )
    prepared = data.prepare(
        rows, ds.format, columns, ds.eval_fraction, eval_rows, seed=seed, max_rows=ds.max_rows
    )
    log.info(
        "dataset: %d rows valid, %d train / %d eval, sha256 %s",
        prepared.rows,
        len(prepared.train),
        len(prepared.eval),
        prepared.sha256[:12],
    )
    return prepared


def sft_config_kwargs(
    cfg: TrainerConfig,
    output_dir: Path,
    device_dtype: str,
    on_gpu: bool,
    has_eval: bool,
    interactive: bool,
    hyper: hyperparams.Hyper | None = None,
) -> dict[str, Any]:
    """TRL SFTConfig arguments from the spec and the resolved hyper-parameters (pure;
    unit-tested). Without `hyper`, they are resolved as for a large dataset."""
    t = cfg.spec.training
    h = hyper or hyperparams.resolve(t, cfg.spec.lora, hyperparams.UNKNOWN_ROWS, None)
    kw: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": h.learning_rate,
        "lr_scheduler_type": h.scheduler,
        "warmup_steps": h.warmup_steps,
        # the training batch and accumulation are the Decision's (sft_overrides): one source
        "per_device_eval_batch_size": h.per_device_batch_size,
        "max_length": t.max_seq_length,
        "packing": t.packing,
        # Enabled on the model before peft wraps it (adapters.prepare_base_for_training).
        "gradient_checkpointing": False,
        "optim": cfg.spec.effective_optimizer,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_steps": t.logging_steps,
        "eval_strategy": "steps" if (t.eval_steps and has_eval) else "no",
        "eval_steps": t.eval_steps if has_eval else None,
        # Checkpoints every N steps; time-based and SIGTERM saves come from the callback.
        "save_strategy": "steps" if t.checkpoint_steps else "no",
        "save_steps": t.checkpoint_steps or 500,
        "save_total_limit": 2,
        "save_only_model": False,
        "report_to": "none",
        "bf16": on_gpu and device_dtype == "bfloat16",
        "fp16": on_gpu and device_dtype == "float16",
        "use_cpu": not on_gpu,
        "disable_tqdm": not interactive,
        "completion_only_loss": t.completion_only_loss,
        "neftune_noise_alpha": t.neftune_noise_alpha,
        "dataset_text_field": "text",
        "dataloader_num_workers": 0,
    }
    if t.max_steps is not None:
        kw["max_steps"] = t.max_steps
    else:
        kw["num_train_epochs"] = t.epochs
    return kw


def prepare_model(
    cfg: TrainerConfig,
    base_path: Path,
    device: model_loading.Device,
    train_rows: int | None = None,
    world_size: int = 1,
    start_adapter: Path | None = None,
) -> tuple[Any, optimizations.Decision]:
    """Choose the hyper-parameters, plan and strategy (DDP/FSDP for more than one rank)
    for this GPU, load the base, apply the techniques, attach LoRA. Returns the model and
    the decision in its final form (what the techniques could not apply is noted in it).

    The plan needs only the model's config, so a budget the model cannot fit fails
    before the weights are loaded. `train_rows` feeds the defaults rule (hyperparams)."""
    from peft import get_peft_model
    from transformers import AutoConfig, set_seed

    spec = cfg.spec
    trust = spec.base_model.trust_remote_code
    free = model_loading.free_gpu_gib() if device.on_gpu else None
    config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust)
    try:
        decision = optimizations.decide(
            spec,
            config,
            device.on_gpu,
            free,
            optimizations.liger_available(),
            train_rows,
            world_size,
        )
    except memory_planner.NoFit as e:
        raise ConfigInvalid(
            f"the model does not fit in GPU memory: {e}; use a larger GPU, more GPUs "
            "(resources.gpus, strategy fsdp), method qlora, a shorter training.maxSeqLength "
            "or a larger training.memoryBudgetGiB"
        ) from e
    fsdp = decision.strategy == "fsdp"
    if fsdp:
        optimizations.fsdp_env()
    model = model_loading.load_model(
        base_path,
        device,
        quantization=spec.effective_quantization,
        trust_remote_code=trust,
        fsdp=fsdp,
    )
    decision = optimizations.apply_before_adapters(model, decision)
    set_seed(spec.training.seed)  # the adapters' initialization
    if start_adapter is not None:  # spec.startFrom: its LoRA shape replaces spec.lora
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, adapters.build_lora_config(spec.lora))
    decision = optimizations.apply_after_adapters(model, decision)
    log_plan(decision)
    return model, decision


def log_plan(decision: optimizations.Decision) -> None:
    log.info(
        "plan: %s over %d rank(s), micro-batch %d × accumulation %d per rank, %d/%d layers "
        "checkpointed; techniques: %s%s",
        decision.strategy,
        decision.world_size,
        decision.micro_batch,
        decision.grad_accum,
        decision.checkpointed_layers,
        decision.layers,
        ", ".join(decision.techniques) or "none",
        "".join(f"; {n}" for n in decision.notes),
    )
    if decision.hyper is not None:
        h = decision.hyper
        log.info(
            "schedule: learning rate %g, %s, %d warmup steps, %d rows per step, %d steps%s",
            h.learning_rate,
            h.scheduler,
            h.warmup_steps,
            h.rows_per_step,
            h.total_steps,
            f" (chosen by the defaults rule: {', '.join(h.chosen)})" if h.chosen else "",
        )


#: Called after each out-of-memory recovery with the plan then running, the split of each
#: micro-batch and the recoveries so far.
OnOom = Callable[[optimizations.Decision, int, int], None]


def build_trainer(
    cfg: TrainerConfig,
    model: Any,
    decision: optimizations.Decision,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any,
    output_dir: Path,
    device: model_loading.Device,
    callbacks: list[Any],
    interactive: bool = False,
    on_oom: OnOom | None = None,
) -> Any:
    """TRL's SFTTrainer with the spec's arguments and the decision's batch and kernels;
    with out-of-memory recovery when the decision has it."""
    from trl import SFTConfig, SFTTrainer

    kw = sft_config_kwargs(
        cfg,
        output_dir,
        device.dtype_name,
        device.on_gpu,
        eval_ds is not None,
        interactive,
        decision.hyper,
    ) | optimizations.sft_overrides(decision)
    if cfg.spec.objective == "dpo":
        return dpo.build_trainer(
            model,
            dpo.config_kwargs(kw, cfg.spec),
            cfg.spec.effective_dpo.reference,
            tokenizer,
            train_ds,
            eval_ds,
            callbacks,
            mixins=(FirstStepWarmup,),
        )
    bases: tuple[type, ...] = (FirstStepWarmup, SFTTrainer)
    if decision.oom_recovery:
        bases = (oom_recovery.OomRecovery, *bases)
    cls: type = type("LorafSFTTrainer", bases, {})
    trainer = cls(
        model=model,
        args=SFTConfig(**kw),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if decision.oom_recovery:
        recover_oom(trainer, decision, on_oom)
    return trainer


def recover_oom(trainer: Any, decision: optimizations.Decision, on_oom: OnOom | None) -> None:
    """Wire OomRecovery's hooks: once splitting is exhausted every decoder layer is
    checkpointed, and `on_oom` hears of the plan that runs from then on."""
    running = decision

    def escalate() -> bool:
        nonlocal running
        more = optimizations.checkpoint_all(trainer.model, running)
        if more is None:
            return False
        running = more
        return True

    def recovered(split: int, retries: int) -> None:
        if on_oom is not None:
            on_oom(running, split, retries)

    trainer.escalate = escalate
    trainer.on_oom = recovered


class FirstStepWarmup:
    """Trainer mixin: the library's warmup starts at learning rate 0, so the first
    optimizer step changes nothing; shift the schedule by one step
    (hyperparams.warmup_lambda)."""

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        from torch.optim.lr_scheduler import LambdaLR

        created = getattr(self, "lr_scheduler", None) is None
        sched = super().create_scheduler(num_training_steps, optimizer)  # type: ignore[misc]
        if created and isinstance(sched, LambdaLR) and sched.last_epoch == 0:
            sched.lr_lambdas = [hyperparams.warmup_lambda(f) for f in sched.lr_lambdas]
            lrs = [base * f(0) for base, f in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
            for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            sched._last_lr = lrs
        return sched


def train_or_fail(trainer: Any, resume: Path | None) -> Any:
    """trainer.train(); a CUDA out-of-memory error that recovery could not absorb (one
    row per pass, or recovery off) fails the run for good: retrying the same spec on the
    same GPU would only fail again."""
    import torch

    try:
        return trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except torch.OutOfMemoryError as e:
        first = str(e).splitlines()[0][:300]
        raise ConfigInvalid(
            f"CUDA out of memory at step {trainer.state.global_step} ({first}); use a shorter "
            "training.maxSeqLength, method qlora, gradientCheckpointing, a smaller "
            "memoryBudgetGiB or a larger GPU"
        ) from e


def restore_finished(trainer: Any, checkpoint: Path) -> None:
    """Load a final checkpoint's adapter weights and state without training a step."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_peft_weights(str(checkpoint), device="cpu"))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))


def run_metrics(state: Any, out: Any, prior_runtime_s: float) -> dict[str, Any]:
    """Steps, loss and training time of the whole run, over every process that trained
    it (a resumed process's TrainOutput covers only its own steps)."""
    loss = run_train_loss(state.log_history)
    if loss is None and out is not None:
        loss = out.training_loss
    runtime = prior_runtime_s + (float(out.metrics.get("train_runtime") or 0.0) if out else 0.0)
    return {
        "trainLoss": loss,
        "steps": state.global_step,
        "epochs": state.epoch,
        "trainRuntimeSeconds": round(runtime, 3),
    }


def hyperparameters(
    cfg: TrainerConfig, decision: optimizations.Decision, on_gpu: bool
) -> dict[str, Any]:
    """What the run trained with: the spec, with the values the defaults rule chose and
    the plan the trainer ran (on a CPU, spec.training.optimizations is ignored and left
    out: only the techniques actually used are listed, under plan.techniques)."""
    spec = cfg.spec
    q = spec.effective_quantization
    training = spec.training.to_dict() | {
        "optimizer": decision.optimizer or spec.effective_optimizer
    }
    h = decision.hyper
    if h is not None:
        training |= {
            "learningRate": h.learning_rate,
            "scheduler": h.scheduler,
            "warmupSteps": h.warmup_steps,
            "perDeviceBatchSize": h.per_device_batch_size,
            "gradientAccumulationSteps": h.gradient_accumulation_steps,
        }
        training.pop("warmupRatio", None)
    training["gradientCheckpointing"] = decision.checkpointed_layers > 0
    if not on_gpu:
        training.pop("optimizations", None)
        training.pop("memoryBudgetGiB", None)
    return {
        "method": spec.method,
        "lora": spec.lora.to_dict() | {"alpha": spec.lora.effective_alpha},
        "quantization": q.to_dict() if q else None,
        "training": training,
        "plan": decision.status() | {"device": "cuda" if on_gpu else "cpu"},
    }


# ------------------------------------------------------------------ the run, stage by stage


@dataclass(frozen=True)
class Base:
    """The base model as found: where it is, what it is, on which device it trains."""

    device: model_loading.Device
    resolved: model_loading.ResolvedModel
    path: Path
    tokenizer: Any


@dataclass(frozen=True)
class Datasets:
    """The prepared rows as TRL's datasets (eval None without held-out rows)."""

    train: Any
    eval: Any | None


@dataclass(frozen=True)
class Fitted:
    """What training left: the trainer (its model and state) and the run's timing."""

    trainer: Any
    out: Any  # TrainOutput; None when a final checkpoint was restored
    prior_runtime_s: float


def run(ctx: RunContext) -> dict[str, Any]:
    """validate → dataset → base → model and plan → train → evaluate → upload; returns
    the result (empty on every rank but rank 0)."""
    cfg, pub = ctx.cfg, ctx.publisher
    rk = join_ranks(ctx)
    pub.update({"runNumber": cfg.run, "stage": "Validating"}, force=True)
    check_storage(ctx)
    prepared = load_dataset(ctx)
    pub.update({"stage": "Loading"}, force=True)
    base = load_base(ctx, rk)
    model, decision = prepare_model(
        cfg, base.path, base.device, len(prepared.train), rk.world_size, fetch_start_adapter(ctx)
    )
    params = publish_parameters(pub, model)
    datasets = to_datasets(cfg.spec, base.tokenizer, prepared)
    # objective dpo: the starting model's held-out preference accuracy, before it changes
    system = cfg.spec.dataset.system_prompt
    dpo_run = cfg.spec.objective == "dpo"
    start = (
        dpo.preference_accuracy(model, base.tokenizer, prepared.eval, system) if dpo_run else None
    )
    remaining = Remaining(
        eval_rows=len(prepared.eval) if datasets.eval is not None else 0,
        prompts=min(cfg.spec.training.eval_prompts, len(prepared.eval)),
        max_new_tokens=ctx.max_new_tokens,
        upload_bytes=upload_size_estimate(*params, cfg.spec.output),
    )
    fitted = fit(ctx, rk, model, decision, base, datasets, remaining)
    # the ETA counts down what is left (scoring, generations, upload), re-sent every status
    # interval so the status never stands still for minutes
    with Ticker(pub, remaining, cfg.spec.training.status_interval_seconds):
        report = evaluate_run(
            ctx, rk, fitted, decision, base.tokenizer, prepared, datasets, remaining, start
        )
        adapter_dir = stage_adapter(
            ctx, rk, fitted.trainer, base.tokenizer, decision, remaining, report["evalLossAdapter"]
        )
        if adapter_dir is None:
            return {}  # rank 0 alone uploads (and publishes the result)
        metrics = run_metrics(fitted.trainer.state, fitted.out, fitted.prior_runtime_s)
        del fitted, model  # the training copy goes before merging loads the base afresh
        result = upload(ctx, base, prepared, decision, adapter_dir, report, metrics, params)
        remaining.done("upload")
        pub.update({"stage": "Done", "result": result, **remaining.fields()}, force=True)
        return result


def join_ranks(ctx: RunContext) -> ranks.Ranks:
    """This process's rank, joined to the others, and its share of the grace period."""
    rk = ranks.current()
    ranks.init(rk)
    grace = ctx.cfg.spec.resources.termination_grace_period_seconds
    ctx.preemption.grace_s = launch.rank_grace_s(grace) if ranks.under_torchrun() else grace
    # Ranks step in lockstep: a SIGTERM stops them at the same step end (CheckpointCallback
    # agrees on it), never by interrupting one rank mid-step.
    ctx.preemption.interruptible = not rk.distributed
    return rk


def load_base(ctx: RunContext, rk: ranks.Ranks) -> Base:
    spec = ctx.cfg.spec
    device = model_loading.pick_device(rk.local_rank)
    if spec.resources.gpus >= 1 and not device.on_gpu:
        log.warning(
            "resources.gpus is %d but no CUDA device is visible: training on CPU",
            spec.resources.gpus,
        )
    bm = spec.base_model
    resolved = model_loading.resolve_source(
        bm, ctx.s3() if bm.s3 else None, ctx.retry, local=ctx.local.model
    )
    path = model_loading.materialize(resolved, bm.trust_remote_code)
    return Base(device, resolved, path, model_loading.load_tokenizer(path, bm.trust_remote_code))


def publish_parameters(pub: StatusPublisher, model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, logged and in status.progress."""
    trainable, total = adapters.count_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    log.info("trainable params: %d of %d (%.3f%%)", trainable, total, pct)
    pub.update(
        {"trainableParams": trainable, "totalParams": total, "trainablePercent": round(pct, 4)},
        force=True,
    )
    return trainable, total


def to_datasets(spec: LoRAFineTuneSpec, tokenizer: Any, prepared: data.Prepared) -> Datasets:
    """TRL's records: SFT text (with the chat template when the tokenizer has one) or
    DPO preference pairs."""
    from datasets import Dataset

    chat = bool(getattr(tokenizer, "chat_template", None))
    co = spec.training.completion_only_loss
    system = spec.dataset.system_prompt

    def record(e: data.Example) -> dict[str, Any]:
        if spec.objective == "dpo":
            return data.preference_record(e, chat, system)
        return data.to_record(e, chat, co, system)

    return Datasets(
        Dataset.from_list([record(e) for e in prepared.train]),
        Dataset.from_list([record(e) for e in prepared.eval]) if prepared.eval else None,
    )


def fit(
    ctx: RunContext,
    rk: ranks.Ranks,
    model: Any,
    decision: optimizations.Decision,
    base: Base,
    datasets: Datasets,
    remaining: Remaining,
) -> Fitted:
    """Resume from the newest checkpoint and train to the end; SIGTERM raises Preempted
    (with the last step checkpointed)."""
    from peft.helpers import disable_input_dtype_casting

    from .callbacks import CheckpointCallback, ProgressCallback

    pub, spec = ctx.publisher, ctx.cfg.spec
    trainer_dir = ctx.work_dir / "trainer"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    # One download per pod (its ranks share the work folder), then everyone reads it.
    resume = fetch_latest_checkpoint(ctx.store, trainer_dir, download=rk.local_rank == 0)
    ranks.barrier()
    prior_runtime = prior_runtime_seconds(resume)
    ckpt_cb = CheckpointCallback(
        ctx.store,
        ctx.preemption,
        spec.training.checkpoint_minutes,
        prior_runtime_s=prior_runtime,
        ranks=rk,
    )

    def on_oom(plan: optimizations.Decision, split: int, retries: int) -> None:
        pub.update({"oomRetries": retries, "plan": plan.status(split)}, force=True)

    trainer = build_trainer(
        ctx.cfg,
        model,
        decision,
        base.tokenizer,
        datasets.train,
        datasets.eval,
        trainer_dir,
        base.device,
        [
            ProgressCallback(pub, log_lines=not ctx.interactive and rk.main, remaining=remaining),
            ckpt_cb,
        ],
        interactive=ctx.interactive,
        on_oom=on_oom,
    )
    pub.update({"plan": decision.status()}, force=True)
    ctx.preemption.deferred = True
    if ctx.preemption.requested:
        raise Preempted("SIGTERM received before training started; nothing to checkpoint")
    if resume is not None and training_complete(trainer_state(resume)):
        restore_finished(trainer, resume)
        publish_finished(pub, trainer.state)
        out = None
    else:
        try:
            with disable_input_dtype_casting(trainer.model, active=decision.keep_input_dtype):
                out = train_or_fail(trainer, resume)
        except StepInterrupted as e:
            saved = ckpt_cb.save_now(trainer)
            raise Preempted(
                f"SIGTERM at step {trainer.state.global_step}/{trainer.state.max_steps}: {e}; "
                + (f"checkpoint step-{saved} stored" if saved else "no checkpoint yet")
            ) from e
    optimizations.release_compiled(trainer.model, decision)
    state = trainer.state
    if ctx.preemption.requested and state.global_step < state.max_steps:
        saved = ckpt_cb.saved_steps[-1] if ckpt_cb.saved_steps else None
        raise Preempted(
            f"SIGTERM at step {state.global_step}/{state.max_steps}; checkpoint step-{saved} saved"
        )
    return Fitted(trainer, out, prior_runtime)


def publish_finished(pub: StatusPublisher, state: Any) -> None:
    """A final checkpoint was restored: training is at its end without a step run."""
    log.info(
        "training already complete at step %d of %d (checkpoint step-%d): "
        "evaluating and uploading only",
        state.global_step,
        state.max_steps,
        state.global_step,
    )
    pub.update(
        {
            "step": state.global_step,
            "totalSteps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "percent": 100.0,
            "etaSeconds": 0.0,
        },
        force=True,
    )


def evaluate_run(
    ctx: RunContext,
    rk: ranks.Ranks,
    fitted: Fitted,
    decision: optimizations.Decision,
    tokenizer: Any,
    prepared: data.Prepared,
    datasets: Datasets,
    remaining: Remaining,
    preference_start: float | None,
) -> dict[str, Any]:
    """The evaluation report: held-out loss of base and adapter, greedy answers to
    held-out prompts, the loss history and (objective dpo) the preference accuracy."""
    pub, spec = ctx.publisher, ctx.cfg.spec
    trainer, state = fitted.trainer, fitted.trainer.state
    dpo_run = spec.objective == "dpo"
    system = spec.dataset.system_prompt
    remaining.begin("evalLoss")
    pub.update({"stage": "Evaluating", **remaining.fields()}, force=True)
    # DPO's eval loss against a reference equal to the base says nothing: preference
    # accuracy instead
    losses = evaluate.eval_losses(trainer, datasets.eval is not None and not dpo_run)
    remaining.done("evalLoss")
    remaining.begin("generations")
    pub.update(remaining.fields(), force=True)

    def answered(done: int, of: int, seconds: float) -> None:
        remaining.refine("generations", seconds / done * of)
        pub.update(remaining.fields())

    # Rank 0 alone generates: under DDP its model is whole; under FSDP no rank holds
    # the whole model, so the report has no generations.
    prompts = 0 if decision.strategy == "fsdp" else spec.training.eval_prompts
    gens = (
        evaluate.generations(
            trainer.model,
            tokenizer,
            prepared.eval,
            prompts,
            ctx.max_new_tokens,
            on_answer=answered,
            system_prompt=system,
        )
        if rk.main
        else []
    )
    remaining.done("generations")
    history = evaluate.loss_history(state.log_history)
    if losses["evalLossAdapter"] is not None:
        history["eval"].append([state.global_step, losses["evalLossAdapter"]])
    report = evaluate.build_report(losses, gens, len(prepared.eval), history)
    if dpo_run:
        report["preferenceAccuracyStart"] = preference_start
        report["preferenceAccuracyAdapter"] = dpo.preference_accuracy(
            trainer.model, tokenizer, prepared.eval, system
        )
        report["rewardMargins"] = dpo.margin_history(state.log_history)
        log.info(
            "held-out preference accuracy: start %s → adapter %s",
            preference_start,
            report["preferenceAccuracyAdapter"],
        )
    log.info("eval loss base %s → adapter %s", losses["evalLossBase"], losses["evalLossAdapter"])
    return report


def stage_adapter(
    ctx: RunContext,
    rk: ranks.Ranks,
    trainer: Any,
    tokenizer: Any,
    decision: optimizations.Decision,
    remaining: Remaining,
    eval_loss: float | None,
) -> Path | None:
    """The upload stage's start: the adapter, in spec.output.adapterDtype, staged at
    <work dir>/upload/adapter; None on every rank but rank 0 (under FSDP every rank takes
    part in gathering it first)."""
    remaining.begin("upload")
    ctx.publisher.update(
        {"stage": "Uploading", "evalLoss": eval_loss, **remaining.fields()}, force=True
    )
    dtype = ctx.cfg.spec.output.adapter_dtype
    stage_dir = ctx.work_dir / "upload"
    if decision.strategy == "fsdp":
        fsdp_dir = ctx.work_dir / "fsdp-adapter"
        trainer.save_model(str(fsdp_dir))  # every rank: the full state is gathered
    if not rk.main:
        return None
    shutil.rmtree(stage_dir, ignore_errors=True)
    out = stage_dir / ADAPTER_DIR
    if decision.strategy == "fsdp":
        return artifacts.adapter_from_folder(fsdp_dir, tokenizer, out, dtype)
    return artifacts.save_adapter(trainer.model, tokenizer, out, dtype)


# The report's figures the manifest repeats under metrics (the operator's status.evaluation).
MANIFEST_METRICS = (
    "evalLossBase",
    "evalLossAdapter",
    "perplexityBase",
    "perplexityAdapter",
    "preferenceAccuracyStart",
    "preferenceAccuracyAdapter",
)


def upload(
    ctx: RunContext,
    base: Base,
    prepared: data.Prepared,
    decision: optimizations.Decision,
    adapter_dir: Path,
    report: dict[str, Any],
    metrics: dict[str, Any],
    params: tuple[int, int],
) -> dict[str, Any]:
    """Merged weights (if asked), the report files and the manifest beside the adapter,
    all uploaded (manifest last); returns the run's result (status.progress.result)."""
    cfg = ctx.cfg
    out = cfg.spec.output
    stage_dir = adapter_dir.parent
    if out.merged_weights:
        artifacts.merge_export(
            base.path,
            adapter_dir,
            stage_dir / MERGED_DIR,
            out.adapter_dtype,
            cfg.spec.base_model.trust_remote_code,
        )
    evaluate.write_report(stage_dir, report, f"{cfg.namespace}/{cfg.name} run {cfg.run}")
    files = artifacts.describe_files(stage_dir)
    trainable, total = params
    manifest = artifacts.build_manifest(
        files=files,
        identity={
            "namespace": cfg.namespace,
            "name": cfg.name,
            "uid": cfg.uid,
            "generation": cfg.generation,
            "run": cfg.run,
        },
        base_model={
            "name": base.resolved.name,
            "revision": base.resolved.revision,
            "ggufFile": base.resolved.gguf_file,
        },
        dataset={
            "source": _dataset_source(cfg, ctx.local),
            "format": cfg.spec.dataset.format,
            "sha256": prepared.sha256,
            "rows": prepared.rows,
            "trainRows": len(prepared.train),
            "evalRows": len(prepared.eval),
        },
        hyperparameters=hyperparameters(cfg, decision, base.device.on_gpu),
        metrics={
            **metrics,
            **{k: report[k] for k in MANIFEST_METRICS if k in report},
            "trainableParams": trainable,
            "totalParams": total,
        },
        chat=data.chat_record(base.tokenizer, cfg.spec.dataset.system_prompt),
    )
    artifacts.upload_run(ctx.store, stage_dir, manifest)
    return run_result(RunLayout(ctx.store.uri()), files, report, out.merged_weights)


def run_result(
    layout: RunLayout, files: list[artifacts.FileEntry], report: dict[str, Any], merged: bool
) -> dict[str, Any]:
    """status.progress.result: where the run's files are, and its evaluation."""
    weights = next(f for f in files if f.path == f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}")
    result = {
        "adapterUri": layout.adapter_uri,
        "mergedUri": layout.merged_uri if merged else None,
        "manifestUri": layout.manifest_uri,
        "evalReportUri": layout.eval_report_uri,
        "sizeBytes": sum(f.size for f in files if f.path.startswith(ADAPTER_DIR + "/")),
        "sha256": weights.sha256,
        "evalLossBase": report["evalLossBase"],
        "evalLossAdapter": report["evalLossAdapter"],
        "perplexityBase": report["perplexityBase"],
        "perplexityAdapter": report["perplexityAdapter"],
        "preferenceAccuracyStart": report.get("preferenceAccuracyStart"),
        "preferenceAccuracyAdapter": report.get("preferenceAccuracyAdapter"),
    }
    return {k: v for k, v in result.items() if v is not None}


def fetch_start_adapter(ctx: RunContext) -> Path | None:
    """spec.startFrom's adapter, downloaded and checked against its run's manifest (the
    operator resolves startFrom.fineTune to that run's prefix: cfg.startAdapterUri)."""
    from .serve import AdapterInvalid, fetch_adapter

    spec = ctx.cfg.spec
    uri = ctx.local.start_adapter or ctx.cfg.start_adapter_uri
    if uri is None and spec.start_from is not None:
        uri = spec.start_from.s3
    if uri is None:
        if spec.start_from is not None:
            raise ConfigInvalid(
                f"startFrom.fineTune {spec.start_from.fine_tune!r} was not resolved to an "
                "adapter (the operator sets startAdapterUri; `loraf run` needs startFrom.path)"
            )
        return None
    dest = ctx.work_dir / "start-adapter"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        out = fetch_adapter(str(uri), dest, spec.output.endpoint, spec.output.region)
    except AdapterInvalid as e:
        raise ConfigInvalid(f"startFrom: {e}") from e
    log.info("starting from adapter %s", uri)
    return out


def upload_size_estimate(trainable: int, total: int, output: OutputSpec) -> int:
    """Bytes the run will upload: the adapter, and merged weights (16-bit) if asked."""
    per = 4 if output.adapter_dtype == "float32" else 2
    return trainable * per + (total * 2 if output.merged_weights else 0)


def _dataset_source(cfg: TrainerConfig, local: LocalInputs) -> str:
    ds = cfg.spec.dataset
    if local.data is not None:
        return local.data.as_uri()
    if ds.s3:
        return ds.s3
    if ds.pvc:
        return f"pvc://{ds.pvc.claim_name}/{ds.pvc.path.lstrip('/')}"
    return f"hf://{ds.hugging_face}:{ds.split}"
