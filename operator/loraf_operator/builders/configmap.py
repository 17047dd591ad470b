"""The ConfigMap holding the run's TrainerConfig (no secret values: those come as env)."""

from __future__ import annotations

from typing import Any

from ..api.models import LoRAFineTune
from ..api.trainer_config import CONFIG_KEY, TrainerConfig
from .common import child_metadata
from .naming import config_map_name


def build_config_map(ft: LoRAFineTune, run: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(ft, run, config_map_name(ft.name, run)),
        "data": {CONFIG_KEY: TrainerConfig.for_resource(ft, run).to_yaml()},
        # The config of a run never changes: a new spec is a new run with a new ConfigMap.
        "immutable": True,
    }
