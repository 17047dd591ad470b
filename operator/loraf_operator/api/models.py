"""The loraf API: the only place a LoRAFineTune / LoRAServing field is declared.

Each field carries its type, default, bounds and description here; `crdgen` turns these
models into the CRD YAML (and docs/api.md), so `kubectl explain` shows the same text.
Cross-field rules live twice on purpose: as a `model_validator` (the trainer and operator
parse with these models) and as CEL in `x-kubernetes-validations` (the apiserver rejects
bad manifests at apply time). `tests/unit/test_api_models.py` keeps the two in step.

Pure pydantic: importable without torch or the Kubernetes client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    Strict,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import core_schema

from .conditions import described

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
# RFC 1035 label: what a Service name must be (starts with a letter, <= 63 characters).
DNS_1035_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Label keys ([prefix/]name, prefix a DNS subdomain <= 253, name <= 63) and values (<= 63).
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
MAX_LABEL_KEY = 317
# The same, looser (no per-part lengths), for CEL on map keys: a map key has no maxLength,
# so the cost of a regex match on it is estimated from the pattern's length.
CEL_LABEL_KEY_PATTERN = r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# A key of a Secret or ConfigMap.
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
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


CelReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"]


def cel(
    rule: str,
    message: str,
    field_path: str | None = None,
    *,
    message_expression: str | None = None,
    reason: CelReason | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry.

    `field_path` points the error at a child field. The apiserver prints a failed rule as
    `<path>: Invalid value: "<type of the rule's node>": <message>` (e.g. `"object"`, not
    the value), so rules whose message is about a field being set or missing use `reason`
    FieldValueForbidden / FieldValueRequired (printed `Forbidden:` / `Required value:`), and
    `message_expression` (CEL building the message) names the offending value.
    """
    out = {"rule": rule, "message": message}
    if message_expression:
        out["messageExpression"] = message_expression
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def cel_str(text: str) -> str:
    """`text` as a CEL string literal (JSON's escapes are CEL's)."""
    return json.dumps(text)


def exactly_one(*fields: str) -> list[dict[str, str]]:
    """Two rules for "exactly one of `fields`": one for none set (Required), one for
    several (Forbidden, naming those set)."""
    names = ", ".join(fields[:-1]) + f" or {fields[-1]}" if len(fields) > 2 else " or ".join(fields)
    head = f"exactly one of {names} must be set"
    count = " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields)
    # Conditional literals, not list.filter().join(): CEL cost estimation must stay bounded.
    listed = " + ".join(f"(has(self.{f}) ? ' {f}' : '')" for f in fields)
    return [
        cel(" || ".join(f"has(self.{f})" for f in fields), head, reason="FieldValueRequired"),
        cel(
            f"{count} <= 1",
            head,
            message_expression=f"{cel_str(head + '; set:')} + {listed}",
            reason="FieldValueForbidden",
        ),
    ]


def _rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


# `default: {}` on an object whose fields all have defaults: the apiserver then fills in the
# nested defaults too, so stored objects (and printer columns) show the effective values.
_OBJECT_DEFAULT: dict[str, Any] = {"default": {}}


def _count_set(*values: object) -> int:
    return sum(v is not None for v in values)


def _check_label_keys(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        if len(key) > MAX_LABEL_KEY or not re.match(LABEL_KEY_PATTERN, key):
            raise ValueError(f"{key!r} is not a valid label key ([prefix/]name)")
    return labels


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
LabelKey = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_KEY, pattern=LABEL_KEY_PATTERN)]
# A label map (nodeSelector, matchLabels): values checked by the schema, keys by the
# validator and, for nodeSelector, by CEL (structural schemas have no propertyNames). CEL on
# map keys is costly (unbounded key length): deeper maps (matchLabels inside affinity terms)
# are left to the models, so a bad key there fails the run with InvalidSpec at once.
LabelMap = Annotated[dict[str, LabelValue], AfterValidator(_check_label_keys), Field(max_length=16)]
NodeSelectorMap = Annotated[
    dict[str, LabelValue],
    AfterValidator(_check_label_keys),
    Field(
        max_length=16,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.all(k, k.size() <= {MAX_LABEL_KEY} && "
                    f"k.matches('{CEL_LABEL_KEY_PATTERN}'))",
                    "keys must be valid label keys ([prefix/]name, name at most 63 characters)",
                    reason="FieldValueForbidden",
                )
            ]
        },
    ),
]
DnsSubdomain = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME, pattern=DNS_SUBDOMAIN_PATTERN)
]


