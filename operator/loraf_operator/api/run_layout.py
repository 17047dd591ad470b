"""Where a run's files live: the one S3 layout the trainer writes, the operator checks and
the serving engines read (docs/architecture.md, "S3 layout of a run").

With `spec.output.s3: s3://bucket/prefix`, run `n` writes under its prefix
`s3://bucket/prefix/run-<n>/`:

    adapter/            adapter_model.safetensors, adapter_config.json, tokenizer files
    merged/             merged weights (spec.output.mergedWeights)
    eval/report.json    the evaluation report (eval/report.md, eval/loss.svg beside it)
    checkpoints/step-<k>/   resumable checkpoints, each with a COMPLETE marker (last)
    manifest.json       uploaded last: its presence means the upload is complete

The names are paths relative to the run prefix (the trainer's Store is rooted there);
`RunLayout` turns them into s3:// URIs of one run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"
EVAL_DIR = "eval"
EVAL_REPORT = f"{EVAL_DIR}/report.json"
EVAL_REPORT_MD = f"{EVAL_DIR}/report.md"
LOSS_SVG = f"{EVAL_DIR}/loss.svg"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(step: int) -> str:
    """checkpoints/step-<k>, relative to the run prefix."""
    return f"{CHECKPOINTS_DIR}/step-{step}"


def checkpoint_step(child: str) -> int | None:
    """The step of a folder name under checkpoints/ (None: not a checkpoint)."""
    m = _STEP_DIR.match(child)
    return int(m.group(1)) if m else None


def run_prefix(output_s3: str, run: int) -> str:
    """s3://bucket/prefix/run-<n> (no trailing slash) of spec.output.s3 and a run number."""
    return f"{output_s3.rstrip('/')}/run-{run}"


@dataclass(frozen=True)
class RunLayout:
    """The URIs of one run's files; `root` is its prefix (a trailing slash is dropped)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @classmethod
    def of(cls, output_s3: str, run: int) -> RunLayout:
        return cls(run_prefix(output_s3, run))

    @classmethod
    def of_adapter(cls, uri: str) -> RunLayout:
        """The run of a run prefix or of its adapter/ folder."""
        u = uri.rstrip("/")
        return cls(u.removesuffix("/" + ADAPTER_DIR))

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    @property
    def adapter_uri(self) -> str:
        return self.uri(ADAPTER_DIR) + "/"

    @property
    def merged_uri(self) -> str:
        return self.uri(MERGED_DIR) + "/"

    @property
    def manifest_uri(self) -> str:
        return self.uri(MANIFEST)

    @property
    def eval_report_uri(self) -> str:
        return self.uri(EVAL_REPORT)

    def checkpoint_uri(self, step: int) -> str:
        return self.uri(checkpoint_dir(step)) + "/"
