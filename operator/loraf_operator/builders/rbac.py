"""The per-run ServiceAccount, Role and RoleBinding (least privilege for the trainer pod).

The Role lets the run's pod `get`/`patch` the status subresource of its own LoRAFineTune
(`resourceNames`) and nothing else: no Secrets, no other resources, no other objects.
"""

from __future__ import annotations

from typing import Any

from ..api.models import FINETUNE_PLURAL, GROUP, LoRAFineTune
from .common import child_metadata
from .naming import child_name


def build_service_account(ft: LoRAFineTune, run: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(ft, run, child_name(ft.name, run)),
        # Only the trainer pod (which opts in) gets a token; nothing else should mount it.
        "automountServiceAccountToken": False,
    }


def role_rules(ft_name: str) -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [GROUP],
            "resources": [f"{FINETUNE_PLURAL}/status"],
            "resourceNames": [ft_name],
            "verbs": ["get", "patch"],
        }
    ]


def build_role(ft: LoRAFineTune, run: int) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_metadata(ft, run, child_name(ft.name, run)),
        "rules": role_rules(ft.name),
    }


def build_role_binding(ft: LoRAFineTune, run: int) -> dict[str, Any]:
    name = child_name(ft.name, run)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_metadata(ft, run, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ft.namespace}],
    }
