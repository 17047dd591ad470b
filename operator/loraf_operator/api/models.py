"""The loraf API: the only place a LoRAFineTune / LoRAServing field is declared.

Each field carries its type, default, bounds and description here; `crdgen` turns these
models into the CRD YAML (and docs/api.md), so `kubectl explain` shows the same text.
Cross-field rules live twice on purpose: as a `model_validator` (the trainer and operator
parse with these models) and as CEL in `x-kubernetes-validations` (the apiserver rejects
bad manifests at apply time). `tests/unit/test_api_models.py` keeps the two in step.

Pure pydantic: importable without torch or the Kubernetes client.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

GROUP = "loraf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINETUNE_KIND = "LoRAFineTune"
FINETUNE_PLURAL = "lorafinetunes"
SERVING_KIND = "LoRAServing"
SERVING_PLURAL = "loraservings"

# Bounds shared by pydantic and the CRD (CEL cost estimates need maxLength/maxItems).
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
HF_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ADAPTER_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
URL_PATTERN = r"^https?://.+$"
MAX_URI = 1024
MAX_NAME = 253
MAX_LIST = 64

ShortStr = Annotated[str, Field(min_length=1, max_length=256)]
NameStr = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
ArgStr = Annotated[str, Field(max_length=1024)]
# Booleans are strict like the apiserver's: "yes"/"no" strings are errors, not coerced.
Flag = Annotated[bool, Strict()]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `field_path` points the error at a child field."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


# `default: {}` on an object whose fields all have defaults: the apiserver then fills in the
# nested defaults too, so stored objects (and printer columns) show the effective values.
_OBJECT_DEFAULT: dict[str, Any] = {"default": {}}


def _count_set(*values: object) -> int:
    return sum(v is not None for v in values)


# ---------------------------------------------------------------------------------------------
# base classes


class SpecModel(BaseModel):
    """Spec objects: camelCase on the wire, unknown fields are errors, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        protected_namespaces=(),
    )

    def to_dict(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(BaseModel):
    """Status objects: written only by our components, so unknown fields are ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        protected_namespaces=(),
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# shared small types


class SecretKeyRef(SpecModel):
    """A key of a Secret in the resource's namespace. Secret values never appear in a spec."""

    name: str = Field(
        description="Name of the Secret in the same namespace.",
        min_length=1,
        max_length=MAX_NAME,
    )
    key: str = Field(
        default="token", description="Key within the Secret.", min_length=1, max_length=MAX_NAME
    )


class S3CredentialsRef(SpecModel):
    """A Secret holding S3 access keys (mounted into the pod as env, never copied)."""

    name: str = Field(
        description="Name of the Secret in the same namespace.",
        min_length=1,
        max_length=MAX_NAME,
    )
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID",
        description="Key in the Secret holding the access key id.",
        min_length=1,
        max_length=MAX_NAME,
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        description="Key in the Secret holding the secret access key.",
        min_length=1,
        max_length=MAX_NAME,
    )


class PvcSource(SpecModel):
    """A path inside a PersistentVolumeClaim in the resource's namespace (mounted read-only)."""

    claim_name: str = Field(
        description="Name of the PersistentVolumeClaim in the same namespace.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    path: str = Field(
        default="",
        description="Path relative to the volume root (a directory or file); empty means the root.",
        max_length=MAX_URI,
    )


# ---------------------------------------------------------------------------------------------
# spec: baseModel


_BASE_MODEL_RULES = _rules(
    cel(
        "(has(self.huggingFace) ? 1 : 0) + (has(self.s3) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",
        "exactly one of huggingFace, s3 or pvc must be set",
    ),
    cel(
        "!has(self.revision) || has(self.huggingFace)",
        "revision is only allowed with huggingFace",
        ".revision",
    ),
    cel(
        "!has(self.tokenSecretRef) || has(self.huggingFace)",
        "tokenSecretRef is only allowed with huggingFace",
        ".tokenSecretRef",
    ),
)


