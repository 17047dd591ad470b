"""Run the operator locally as its non-admin identity (demo and tests share this)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraf_dev import cluster as cp

ROOT = Path(__file__).resolve().parents[2]
RBAC_FILE = ROOT / "config" / "rbac" / "operator.yaml"


def operator_binding(user: str = cp.OPERATOR_USER) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "loraf-operator"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "loraf-operator",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def grant_operator_rbac(kubectl: Callable[..., Any]) -> None:
    """Apply the operator's ClusterRole and bind it to the operator's user (as admin).

    `kubectl(*args, input=...)` runs kubectl with the admin kubeconfig.
    """
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RBAC_FILE))
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps(operator_binding()),
    )


def operator_env(st: cp.State, base: dict[str, str]) -> dict[str, str]:
    """Environment for `python -m loraf_operator.main` against the local cluster."""
    return {
        **base,
        "KUBECONFIG": str(st.path("operator.kubeconfig")),
        "LORAF_NAMESPACES": "",
        "LORAF_S3_ENDPOINT": st.s3_endpoint,
        "LORAF_S3_REGION": "us-east-1",
        "LORAF_METRICS_PORT": "0",
        "LORAF_HEALTH_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
