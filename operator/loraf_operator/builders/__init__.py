"""Pure builders: a LoRAFineTune (and run number) in, manifest dicts out. No I/O."""

from __future__ import annotations

from typing import Any

from ..api.models import LoRAFineTune
from .common import BuildDefaults, owner_reference, run_spec_hash
from .configmap import build_config_map
from .job import build_job, build_rendezvous_service
from .naming import child_name, config_map_name, label_value, service_name
from .rbac import build_role, build_role_binding, build_service_account

__all__ = [
    "RUN_CHILD_KINDS",
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
    "run_child_name",
    "run_spec_hash",
]

#: The kinds of a run's children, in creation order: the Job last (it needs the others,
#: and once it exists the run's children are complete); deleted in the reverse order (the
#: Job first: it is what holds GPUs). The rendezvous Service exists for multi-node runs only.
RUN_CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Job")


def run_child_name(kind: str, name: str, run: int) -> str:
    """The name of run `run`'s child of kind `kind` (one of RUN_CHILD_KINDS)."""
    if kind == "ConfigMap":
        return config_map_name(name, run)
    return service_name(name, run) if kind == "Service" else child_name(name, run)


def build_run(
    ft: LoRAFineTune,
    run: int,
    defaults: BuildDefaults | None = None,
    start_adapter_uri: str | None = None,
) -> list[dict[str, Any]]:
    """All children of run `run`, in RUN_CHILD_KINDS order (the rendezvous Service only
    for a multi-node run). `start_adapter_uri`: spec.startFrom.fineTune resolved
    (start_from.resolve)."""
    built = {
        "ServiceAccount": build_service_account(ft, run),
        "Role": build_role(ft, run),
        "RoleBinding": build_role_binding(ft, run),
        "ConfigMap": build_config_map(ft, run, start_adapter_uri),
        "Service": build_rendezvous_service(ft, run),
        "Job": build_job(ft, run, defaults),
    }
    return [obj for kind in RUN_CHILD_KINDS if (obj := built[kind]) is not None]