class BaseModelSpec(SpecModel):
    """The pretrained model to adapt. Exactly one of huggingFace, s3 or pvc."""

    model_config = ConfigDict(json_schema_extra=_BASE_MODEL_RULES)

    hugging_face: str | None = Field(
        default=None,
        description="Hugging Face Hub model id, e.g. mistralai/Mistral-7B-Instruct-v0.3.",
        max_length=256,
        pattern=HF_ID_PATTERN,
    )
    s3: str | None = Field(
        default=None,
        description=(
            "s3:// prefix holding the model files (config, tokenizer, safetensors or a GGUF "
            "file), read with spec.output's endpoint and credentials."
        ),
        max_length=MAX_URI,
        pattern=S3_URI_PATTERN,
    )
    pvc: PvcSource | None = Field(
        default=None, description="Model files on a PersistentVolumeClaim."
    )
    revision: str | None = Field(
        default=None,
        description="Hub revision (branch, tag or commit sha); only with huggingFace.",
        max_length=256,
    )
    gguf_file: str | None = Field(
        default=None,
        description=(
            "Name of a GGUF file within the source to load (dequantized on load), e.g. "
            "SmolLM2-135M-Instruct.Q4_1.gguf. Unset loads safetensors weights."
        ),
        max_length=512,
        pattern=r"^[^\s]+\.gguf$",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token (for gated models), exposed as "
        "HF_TOKEN.",
    )
    trust_remote_code: Flag = Field(
        default=False,
        description="Allow the model repository's own Python code to run. Off by default: it "
        "executes code from the model source inside the training pod.",
    )

    @model_validator(mode="after")
    def _check(self) -> BaseModelSpec:
        if _count_set(self.hugging_face, self.s3, self.pvc) != 1:
            raise ValueError("baseModel: exactly one of huggingFace, s3 or pvc must be set")
        if self.revision is not None and self.hugging_face is None:
            raise ValueError("baseModel.revision is only allowed with huggingFace")
        if self.token_secret_ref is not None and self.hugging_face is None:
            raise ValueError("baseModel.tokenSecretRef is only allowed with huggingFace")
        return self

    @property
    def display_name(self) -> str:
        """Short human name of the model (for status.model and logs)."""
        if self.hugging_face:
            name = self.hugging_face
        elif self.s3:
            name = self.s3
        else:
            assert self.pvc is not None
            name = f"pvc://{self.pvc.claim_name}/{self.pvc.path.lstrip('/')}".rstrip("/")
        return f"{name.rstrip('/')}/{self.gguf_file}" if self.gguf_file else name


# ---------------------------------------------------------------------------------------------
# spec: dataset

DatasetFormat = Literal["alpaca", "chat", "prompt-completion", "text"]
FileFormat = Literal["auto", "jsonl", "json", "parquet", "csv"]

_DATA_SOURCE_RULES = _rules(
    cel(
        "(has(self.s3) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.huggingFace) ? 1 : 0) == 1",
        "exactly one of s3, pvc or huggingFace must be set",
    ),
)


class DataSource(SpecModel):
    """Where rows come from. Exactly one of s3, pvc or huggingFace."""

    model_config = ConfigDict(json_schema_extra=_DATA_SOURCE_RULES)

    s3: str | None = Field(
        default=None,
        description="s3:// URI of one file (jsonl, json, parquet or csv) or of a prefix whose "
        "files are all read.",
        max_length=MAX_URI,
        pattern=S3_URI_PATTERN,
    )
    pvc: PvcSource | None = Field(
        default=None, description="A file or directory on a PersistentVolumeClaim."
    )
    hugging_face: str | None = Field(
        default=None,
        description="Hugging Face Hub dataset id, e.g. tatsu-lab/alpaca.",
        max_length=256,
        pattern=HF_ID_PATTERN,
    )
    split: str = Field(
        default="train",
        description="Dataset split to read; only used with huggingFace.",
        min_length=1,
        max_length=128,
    )

    @model_validator(mode="after")
    def _check_source(self) -> DataSource:
        if _count_set(self.s3, self.pvc, self.hugging_face) != 1:
            raise ValueError("dataset: exactly one of s3, pvc or huggingFace must be set")
        return self


class ColumnMapping(SpecModel):
    """Column-name overrides when the dataset's columns differ from the format's defaults."""

    instruction: str | None = Field(
        default=None, description="Column for alpaca `instruction`.", max_length=128
    )
    input: str | None = Field(
        default=None, description="Column for alpaca `input` (optional context).", max_length=128
    )
    output: str | None = Field(
        default=None, description="Column for alpaca `output` (the answer).", max_length=128
    )
    messages: str | None = Field(
        default=None, description="Column for chat `messages`.", max_length=128
    )
    prompt: str | None = Field(
        default=None, description="Column for prompt-completion `prompt`.", max_length=128
    )
    completion: str | None = Field(
        default=None, description="Column for prompt-completion `completion`.", max_length=128
    )
    text: str | None = Field(default=None, description="Column for plain `text`.", max_length=128)