@dataclass(frozen=True)
class WireDict:
    """`Annotated[dict[str, Any], WireDict(Model)]`: a core/v1 object copied verbatim into
    pod specs (a toleration, an affinity). `Model` types it in the CRD, documents it and
    validates it; the field holds its wire dict (camelCase, only the fields given), so
    builders pass it on unchanged."""

    model: type[BaseModel]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def to_wire(value: Any) -> dict[str, Any]:
            return dict(value.model_dump(mode="json", by_alias=True, exclude_unset=True))

        return core_schema.no_info_after_validator_function(
            to_wire,
            handler.generate_schema(self.model),
            serialization=core_schema.plain_serializer_function_ser_schema(dict),
        )


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

    def to_patch(self) -> dict[str, Any]:
        """The fields that were set, in wire format (camelCase). A None set on purpose is
        kept: in a merge patch it removes the field."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def patch_of(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """`data` (wire or field names) checked against the model, as `to_patch` writes it.
        An unknown key fails here: the structural schema would prune it without a word."""
        return cls.model_validate(data, extra="forbid").to_patch()


# ---------------------------------------------------------------------------------------------
# shared small types


class SecretKeyRef(SpecModel):
    """A key of a Secret in the resource's namespace. Secret values never appear in a spec."""

    name: str = Field(
        description="Name of the Secret in the same namespace.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    key: str = Field(
        default="token",
        description="Key within the Secret.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DATA_KEY_PATTERN,
    )


