"""Pure builders: a LoRAFineTune (and run number) in, manifest dicts out. No I/O."""

from __future__ import annotations

from typing import Any

from ..api.models import LoRAFineTune
from .common import BuildDefaults, owner_reference, run_spec_hash
from .configmap import build_config_map
from .job import build_job, build_rendezvous_service
from .naming import child_name, config_map_name, label_value
from .rbac import build_role, build_role_binding, build_service_account

__all__ = [
    "BuildDefaults",
    "build_config_map",
    "build_job",
    "build_rendezvous_service",
    "build_role",
    "build_role_binding",
    "build_run",
    "build_service_account",
    "child_name",
    "config_map_name",
    "label_value",
    "owner_reference",
    "run_spec_hash",
]


def build_run(
    ft: LoRAFineTune,
    run: int,
    defaults: BuildDefaults | None = None,
    start_adapter_uri: str | None = None,
) -> list[dict[str, Any]]:
    """All children of run `run`, in creation order (the Job last: it needs the others;
    the rendezvous Service only for a multi-node run). `start_adapter_uri`:
    spec.startFrom.fineTune resolved (start_from.resolve)."""
    service = build_rendezvous_service(ft, run)
    return [
        build_service_account(ft, run),
        build_role(ft, run),
        build_role_binding(ft, run),
        build_config_map(ft, run, start_adapter_uri),
        *([service] if service is not None else []),
        build_job(ft, run, defaults),
    ]