class DatasetSpec(DataSource):
    """Training data: a source, its row format and how to hold out evaluation rows."""

    format: DatasetFormat = Field(
        description=(
            "Row format: alpaca (instruction/input/output), chat (messages: [{role, content}]), "
            "prompt-completion (prompt/completion) or text (raw text)."
        ),
    )
    file_format: FileFormat = Field(
        default="auto",
        description="File format for s3/pvc sources; auto picks it from the file extension.",
    )
    columns: ColumnMapping | None = Field(default=None, description="Column-name overrides.")
    eval_fraction: float = Field(
        default=0.1,
        description="Fraction of rows held out for evaluation when no eval source is given.",
        ge=0,
        le=0.5,
    )
    eval: DataSource | None = Field(
        default=None,
        description="A separate evaluation source (same format); replaces evalFraction.",
    )
    max_rows: int | None = Field(
        default=None,
        description="Use at most this many training rows (after shuffling with the seed).",
        ge=1,
    )


# ---------------------------------------------------------------------------------------------
# spec: method, lora, quantization

Method = Literal["lora", "qlora"]
DType = Literal["bfloat16", "float16", "float32"]


class LoRASpec(SpecModel):
    """LoRA adapter shape (peft LoraConfig)."""

    r: int = Field(
        default=16,
        description="LoRA rank: the inner dimension of the adapter matrices. Typical 8-64; "
        "higher means more trainable parameters and capacity.",
        ge=1,
        le=1024,
    )
    alpha: int | None = Field(
        default=None,
        description="LoRA scaling numerator (lora_alpha); the update is scaled by alpha/r "
        "(alpha/sqrt(r) with useRslora). Unset means 2*r.",
        ge=1,
        le=65536,
    )
    dropout: float = Field(
        default=0.05, description="Dropout on the adapter input, in [0, 1).", ge=0, lt=1
    )
    target_modules: list[ShortStr] = Field(
        default=["all-linear"],
        description='Module names to adapt (e.g. [q_proj, v_proj]) or ["all-linear"] for every '
        "linear layer except the output head.",
        min_length=1,
        max_length=MAX_LIST,
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        default="none", description="Which bias terms to train alongside the adapter."
    )
    use_dora: Flag = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: Flag = Field(
        default=False, description="Rank-stabilized LoRA: scale by alpha/sqrt(r)."
    )
    modules_to_save: list[ShortStr] = Field(
        default=[],
        description="Extra modules trained in full and saved with the adapter (e.g. lm_head).",
        max_length=MAX_LIST,
    )

    @property
    def effective_alpha(self) -> int:
        """alpha, or 2*r when unset."""
        return self.alpha if self.alpha is not None else 2 * self.r


class QuantizationSpec(SpecModel):
    """How the frozen base weights are quantized for QLoRA (bitsandbytes)."""

    bits: Literal[4, 8] = Field(default=4, description="Bits per base weight.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: Flag = Field(
        default=True, description="Also quantize the quantization constants."
    )
    compute_dtype: DType = Field(
        default="bfloat16", description="Dtype of matmuls on dequantized weights."
    )


# ---------------------------------------------------------------------------------------------
# spec: training

Scheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]
Optimizer = Literal["paged_adamw_8bit", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "sgd"]

_TRAINING_RULES = _rules(
    cel("has(self.epochs) != has(self.maxSteps)", "exactly one of epochs or maxSteps must be set"),
)


class Optimizations(SpecModel):
    """Speed and memory techniques of the trainer on a GPU (each switchable; the benchmark
    in bench/README.md shows what each contributes). Ignored on a CPU."""

    planner: Flag = Field(
        default=True,
        description="Pick the micro-batch, gradient accumulation and how many decoder layers "
        "to checkpoint from the GPU's free memory (or memoryBudgetGiB), keeping "
        "perDeviceBatchSize × gradientAccumulationSteps rows per optimizer step. Off: those "
        "fields and gradientCheckpointing are used as given.",
    )
    fused_kernels: Flag = Field(
        default=True,
        description="Liger kernels: fused RMSNorm, RoPE, SwiGLU and a linear cross-entropy that "
        "never materializes the logits (Llama, Mistral, Qwen2/3, Gemma, Phi3 families).",
    )
    compile: Flag = Field(
        default=True,
        description="torch.compile each decoder layer: fuses the adapters' elementwise work; "
        "costs a compile at start and one per new sequence length.",
    )
    cpu_embeddings: Flag = Field(
        default=False,
        description="Keep the input embedding table in host memory (memory mode: saves "
        "vocab × hidden × 2 bytes of GPU memory, ~1 GiB for Llama-3-8B).",
    )
    oom_recovery: Flag = Field(
        default=True,
        description="On a CUDA out-of-memory error, split each micro-batch in two (doubling "
        "accumulation, same effective batch) and go on; at one row per pass, checkpoint every "
        "layer. Recorded in status.progress.",
    )


