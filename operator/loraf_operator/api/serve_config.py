"""The serving engines' config: what the operator writes as `serve.yaml` in a LoRAServing's
ConfigMap (builders.serving) and `loraf serve --config FILE` reads (loraf_trainer.serve,
the transformers engine, and the vLLM engine's init container and sidecar).

Like the trainer config it imports without torch, so both sides share this one model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from .models import BaseModelSpec, SpecModel

DEFAULT_WORK_DIR = Path("/tmp/loraf-serve")


class ServeConfig(SpecModel):
    """One serving engine: its base model, where the adapter list is, how it listens."""

    base_model: BaseModelSpec = Field(description="The base model (as LoRAServing.spec).")
    base_name: str = Field(
        description="Name the base model is served under (default: its display name)."
    )
    adapters_file: Path | None = Field(
        default=None, description="The adapter list ({adapters: [{name, uri}]}), polled."
    )
    work_dir: Path = Field(default=DEFAULT_WORK_DIR, description="Downloaded adapters.")
    endpoint: str | None = Field(default=None, description="S3 endpoint of adapters/base.")
    region: str | None = Field(default=None, description="S3 region.")
    host: str = Field(default="0.0.0.0", description="Address the API listens on.")
    port: int = Field(default=8000, description="OpenAI API port.")
    poll_seconds: float = Field(default=5.0, description="How often the adapter list is read.")
    sync_port: int | None = Field(
        default=None, description="vLLM sidecar: where it reports adapter states."
    )
    max_lora_rank: int | None = Field(
        default=None, description="vLLM sidecar: the engine's --max-lora-rank."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_base_name(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not (raw.get("baseName") or raw.get("base_name")):
            base = raw.get("baseModel", raw.get("base_model"))
            if base is not None:
                spec = BaseModelSpec.model_validate(base)
                raw = {**raw, "baseName": spec.display_name}
        return raw

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))