class S3CredentialsRef(SpecModel):
    """A Secret holding S3 access keys (mounted into the pod as env, never copied)."""

    name: str = Field(
        description="Name of the Secret in the same namespace.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID",
        description="Key in the Secret holding the access key id.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DATA_KEY_PATTERN,
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        description="Key in the Secret holding the secret access key.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DATA_KEY_PATTERN,
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
    *exactly_one("huggingFace", "s3", "pvc"),
    cel(
        "!has(self.revision) || has(self.huggingFace)",
        "revision is only allowed with huggingFace",
        ".revision",
        reason="FieldValueForbidden",
    ),
    cel(
        "!has(self.tokenSecretRef) || has(self.huggingFace)",
        "tokenSecretRef is only allowed with huggingFace",
        ".tokenSecretRef",
        reason="FieldValueForbidden",
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

DatasetFormat = Literal["alpaca", "chat", "prompt-completion", "text", "preference"]
FileFormat = Literal["auto", "jsonl", "json", "parquet", "csv"]

_DATA_SOURCE_RULES = _rules(
    *exactly_one("s3", "pvc", "huggingFace"),
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
    chosen: str | None = Field(
        default=None,
        description="Column for preference `chosen` (preferred answer).",
        max_length=128,
    )
    rejected: str | None = Field(
        default=None,
        description="Column for preference `rejected` (dispreferred answer).",
        max_length=128,
    )


class DatasetSpec(DataSource):
    """Training data: a source, its row format and how to hold out evaluation rows."""

    format: DatasetFormat = Field(
        description=(
            "Row format: alpaca (instruction/input/output), chat (messages: [{role, content}]), "
            "prompt-completion (prompt/completion), text (raw text) or preference "
            "(prompt/chosen/rejected, for objective dpo; prompt is a string or a list of chat "
            "messages, chosen and rejected are strings)."
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
    system_prompt: str | None = Field(
        default=None,
        description="System message put before every conversation that has none (alpaca "
        "rows, chat rows without a system turn), in training and evaluation. Unset: none is "
        "added, and the model's chat template adds its own default if it has one (SmolLM2: "
        "'You are a helpful AI assistant named SmolLM, trained by Hugging Face'). Recorded "
        "in the run's manifest with the chat template; both serving engines apply it to chat "
        "requests without a system message. Ignored without a chat template.",
        max_length=16384,
    )


# ---------------------------------------------------------------------------------------------
# spec: objective, preference tuning, starting adapter

Objective = Literal["sft", "dpo"]
DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]
DPOReference = Literal["base", "startingAdapter"]


class DPOSpec(SpecModel):
    """Direct Preference Optimization (TRL's DPOTrainer) knobs; used with objective dpo."""

    beta: float = Field(
        default=0.1,
        description="How far the adapter may move from the reference: higher keeps it closer "
        "(TRL's beta).",
        gt=0,
        le=10,
    )
    loss_type: DPOLossType = Field(
        default="sigmoid",
        description="sigmoid (the DPO paper's loss), ipo, hinge or robust (label noise).",
    )
    reference: DPOReference = Field(
        default="base",
        description="What the adapter is compared against: base (the frozen base model, "
        "adapters disabled) or startingAdapter (a frozen copy of startFrom's adapter, the "
        "model before preference tuning; needs startFrom).",
    )


_START_FROM_RULES = _rules(*exactly_one("fineTune", "s3"))


class StartFrom(SpecModel):
    """An adapter to continue training from (DPO after SFT, or more SFT). Exactly one of
    fineTune or s3."""

    model_config = ConfigDict(json_schema_extra=_START_FROM_RULES)

    fine_tune: str | None = Field(
        default=None,
        description="Name of a LoRAFineTune in the same namespace: its succeeded run's "
        "verified adapter. The run waits (condition Running=False, reason "
        "WaitingForStartingAdapter) while that fine-tune has not succeeded.",
        min_length=1,
        max_length=253,
    )
    s3: str | None = Field(
        default=None,
        description="s3:// prefix of a run (the folder holding manifest.json and adapter/); "
        "the adapter's sha256 is checked against the manifest.",
        max_length=MAX_URI,
        pattern=S3_URI_PATTERN,
    )

    @model_validator(mode="after")
    def _check_source(self) -> StartFrom:
        if _count_set(self.fine_tune, self.s3) != 1:
            raise ValueError("startFrom: exactly one of fineTune or s3 must be set")
        return self


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
        default=0.0,
        description="Dropout on the adapter input, in [0, 1). 0 (peft's default) learns small "
        "datasets fastest and is ~11% faster on a GPU than 0.05 (measured).",
        ge=0,
        lt=1,
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
    *exactly_one("epochs", "maxSteps"),
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
    learning_rate: float | None = Field(
        default=None,
        description="Peak learning rate. Unset: 1e-3 × (576 / the model's hidden size)^0.82 × "
        "2 / (alpha/r), i.e. 1e-3 for SmolLM2-135M and 2e-4 for 7-8B models at alpha = 2r "
        "(docs/trainer.md, Defaults).",
        gt=0,
        le=1,
    )
    scheduler: Scheduler | None = Field(
        default=None,
        description="Learning-rate schedule after warmup. Unset: constant for runs of up to "
        "300 optimizer steps, cosine for longer ones.",
    )
    warmup_ratio: float | None = Field(
        default=None,
        description="Fraction of steps spent warming up the learning rate (from step 1, never "
        "at 0). Unset: none for runs of up to 300 steps, else 3% of the steps (at most 100).",
        ge=0,
        lt=1,
    )
    per_device_batch_size: int | None = Field(
        default=None,
        description="Rows per forward pass. Unset: perDeviceBatchSize × "
        "gradientAccumulationSteps rows per optimizer step is the largest of 32, 16, 8, 4 "
        "that keeps at least 16 steps per epoch. With optimizations.planner on (GPU), that "
        "product is the batch per optimizer step and the planner chooses how to split it.",
        ge=1,
        le=4096,
    )
    gradient_accumulation_steps: int | None = Field(
        default=None,
        description="Forward passes per optimizer step. Unset: 1 (perDeviceBatchSize then "
        "holds the whole batch, chosen by its rule when unset too).",
        ge=1,
        le=4096,
    )
    max_seq_length: int = Field(
        default=1024, description="Tokens per row; longer rows are truncated.", ge=16, le=262144
    )
    packing: Flag = Field(default=False, description="Pack several short rows into one sequence.")
    gradient_checkpointing: Flag | None = Field(
        default=None,
        description="Recompute activations in the backward pass: less memory, ~20-35% slower. "
        "With optimizations.planner on (GPU), true (or unset) lets the planner checkpoint as "
        "few layers as the memory needs and false forbids it. On a CPU, only true turns it on.",
    )
    optimizer: Optimizer | None = Field(
        default=None,
        description="Optimizer. Unset: on a GPU with optimizations.planner, adamw_torch_fused "
        "when its fp32 state fits the budget without more recompute; otherwise "
        "paged_adamw_8bit for qlora, adamw_torch for lora.",
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
    neftune_noise_alpha: float | None = Field(
        default=None,
        description="NEFTune: add uniform noise of this scale to the input embeddings while "
        "training (TRL's neftune_noise_alpha; the paper uses 5). Unset: off.",
        ge=0,
        le=100,
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

QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
# A Kubernetes quantity: an integer, or a string like 500m / 32Gi. In the CRD an
# int-or-string whose string form must match the pattern (so an error shows the value).
Quantity = int | Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)]

_RESOURCES_RULE_LIST = [
    cel(
        "!has(self.gpuType) || self.gpus >= 1",
        "gpuType needs gpus >= 1",
        ".gpuType",
        reason="FieldValueForbidden",
    ),
]
_RESOURCES_RULES = _rules(*_RESOURCES_RULE_LIST)


# -- core/v1 scheduling objects, typed so the apiserver checks them at apply time (the pod
# -- template of a Job is only checked when the operator creates the Job).

_TOLERATION_RULES = _rules(
    cel(
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "value must be empty when operator is Exists",
        ".value",
        reason="FieldValueForbidden",
    ),
    cel(
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "key is required unless operator is Exists",
        ".key",
        reason="FieldValueRequired",
    ),
    cel(
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds is only allowed with effect NoExecute",
        ".tolerationSeconds",
        reason="FieldValueForbidden",
    ),
)


class Toleration(SpecModel):
    """core/v1 Toleration: lets the pod run on nodes with a matching taint."""

    model_config = ConfigDict(json_schema_extra=_TOLERATION_RULES)

    key: str | None = Field(
        default=None,
        description="Taint key to match (a label key); empty with operator Exists matches "
        "every taint.",
        max_length=MAX_LABEL_KEY,
        pattern=r"^$|" + LABEL_KEY_PATTERN,
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None,
        description="Equal (when unset) matches key and value; Exists matches any value.",
    )
    value: str | None = Field(
        default=None,
        description="Taint value to match with operator Equal (a label value).",
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
    )
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; unset or empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="With effect NoExecute: seconds the pod stays on a node after the taint "
        "appears (unset: forever).",
    )

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("toleration: value must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("toleration: key is required unless operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration: tolerationSeconds is only allowed with effect NoExecute")
        return self


def _values_rule(ops_with_values: str, extra: str = "") -> dict[str, str]:
    # `values` defaults to [] in the models, but CEL sees the object as written.
    rule = (
        f"self.operator in [{ops_with_values}] ? (has(self.values) && self.values.size() > 0) "
        f": ({extra}(!has(self.values) || self.values.size() == 0))"
    )
    return cel(
        rule,
        "In and NotIn need values, Exists and DoesNotExist must have none",
        ".values",
        message_expression="'operator ' + self.operator + (self.operator in ["
        f"{ops_with_values}] ? ' needs values' : ' allows no values')",
        reason="FieldValueForbidden",
    )


def _check_values(operator: str, values: list[str]) -> None:
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"operator {operator} needs values")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"operator {operator} allows no values")
    if operator in ("Gt", "Lt") and (len(values) != 1 or not re.match(r"^-?[0-9]+$", values[0])):
        raise ValueError(f"operator {operator} needs exactly one integer value")


class NodeSelectorRequirement(SpecModel):
    """core/v1 NodeSelectorRequirement: a node label key, an operator and values."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            _values_rule(
                "'In', 'NotIn'",
                "self.operator in ['Gt', 'Lt'] ? (has(self.values) && self.values.size() == 1 "
                "&& self.values[0].matches('^-?[0-9]+$')) : ",
            )
        )
    )

    key: LabelKey = Field(description="Node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="How the label's value is compared with values."
    )
    values: list[LabelValue] = Field(
        default=[],
        description="Values for In/NotIn; one integer for Gt/Lt; none for Exists/DoesNotExist.",
        max_length=MAX_LIST,
    )

    @model_validator(mode="after")
    def _check(self) -> NodeSelectorRequirement:
        _check_values(self.operator, self.values)
        return self


class NodeFieldRequirement(SpecModel):
    """core/v1 NodeSelectorRequirement on a node field (only metadata.name is supported)."""

    key: Literal["metadata.name"] = Field(description="The node field: metadata.name.")
    operator: Literal["In", "NotIn"] = Field(description="In or NotIn.")
    values: list[DnsSubdomain] = Field(
        description="Exactly one node name.", min_length=1, max_length=1
    )


class NodeSelectorTerm(SpecModel):
    """core/v1 NodeSelectorTerm: requirements that must all hold."""

    match_expressions: list[NodeSelectorRequirement] = Field(
        default=[], description="Requirements on node labels.", max_length=16
    )
    match_fields: list[NodeFieldRequirement] = Field(
        default=[], description="Requirements on node fields.", max_length=16
    )


class NodeSelector(SpecModel):
    """core/v1 NodeSelector: a node matches if any term matches."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        description="Terms, ORed.", min_length=1, max_length=16
    )


class PreferredSchedulingTerm(SpecModel):
    """core/v1 PreferredSchedulingTerm."""

    weight: int = Field(description="Weight, 1-100.", ge=1, le=100)
    preference: NodeSelectorTerm = Field(description="The node selector term.")


class NodeAffinity(SpecModel):
    """core/v1 NodeAffinity."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default=[], description="Nodes the scheduler prefers.", max_length=16
    )


class LabelSelectorRequirement(SpecModel):
    """meta/v1 LabelSelectorRequirement."""

    model_config = ConfigDict(json_schema_extra=_rules(_values_rule("'In', 'NotIn'")))

    key: LabelKey = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the label's value is compared with values."
    )
    values: list[LabelValue] = Field(
        default=[],
        description="Values for In/NotIn; none for Exists/DoesNotExist.",
        max_length=MAX_LIST,
    )

    @model_validator(mode="after")
    def _check(self) -> LabelSelectorRequirement:
        _check_values(self.operator, self.values)
        return self


class LabelSelector(SpecModel):
    """meta/v1 LabelSelector."""

    match_labels: LabelMap = Field(default_factory=dict, description="Labels that must match.")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default=[], description="Requirements, ANDed.", max_length=16
    )


class PodAffinityTerm(SpecModel):
    """core/v1 PodAffinityTerm."""

    label_selector: LabelSelector | None = Field(default=None, description="Pods to match.")
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces to look for those pods in."
    )
    namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]] = Field(
        default=[], description="Namespace names to look in.", max_length=MAX_LIST
    )
    topology_key: LabelKey = Field(
        description="Node label whose equal values form one domain, e.g. kubernetes.io/hostname."
    )
    match_label_keys: list[LabelKey] = Field(
        default=[], description="Pod label keys merged into labelSelector.", max_length=MAX_LIST
    )
    mismatch_label_keys: list[LabelKey] = Field(
        default=[], description="Pod label keys whose values must differ.", max_length=MAX_LIST
    )


class WeightedPodAffinityTerm(SpecModel):
    """core/v1 WeightedPodAffinityTerm."""

    weight: int = Field(description="Weight, 1-100.", ge=1, le=100)
    pod_affinity_term: PodAffinityTerm = Field(description="The pod affinity term.")


class PodAffinity(SpecModel):
    """core/v1 PodAffinity (also used for podAntiAffinity)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default=[], description="Terms that must hold.", max_length=16
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default=[], description="Terms the scheduler prefers.", max_length=16
    )