class TrainingSpec(SpecModel):
    """Training loop hyper-parameters (TRL SFTTrainer). Exactly one of epochs or maxSteps."""

    model_config = ConfigDict(json_schema_extra=_TRAINING_RULES)

    epochs: float | None = Field(
        default=None, description="Passes over the training rows.", gt=0, le=1000
    )
    max_steps: int | None = Field(
        default=None, description="Optimizer steps to run.", ge=1, le=10_000_000
    )
    learning_rate: float = Field(default=2e-4, description="Peak learning rate.", gt=0, le=1)
    scheduler: Scheduler = Field(
        default="cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(
        default=0.03,
        description="Fraction of steps spent warming up the learning rate.",
        ge=0,
        lt=1,
    )
    per_device_batch_size: int = Field(
        default=4,
        description="Rows per forward pass. With optimizations.planner on (GPU), "
        "perDeviceBatchSize × gradientAccumulationSteps is the batch per optimizer step and "
        "the planner chooses how to split it.",
        ge=1,
        le=4096,
    )
    gradient_accumulation_steps: int = Field(
        default=1, description="Forward passes per optimizer step.", ge=1, le=4096
    )
    max_seq_length: int = Field(
        default=1024, description="Tokens per row; longer rows are truncated.", ge=16, le=262144
    )
    packing: Flag = Field(default=False, description="Pack several short rows into one sequence.")
    gradient_checkpointing: Flag = Field(
        default=True,
        description="Recompute activations in the backward pass: less memory, ~20% slower. "
        "With optimizations.planner on (GPU), true lets the planner checkpoint as few "
        "layers as the memory needs and false forbids it.",
    )
    optimizer: Optimizer | None = Field(
        default=None,
        description="Optimizer. Unset means paged_adamw_8bit for qlora, adamw_torch for lora.",
    )
    seed: int = Field(
        default=42, description="Seed for shuffling, the eval split and initialization.", ge=0
    )
    eval_steps: int | None = Field(
        default=None, description="Evaluate every N steps; unset evaluates only at the end.", ge=1
    )
    logging_steps: int = Field(default=1, description="Log (and report loss) every N steps.", ge=1)
    checkpoint_steps: int | None = Field(
        default=None, description="Save a resumable checkpoint every N steps.", ge=1
    )
    checkpoint_minutes: float | None = Field(
        default=10,
        description="Also save a checkpoint when this many minutes passed since the last one "
        "(so preemption loses little work). Unset disables time-based checkpoints.",
        gt=0,
    )
    status_interval_seconds: float = Field(
        default=10, description="Minimum seconds between progress updates written to status.", ge=1
    )
    completion_only_loss: Flag = Field(
        default=True, description="Compute the loss on answer tokens only, not on the prompt."
    )
    eval_prompts: int = Field(
        default=10,
        description="Held-out prompts answered by both the base model and the adapter for the "
        "evaluation report (0 disables).",
        ge=0,
        le=1000,
    )
    memory_budget_gi_b: float | None = Field(
        default=None,
        alias="memoryBudgetGiB",
        description="GPU memory the trainer may plan for (GiB); unset uses the GPU's free "
        "memory when the trainer starts.",
        gt=0,
    )
    optimizations: Optimizations = Field(
        default_factory=Optimizations, description="Speed and memory techniques (GPU only)."
    )

    @model_validator(mode="after")
    def _check_length(self) -> TrainingSpec:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("training: exactly one of epochs or maxSteps must be set")
        return self


# ---------------------------------------------------------------------------------------------
# spec: resources

Quantity = int | str

QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"

_RESOURCES_RULES = _rules(
    cel("!has(self.gpuType) || self.gpus >= 1", "gpuType needs gpus >= 1", ".gpuType"),
    cel(
        "!has(self.cpu) || type(self.cpu) == int || isQuantity(self.cpu)",
        "cpu must be a Kubernetes quantity, e.g. 4 or 500m",
        ".cpu",
    ),
    cel(
        "!has(self.memory) || type(self.memory) == int || isQuantity(self.memory)",
        "memory must be a Kubernetes quantity, e.g. 32Gi",
        ".memory",
    ),
)


class BaseResources(SpecModel):
    """Compute resources of a pod."""

    model_config = ConfigDict(json_schema_extra=_RESOURCES_RULES)

    gpus: int = Field(default=1, description="nvidia.com/gpu per pod (0 runs on CPU).", ge=0, le=16)
    gpu_type: str | None = Field(
        default=None,
        description="GPU product (e.g. NVIDIA-H100-80GB-HBM3), set as the node selector "
        "nvidia.com/gpu.product.",
        max_length=256,
    )
    cpu: Quantity | None = Field(
        default=None, description="CPU request (a Kubernetes quantity, e.g. 4 or 500m)."
    )
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit (e.g. 32Gi)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node selector labels."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod tolerations (core/v1 Toleration objects).",
        max_length=MAX_LIST,
    )
    image: str | None = Field(
        default=None, description="Override the container image.", max_length=MAX_URI
    )

    @model_validator(mode="after")
    def _check_gpu_type(self) -> BaseResources:
        if self.gpu_type is not None and self.gpus < 1:
            raise ValueError("resources.gpuType needs gpus >= 1")
        for name, value in (("cpu", self.cpu), ("memory", self.memory)):
            if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
                raise ValueError(f"resources.{name} must be a Kubernetes quantity, got {value!r}")
        return self


