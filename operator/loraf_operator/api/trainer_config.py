"""The trainer's one typed config: what the operator puts in the `<child>-config` ConfigMap.

It holds the resource's identity, the run number and the full spec, never a secret value
(those arrive as env from secretKeyRef). Frozen: parsed once, never mutated. Where the
run writes: `layout()` (api.run_layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .models import LoRAFineTune, LoRAFineTuneSpec
from .run_layout import RunLayout

CONFIG_KEY = "config.yaml"
CONFIG_MOUNT_PATH = "/etc/loraf/config.yaml"


class TrainerConfig(BaseModel):
    """Everything one training run needs to know, except secrets."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    namespace: str = Field(description="Namespace of the LoRAFineTune.")
    name: str = Field(description="Name of the LoRAFineTune.")
    uid: str = Field(description="metadata.uid of the LoRAFineTune (guards status writes).")
    generation: int = Field(description="metadata.generation this run was started for.", ge=0)
    run: int = Field(description="Run number (1, 2, ...).", ge=1)
    spec: LoRAFineTuneSpec = Field(description="The resource's spec at run start.")
    start_adapter_uri: str | None = Field(
        default=None,
        description="spec.startFrom.fineTune resolved by the operator: the s3:// prefix of "
        "that fine-tune's succeeded run (manifest.json + adapter/).",
    )

    @classmethod
    def for_resource(
        cls, obj: LoRAFineTune | dict[str, Any], run: int, start_adapter_uri: str | None = None
    ) -> TrainerConfig:
        """Build the config of run `run` from a LoRAFineTune (model or raw object)."""
        ft = obj if isinstance(obj, LoRAFineTune) else LoRAFineTune.model_validate(obj)
        meta = ft.metadata
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation", 0) or 0),
            run=run,
            spec=ft.spec,
            start_adapter_uri=start_adapter_uri,
        )

    def layout(self) -> RunLayout:
        """Where this run's files live: <output.s3>/run-<n>/ (api.run_layout)."""
        return RunLayout.of(self.spec.output.s3, self.run)

    # -- (de)serialization -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> TrainerConfig:
        return cls.model_validate(yaml.safe_load(text))

    @classmethod
    def load(cls, path: str | Path = CONFIG_MOUNT_PATH) -> TrainerConfig:
        return cls.from_yaml(Path(path).read_text())