class Affinity(SpecModel):
    """core/v1 Affinity."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")


class BaseResources(SpecModel):
    """Compute resources of a pod."""

    model_config = ConfigDict(json_schema_extra=_RESOURCES_RULES)

    gpus: int = Field(default=1, description="nvidia.com/gpu per pod (0 runs on CPU).", ge=0, le=16)
    gpu_type: str | None = Field(
        default=None,
        description="GPU product (e.g. NVIDIA-H100-80GB-HBM3), set as the node selector "
        "nvidia.com/gpu.product (a label value).",
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
    )
    cpu: Quantity | None = Field(
        default=None, description="CPU request (a Kubernetes quantity, e.g. 4 or 500m)."
    )
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit (e.g. 32Gi)."
    )
    node_selector: NodeSelectorMap = Field(
        default_factory=dict, description="Extra node selector labels."
    )
    tolerations: list[Annotated[dict[str, Any], WireDict(Toleration)]] = Field(
        default_factory=list,
        description="Pod tolerations (core/v1 Toleration objects).",
        max_length=MAX_LIST,
    )
    image: str | None = Field(
        default=None,
        description="Override the container image.",
        max_length=MAX_URI,
        pattern=r"^[^\s]+$",
    )

    @model_validator(mode="after")
    def _check_gpu_type(self) -> BaseResources:
        if self.gpu_type is not None and self.gpus < 1:
            raise ValueError("resources.gpuType needs gpus >= 1")
        return self


Strategy = Literal["auto", "ddp", "fsdp"]
MULTI_NODE_NEEDS_GPUS = (
    "nodes > 1 needs gpus >= 1: a multi-node run trains on GPUs (try several ranks on a "
    "CPU with `loraf run --nproc-per-node`)"
)


class Resources(BaseResources):
    """Compute resources and scheduling of the training pod(s)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            *_RESOURCES_RULE_LIST,
            cel(
                "!has(self.nodes) || self.nodes <= 1 || (has(self.gpus) && self.gpus >= 1)",
                MULTI_NODE_NEEDS_GPUS,
                ".nodes",
                reason="FieldValueForbidden",
            ),
        )
    )

    nodes: int = Field(
        default=1,
        description="Pods (machines) the run trains on, each with `gpus` GPUs and one rank "
        "per GPU. Above 1 the run is an Indexed Job with a headless Service; torchrun's c10d "
        "rendezvous meets on the pod of index 0. One pod failing restarts every rank from the "
        "last stored checkpoint; the preemption of any pod is a preemption of the run.",
        ge=1,
        le=64,
    )
    strategy: Strategy = Field(
        default="auto",
        description="How ranks share the work when the run has more than one: ddp (every "
        "rank holds the whole model, data parallel), fsdp (full shard: weights, gradients and "
        "optimizer state split over the ranks; QLoRA stores its 4-bit weights in bf16 so FSDP "
        "can shard them), or auto: ddp when the memory planner finds the model fits one GPU, "
        "else fsdp (ddp where nothing is known about the GPU's memory, e.g. on a CPU).",
    )
    affinity: Annotated[dict[str, Any], WireDict(Affinity)] | None = Field(
        default=None, description="Pod affinity (core/v1 Affinity)."
    )
    priority_class_name: str | None = Field(
        default=None,
        description="PriorityClass of the training pod (it must exist, or the Job cannot "
        "create the pod).",
        max_length=MAX_NAME,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    image_pull_secrets: list[DnsSubdomain] = Field(
        default=[],
        description="Names of image pull Secrets.",
        max_length=MAX_LIST,
    )
    model_cache_pvc: str | None = Field(
        default=None,
        description="PersistentVolumeClaim mounted as the model cache (HF_HOME), shared "
        "across runs.",
        max_length=MAX_NAME,
        pattern=DNS_SUBDOMAIN_PATTERN,
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

    @model_validator(mode="after")
    def _check_nodes(self) -> Resources:
        if self.nodes > 1 and self.gpus < 1:
            raise ValueError(f"resources.{MULTI_NODE_NEEDS_GPUS}")
        return self

    @property
    def ranks_per_node(self) -> int:
        """Training processes per pod: one per GPU (one on a CPU-only pod)."""
        return max(1, self.gpus)

    @property
    def world_size(self) -> int:
        return self.ranks_per_node * self.nodes


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
        "unset creates a dedicated one named like the LoRAFineTune.",
        max_length=63,
        pattern=DNS_1035_PATTERN,
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
        "(has(self.objective) && self.objective == 'dpo') == (self.dataset.format == 'preference')",
        "objective dpo needs dataset.format preference, and a preference dataset needs "
        "objective dpo",
        ".dataset.format",
        reason="FieldValueForbidden",
    ),
    cel(
        "!has(self.dpo) || (has(self.objective) && self.objective == 'dpo')",
        "spec.dpo is only allowed when spec.objective is dpo",
        ".dpo",
        reason="FieldValueForbidden",
    ),
    cel(
        "!has(self.dpo) || !has(self.dpo.reference) || self.dpo.reference != 'startingAdapter' "
        "|| has(self.startFrom)",
        "dpo.reference startingAdapter needs spec.startFrom",
        ".dpo.reference",
        reason="FieldValueRequired",
    ),
    cel(
        "self.method == 'qlora' || !has(self.quantization)",
        "spec.quantization is only allowed when spec.method is qlora",
        ".quantization",
        reason="FieldValueForbidden",
    ),
    cel(
        "!has(self.serving) || has(self.output)",
        "spec.serving needs spec.output",
        ".serving",
        reason="FieldValueForbidden",
    ),
    # What vLLM cannot serve (serving_link.vllm_unsupported), for a dedicated vLLM serving;
    # a shared one's engine is known only at link time (Serving=False, AdapterUnsupported).
    cel(
        "!has(self.serving) || !self.serving.enabled || has(self.serving.servingRef) "
        "|| self.serving.engine != 'vllm' || !has(self.lora) || !("
        "(has(self.lora.useDora) && self.lora.useDora) "
        "|| (has(self.lora.modulesToSave) && size(self.lora.modulesToSave) > 0) "
        "|| (has(self.lora.bias) && self.lora.bias != 'none') "
        "|| (has(self.lora.r) && self.lora.r > 512))",
        "vLLM cannot serve this adapter (DoRA, modulesToSave, trained bias or rank above "
        "512): use serving.engine transformers or change spec.lora",
        ".serving",
        # no messageExpression: the apiserver (1.34) estimates `string(self.lora.r)` at over
        # 100x the budget and refuses the whole CRD; the reason alone avoids "Invalid value".
        reason="FieldValueForbidden",
    ),
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
    objective: Objective = Field(
        default="sft",
        description="sft (supervised: learn the answers) or dpo (Direct Preference "
        "Optimization: prefer chosen over rejected answers; needs dataset.format preference).",
    )
    dpo: DPOSpec | None = Field(
        default=None, description="DPO knobs (objective dpo; unset: the defaults)."
    )
    start_from: StartFrom | None = Field(
        default=None,
        description="Continue from an existing adapter (e.g. DPO on top of an SFT run): its "
        "LoRA shape replaces spec.lora.",
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
        if (self.objective == "dpo") != (self.dataset.format == "preference"):
            raise ValueError(
                "objective dpo needs dataset.format preference, and a preference dataset "
                "needs objective dpo"
            )
        if self.dpo is not None and self.objective != "dpo":
            raise ValueError("spec.dpo is only allowed when spec.objective is dpo")
        if self.effective_dpo.reference == "startingAdapter" and self.start_from is None:
            raise ValueError("dpo.reference startingAdapter needs spec.startFrom")
        return self

    @property
    def effective_dpo(self) -> DPOSpec:
        return self.dpo or DPOSpec()

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
    preference_accuracy_start: float | None = Field(
        default=None,
        description="objective dpo: held-out rows whose chosen answer the starting model "
        "(base or startFrom's adapter) scores above rejected.",
    )
    preference_accuracy_adapter: float | None = Field(
        default=None, description="objective dpo: the same for the trained adapter."
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
    strategy: Literal["single", "ddp", "fsdp"] | None = Field(
        default=None,
        description="How the ranks share the work: single (one rank), ddp or fsdp "
        "(spec.resources.strategy, or the planner's choice under auto).",
    )
    world_size: int | None = Field(default=None, description="Training ranks (processes).")
    learning_rate: float | None = Field(default=None, description="Peak learning rate used.")
    scheduler: str | None = Field(default=None, description="Learning-rate schedule used.")
    warmup_steps: int | None = Field(default=None, description="Warmup steps.")
    rows_per_step: int | None = Field(default=None, description="Rows per optimizer step.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    defaults: list[str] | None = Field(
        default=None,
        description="spec.training fields the trainer chose by its defaults rule "
        "(docs/trainer.md).",
    )


Stage = Literal["Loading", "Validating", "Training", "Evaluating", "Uploading", "Done"]


class DPOProgress(StatusModel):
    """DPO's training metrics (objective dpo), from the latest log line: rewards are
    beta-scaled log-probability ratios of the adapter over the reference."""

    rewards_chosen: float | None = Field(default=None, description="Mean reward of chosen.")
    rewards_rejected: float | None = Field(default=None, description="Mean reward of rejected.")
    reward_accuracy: float | None = Field(
        default=None, description="Fraction of rows whose chosen reward beats rejected's."
    )
    reward_margin: float | None = Field(
        default=None, description="Mean reward of chosen minus rejected (grows as it learns)."
    )


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
    dpo: DPOProgress | None = Field(default=None, description="DPO metrics (objective dpo).")
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
    phase: Literal["Succeeded", "Failed", "Stopped"] | None = Field(
        default=None,
        description="How it ended: Succeeded, Failed, or Stopped (replaced before it "
        "finished, e.g. by a spec change; `reason` says why, `stoppedIn` where it was).",
    )
    stopped_in: Phase | None = Field(
        default=None, description="For a Stopped run: the phase it was in when replaced."
    )
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
        description=f"(operator) {described('LoRAFineTune')}.",
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


#: The --max-lora-rank values vLLM accepts.
LoraRank = Literal[8, 16, 32, 64, 128, 256, 320, 512]

# No messageExpression with string(): the apiserver estimates its result as unbounded and
# refuses the whole CRD (see test_api_crdgen); the fixed message and reason say enough.
_SERVING_RULES = _rules(
    cel(
        "!has(self.adapters) || size(self.adapters) <= self.maxAdapters",
        "spec.adapters has more entries than spec.maxAdapters allows",
        ".adapters",
        reason="FieldValueForbidden",
    ),
    cel(
        "!has(self.adapters) || self.adapters.all(a, !has(a.rank) || a.rank <= self.maxLoraRank)",
        "an adapter's rank is above spec.maxLoraRank",
        ".adapters",
        reason="FieldValueForbidden",
    ),
)


class LoRAServingSpec(SpecModel):
    """Desired state of a multi-adapter inference server."""

    model_config = ConfigDict(json_schema_extra=_SERVING_RULES)

    base_model: BaseModelSpec = Field(description="The base model the adapters were trained on.")
    engine: Engine = Field(default="vllm", description="Inference engine.")
    adapters: list[ServingAdapter] = Field(
        default_factory=list,
        description="Adapters to load, keyed by name.",
        max_length=MAX_LIST,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    replicas: int = Field(default=1, description="Server replicas.", ge=0, le=64)
    max_adapters: int = Field(
        default=4,
        description="Most adapters the server holds at once (vLLM --max-loras and "
        "--max-cpu-loras: one LoRA slot each in accelerator memory). Fixed per pod, so "
        "adding adapters up to it never restarts the server.",
        ge=1,
        le=MAX_LIST,
    )
    max_lora_rank: LoraRank = Field(
        default=16,
        description="Largest adapter rank the server accepts (vLLM --max-lora-rank; sizes "
        "each LoRA slot). An adapter of a higher rank is refused.",
    )
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
        if len(names) > self.max_adapters:
            raise ValueError("spec.adapters has more entries than spec.maxAdapters allows")
        if any(a.rank is not None and a.rank > self.max_lora_rank for a in self.adapters):
            raise ValueError("an adapter's rank is above spec.maxLoraRank")
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
        default_factory=list,
        description=f"{described('LoRAServing')}.",
        json_schema_extra=_CONDITIONS_FIELD,
    )
    url: str | None = Field(
        default=None, description="In-cluster base URL of the OpenAI-compatible API."
    )
    ready_replicas: int | None = Field(default=None, description="Replicas serving.")
    adapter_summary: str | None = Field(
        default=None,
        description="Every adapter by name, with the state of those not Ready (for kubectl "
        "get: a printer column shows only the first element of a list).",
    )
    adapters: list[AdapterStatus] = Field(
        default_factory=list,
        description="Adapters and their state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


# ---------------------------------------------------------------------------------------------
# whole objects (for parsing what the apiserver returns)


# Rules on a whole object (the CRD's root schema; CEL there may read metadata.name).
_SERVICE_NAME_RULE = (
    f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS_1035_PATTERN}')"
)
SERVING_NAME_MESSAGE = (
    "a LoRAServing's name names its Service, so it must be a DNS-1035 label: at most 63 "
    "lowercase letters, digits and hyphens, starting with a letter"
)
SERVING_OBJECT_RULES = [
    cel(
        _SERVICE_NAME_RULE,
        SERVING_NAME_MESSAGE,
        message_expression=f"{cel_str(SERVING_NAME_MESSAGE + '; got ')} + self.metadata.name",
        reason="FieldValueForbidden",
    )
]
FINETUNE_NAME_MESSAGE = (
    "spec.serving without servingRef creates a LoRAServing named like this LoRAFineTune, so "
    "the name must be a DNS-1035 label (at most 63 lowercase letters, digits and hyphens, "
    "starting with a letter); rename it or set spec.serving.servingRef"
)
FINETUNE_OBJECT_RULES = [
    cel(
        "!has(self.spec.serving) || !self.spec.serving.enabled || "
        f"has(self.spec.serving.servingRef) || ({_SERVICE_NAME_RULE})",
        FINETUNE_NAME_MESSAGE,
        message_expression=f"{cel_str(FINETUNE_NAME_MESSAGE + '; got ')} + self.metadata.name",
        reason="FieldValueForbidden",
    )
]


def is_service_name(name: str) -> bool:
    return len(name) <= 63 and re.match(DNS_1035_PATTERN, name) is not None


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

    @model_validator(mode="after")
    def _check_name(self) -> LoRAFineTune:
        sv = self.spec.serving
        dedicated = sv is not None and sv.enabled and not sv.serving_ref
        if dedicated and self.name and not is_service_name(self.name):
            raise ValueError(f"{FINETUNE_NAME_MESSAGE}; got {self.name}")
        return self


class LoRAServing(_Resource):
    """A whole LoRAServing object."""

    kind: Literal["LoRAServing"] = "LoRAServing"
    spec: LoRAServingSpec
    status: LoRAServingStatus = Field(default_factory=LoRAServingStatus)

    @model_validator(mode="after")
    def _check_name(self) -> LoRAServing:
        if self.name and not is_service_name(self.name):
            raise ValueError(f"{SERVING_NAME_MESSAGE}; got {self.name}")
        return self