class Resources(BaseResources):
    """Compute resources and scheduling of the training pod."""

    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity (core/v1 Affinity)."
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the training pod.", max_length=MAX_NAME
    )
    image_pull_secrets: list[NameStr] = Field(
        default=[],
        description="Names of image pull Secrets.",
        max_length=MAX_LIST,
    )
    model_cache_pvc: str | None = Field(
        default=None,
        description="PersistentVolumeClaim mounted as the model cache (HF_HOME), shared "
        "across runs.",
        max_length=MAX_NAME,
    )
    termination_grace_period_seconds: int = Field(
        default=120,
        description="Seconds the training pod gets between SIGTERM (preemption, eviction, "
        "suspend) and SIGKILL. The trainer plans its shutdown within it: it lets the "
        "running step finish if there is time, else interrupts it, stores a checkpoint and "
        "exits 75 (Preempted, retried without counting against backoffLimit) a margin "
        "before the end. Leave room for one checkpoint upload.",
        ge=1,
        le=86400,
    )


# ---------------------------------------------------------------------------------------------
# spec: output, serving


class StorageRetry(SpecModel):
    """How the trainer rides out an unreachable S3 (connection errors, timeouts, 5xx)."""

    timeout_seconds: int = Field(
        default=900,
        description="How long one S3 transfer (upload, download, listing) keeps retrying, "
        "with exponential backoff, while S3 is unreachable; meanwhile status.progress."
        "storageError says why. Then the trainer exits 69 (StorageUnavailable), which the Job "
        "retries without counting it against backoffLimit; the retry resumes from the last "
        "stored checkpoint (a finished run only evaluates and uploads). Wrong credentials are "
        "never retried (exit 77, StorageAccessDenied). 0 gives up at the first failure.",
        ge=0,
        le=86400,
    )
    connect_timeout_seconds: float = Field(
        default=10,
        description="Seconds to wait for a connection to S3 before the attempt counts as failed.",
        gt=0,
        le=600,
    )
    read_timeout_seconds: float = Field(
        default=60,
        description="Seconds without a byte from S3 before a request counts as hung and is "
        "retried (a hung server shows in the log and in status.progress.storageError).",
        gt=0,
        le=3600,
    )


class OutputSpec(SpecModel):
    """Where artifacts go: <s3>/run-<n>/{adapter/, merged/, eval/, checkpoints/, manifest.json}."""

    s3: str = Field(
        description="s3:// prefix for artifacts; each run writes under <s3>/run-<n>/.",
        max_length=MAX_URI,
        pattern=S3_URI_PATTERN,
    )
    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL (for S3-compatible stores); unset uses the operator default.",
        max_length=MAX_URI,
        pattern=URL_PATTERN,
    )
    region: str | None = Field(default=None, description="S3 region.", max_length=64)
    credentials_secret_ref: S3CredentialsRef | None = Field(
        default=None,
        description="Secret with S3 keys; unset uses the pod's ambient credentials (e.g. IRSA).",
    )
    merged_weights: Flag = Field(
        default=False, description="Also upload base+adapter merged weights under merged/."
    )
    adapter_dtype: DType = Field(
        default="bfloat16", description="Dtype of the saved adapter weights."
    )
    retry: StorageRetry = Field(
        default_factory=StorageRetry,
        description="Retries and timeouts of S3 transfers (inputs, checkpoints, artifacts).",
        json_schema_extra=_OBJECT_DEFAULT,
    )


Engine = Literal["vllm", "transformers"]


class ServingSpec(SpecModel):
    """Serve the adapter once training succeeds."""

    enabled: Flag = Field(default=False, description="Serve the adapter after a successful run.")
    serving_ref: str | None = Field(
        default=None,
        description="Name of an existing LoRAServing (same namespace) to add the adapter to; "
        "unset creates a dedicated one.",
        max_length=MAX_NAME,
        pattern=DNS_LABEL_PATTERN,
    )
    adapter_name: str | None = Field(
        default=None,
        description="Name the adapter is served under (the OpenAI `model`); unset uses the "
        "LoRAFineTune's name.",
        max_length=63,
        pattern=ADAPTER_NAME_PATTERN,
    )
    replicas: int = Field(
        default=1, description="Replicas of a dedicated LoRAServing.", ge=0, le=64
    )
    engine: Engine = Field(default="vllm", description="Engine of a dedicated LoRAServing.")


