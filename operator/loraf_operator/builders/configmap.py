"""The ConfigMap holding the run's TrainerConfig (no secret values: those come as env)."""

from __future__ import annotations

from typing import Any

import yaml

from ..api.models import LoRAFineTune
from ..api.trainer_config import CONFIG_KEY, TrainerConfig
from .common import child_metadata
from .naming import config_map_name

# libyaml's emitter when present: the pure-Python one took ~30 ms per config, the largest
# CPU cost per run in the burst benchmark. Same content as TrainerConfig.to_yaml() (a unit
# test round-trips both through TrainerConfig.from_yaml).
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def config_yaml(cfg: TrainerConfig) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)


def build_config_map(
    ft: LoRAFineTune, run: int, start_adapter_uri: str | None = None
) -> dict[str, Any]:
    cfg = TrainerConfig.for_resource(ft, run, start_adapter_uri)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(ft, run, config_map_name(ft.name, run)),
        "data": {CONFIG_KEY: config_yaml(cfg)},
        # The config of a run never changes: a new spec is a new run with a new ConfigMap.
        "immutable": True,
    }