# ---------------------------------------------------------------------------------------------
# LoRAFineTune spec

_FINETUNE_RULES = _rules(
    cel(
        "self.method == 'qlora' || !has(self.quantization)",
        "spec.quantization is only allowed when spec.method is qlora",
        ".quantization",
    ),
    cel("!has(self.serving) || has(self.output)", "spec.serving needs spec.output", ".serving"),
)


class LoRAFineTuneSpec(SpecModel):
    """Desired state of a LoRA/QLoRA fine-tune."""

    model_config = ConfigDict(json_schema_extra=_FINETUNE_RULES)

    base_model: BaseModelSpec = Field(description="The pretrained model to adapt.")
    dataset: DatasetSpec = Field(description="Training (and evaluation) data.")
    method: Method = Field(
        default="lora",
        description="lora trains adapters on frozen bf16/fp16 weights; qlora on 4/8-bit "
        "quantized weights (less memory, somewhat slower).",
    )
    lora: LoRASpec = Field(
        default_factory=LoRASpec, description="Adapter shape.", json_schema_extra=_OBJECT_DEFAULT
    )
    quantization: QuantizationSpec | None = Field(
        default=None,
        description="Base-weight quantization; only with method qlora (unset uses defaults).",
    )
    training: TrainingSpec = Field(description="Training loop hyper-parameters.")
    resources: Resources = Field(
        default_factory=Resources,
        description="Compute and scheduling.",
        json_schema_extra=_OBJECT_DEFAULT,
    )
    output: OutputSpec = Field(description="Artifact destination.")
    serving: ServingSpec | None = Field(
        default=None, description="Serve the adapter after training."
    )
    suspend: Flag = Field(
        default=False,
        description="Hold (or pause) the run: no pod runs while true. Kueue-compatible; "
        "resuming continues from the last checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, description="Fail a run that takes longer than this (seconds).", ge=1
    )
    backoff_limit: int = Field(
        default=3,
        description="Retries after infrastructure failures (invalid config, data or model fail "
        "at once; preemption is retried without counting).",
        ge=0,
        le=100,
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        description="Delete the finished Job and its pods after this many seconds.",
        ge=0,
    )

    @model_validator(mode="after")
    def _check_method(self) -> LoRAFineTuneSpec:
        if self.quantization is not None and self.method != "qlora":
            raise ValueError("spec.quantization is only allowed when spec.method is qlora")
        return self

    @property
    def effective_quantization(self) -> QuantizationSpec | None:
        """The quantization to apply: the given one (or defaults) for qlora, None for lora."""
        if self.method != "qlora":
            return None
        return self.quantization or QuantizationSpec()

    @property
    def effective_optimizer(self) -> str:
        """training.optimizer, or paged_adamw_8bit for qlora and adamw_torch for lora."""
        if self.training.optimizer is not None:
            return self.training.optimizer
        return "paged_adamw_8bit" if self.method == "qlora" else "adamw_torch"


# ---------------------------------------------------------------------------------------------
# status (shared)

ConditionStatus = Literal["True", "False", "Unknown"]

# Condition types the operator sets on a LoRAFineTune (conditions are the contract).
COND_VALIDATED = "Validated"
COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
COND_READY = "Ready"  # LoRAServing


class Condition(StatusModel):
    """A Kubernetes API-convention condition."""

    type: str = Field(
        description="Condition type, e.g. Validated, Running, Succeeded, Failed.", max_length=316
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="CamelCase reason for the last transition, e.g. DatasetInvalid.",
        max_length=1024,
    )
    message: str = Field(default="", description="Human-readable detail.", max_length=32768)
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed from.", ge=0
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )


_CONDITIONS_FIELD: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class Artifacts(StatusModel):
    """What a run uploaded."""

    adapter_uri: str | None = Field(
        default=None, description="s3:// prefix of the adapter (adapter/)."
    )
    merged_uri: str | None = Field(
        default=None, description="s3:// prefix of merged weights, if asked for."
    )
    manifest_uri: str | None = Field(
        default=None, description="s3:// URI of manifest.json (written last)."
    )
    eval_report_uri: str | None = Field(default=None, description="s3:// URI of eval/report.json.")
    size_bytes: int | None = Field(default=None, description="Total bytes of the adapter files.")
    sha256: str | None = Field(default=None, description="sha256 of adapter_model.safetensors.")


class EvalSummary(StatusModel):
    """Base model vs adapter on the held-out rows."""

    eval_loss_base: float | None = Field(default=None, description="Eval loss of the base model.")
    eval_loss_adapter: float | None = Field(default=None, description="Eval loss with the adapter.")
    perplexity_base: float | None = Field(
        default=None, description="Eval perplexity of the base model."
    )
    perplexity_adapter: float | None = Field(
        default=None, description="Eval perplexity with the adapter."
    )


class RunResult(Artifacts, EvalSummary):
    """The trainer's report of what it uploaded and how the adapter evaluated."""


class TrainingPlan(StatusModel):
    """The trainer's memory plan (spec.training.optimizations), updated after an
    out-of-memory recovery."""

    micro_batch_size: int | None = Field(default=None, description="Rows per forward pass.")
    gradient_accumulation_steps: int | None = Field(
        default=None, description="Forward passes per optimizer step."
    )
    checkpointed_layers: int | None = Field(
        default=None, description="Decoder layers whose activations are recomputed."
    )
    layers: int | None = Field(default=None, description="Decoder layers of the model.")
    budget_gi_b: float | None = Field(
        default=None, alias="budgetGiB", description="GPU memory planned for (GiB)."
    )
    estimated_peak_gi_b: float | None = Field(
        default=None, alias="estimatedPeakGiB", description="Planned peak reserved memory (GiB)."
    )
    techniques: list[str] | None = Field(
        default=None, description="Techniques in use, e.g. fused-kernels, compile."
    )


Stage = Literal["Loading", "Validating", "Training", "Evaluating", "Uploading", "Done"]


class Progress(StatusModel):
    """Live training progress. Written only by the trainer (its run's ServiceAccount)."""

    run_number: int | None = Field(default=None, description="Run this progress belongs to.")
    stage: Stage | None = Field(default=None, description="What the trainer is doing.")
    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    percent: float | None = Field(default=None, description="Percent of planned steps done.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(
        default=None, description="Training throughput (tokens/s)."
    )
    eta: str | None = Field(default=None, description="Time left, human readable (e.g. 3m20s).")
    eta_seconds: float | None = Field(default=None, description="Time left in seconds.")
    peak_gpu_memory_gi_b: float | None = Field(
        default=None, alias="peakGpuMemoryGiB", description="Peak GPU memory reserved (GiB)."
    )
    trainable_params: int | None = Field(
        default=None, description="Trainable (adapter) parameters."
    )
    total_params: int | None = Field(
        default=None, description="All parameters of the adapted model."
    )
    trainable_percent: float | None = Field(default=None, description="100 * trainable / total.")
    updated_at: datetime | None = Field(
        default=None, description="When the trainer last wrote progress."
    )
    oom_retries: int | None = Field(
        default=None, description="Out-of-memory errors recovered by splitting micro-batches."
    )
    storage_error: str | None = Field(
        default=None,
        description="While S3 is unreachable: the last error and what the trainer is retrying "
        "(cleared when S3 answers again).",
    )
    storage_retries: int | None = Field(
        default=None, description="S3 transfer attempts that failed and were retried."
    )
    plan: TrainingPlan | None = Field(
        default=None, description="How the trainer runs the requested batch on this GPU."
    )
    result: RunResult | None = Field(
        default=None, description="What the run uploaded (set at the end)."
    )


Phase = Literal["Pending", "Queued", "Scheduling", "Running", "Succeeded", "Failed", "Suspended"]


class RunRef(StatusModel):
    """The current run's bookkeeping."""

    number: int | None = Field(
        default=None, description="Run number (1, 2, ...); names the Job and S3 prefix."
    )
    generation: int | None = Field(
        default=None, description="metadata.generation the run was started for."
    )
    job_name: str | None = Field(default=None, description="Name of the run's Job.")
    start_time: datetime | None = Field(default=None, description="When the run started.")
    completion_time: datetime | None = Field(default=None, description="When the run finished.")


class HistoryEntry(StatusModel):
    """A finished run."""

    number: int = Field(description="Run number.")
    generation: int | None = Field(default=None, description="metadata.generation of the run.")
    phase: Phase | None = Field(default=None, description="How it ended.")
    reason: str | None = Field(default=None, description="CamelCase reason it ended.")
    artifacts: Artifacts | None = Field(default=None, description="What it uploaded.")
    start_time: datetime | None = Field(default=None, description="When it started.")
    completion_time: datetime | None = Field(default=None, description="When it finished.")


class LoRAFineTuneStatus(StatusModel):
    """Observed state. `progress` is written by the trainer; every other field by the operator."""

    observed_generation: int | None = Field(
        default=None, description="(operator) metadata.generation last acted on."
    )
    phase: Phase | None = Field(
        default=None,
        description="(operator) display-only summary of the conditions; never read back.",
    )
    message: str | None = Field(default=None, description="(operator) human-readable state detail.")
    model: str | None = Field(
        default=None, description="(operator) short name of spec.baseModel, for kubectl get."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="(operator) Validated, Running, Succeeded, Failed, Suspended.",
        json_schema_extra=_CONDITIONS_FIELD,
    )
    run: RunRef | None = Field(default=None, description="(operator) the current run.")
    history: list[HistoryEntry] = Field(
        default_factory=list, description="(operator) finished runs, oldest first (capped)."
    )
    artifacts: Artifacts | None = Field(
        default=None, description="(operator) artifacts of the latest successful run."
    )
    evaluation: EvalSummary | None = Field(
        default=None, description="(operator) evaluation summary of the latest successful run."
    )
    gpu_hours: float | None = Field(
        default=None, description="(operator) GPU-hours used by all runs."
    )
    progress: Progress | None = Field(
        default=None, description="(trainer) live progress of the current run."
    )


# ---------------------------------------------------------------------------------------------
# LoRAServing


class ServingAdapter(SpecModel):
    """An adapter to load."""

    name: str = Field(
        description="Name clients ask for (the OpenAI `model`).",
        max_length=63,
        pattern=ADAPTER_NAME_PATTERN,
    )
    uri: str = Field(
        description="s3:// prefix of a run (.../run-<n>/) or of its adapter/ folder.",
        max_length=MAX_URI,
        pattern=S3_URI_PATTERN,
    )
    rank: int | None = Field(
        default=None, description="Adapter rank (sizes the engine's LoRA slots).", ge=1, le=1024
    )


class ServingResources(BaseResources):
    """Compute resources of each serving replica."""


class LoRAServingSpec(SpecModel):
    """Desired state of a multi-adapter inference server."""

    base_model: BaseModelSpec = Field(description="The base model the adapters were trained on.")
    engine: Engine = Field(default="vllm", description="Inference engine.")
    adapters: list[ServingAdapter] = Field(
        default_factory=list,
        description="Adapters to load, keyed by name.",
        max_length=MAX_LIST,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    replicas: int = Field(default=1, description="Server replicas.", ge=0, le=64)
    resources: ServingResources = Field(
        default_factory=ServingResources,
        description="Resources of each replica.",
        json_schema_extra=_OBJECT_DEFAULT,
    )
    engine_args: list[ArgStr] = Field(
        default=[],
        description="Extra engine command-line arguments.",
        max_length=MAX_LIST,
    )
    port: int = Field(
        default=8000, description="HTTP port of the OpenAI-compatible API.", ge=1, le=65535
    )
    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL for adapters and model.",
        max_length=MAX_URI,
        pattern=URL_PATTERN,
    )
    region: str | None = Field(default=None, description="S3 region.", max_length=64)
    credentials_secret_ref: S3CredentialsRef | None = Field(
        default=None, description="Secret with S3 keys for reading adapters and the model."
    )

    @model_validator(mode="after")
    def _unique_adapters(self) -> LoRAServingSpec:
        names = [a.name for a in self.adapters]
        if len(names) != len(set(names)):
            raise ValueError("spec.adapters: adapter names must be unique")
        return self


AdapterState = Literal["Loading", "Ready", "Failed"]


class AdapterStatus(StatusModel):
    """A loaded (or failing) adapter."""

    name: str = Field(description="Adapter name.")
    uri: str | None = Field(default=None, description="Where it was loaded from.")
    state: AdapterState | None = Field(default=None, description="Loading, Ready or Failed.")
    reason: str | None = Field(default=None, description="Why it failed, if it did.")


class LoRAServingStatus(StatusModel):
    """Observed state of the server (written by the operator)."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready.", json_schema_extra=_CONDITIONS_FIELD
    )
    url: str | None = Field(
        default=None, description="In-cluster base URL of the OpenAI-compatible API."
    )
    ready_replicas: int | None = Field(default=None, description="Replicas serving.")
    adapters: list[AdapterStatus] = Field(
        default_factory=list,
        description="Adapters and their state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


# ---------------------------------------------------------------------------------------------
# whole objects (for parsing what the apiserver returns)


class _Resource(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = API_VERSION
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))


class LoRAFineTune(_Resource):
    """A whole LoRAFineTune object."""

    kind: Literal["LoRAFineTune"] = "LoRAFineTune"
    spec: LoRAFineTuneSpec
    status: LoRAFineTuneStatus = Field(default_factory=LoRAFineTuneStatus)


class LoRAServing(_Resource):
    """A whole LoRAServing object."""

    kind: Literal["LoRAServing"] = "LoRAServing"
    spec: LoRAServingSpec
    status: LoRAServingStatus = Field(default_factory=LoRAServingStatus)
