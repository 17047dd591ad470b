"""Per-run RBAC and ConfigMap builders, and the operator's generated ClusterRole."""

from __future__ import annotations

import subprocess
import sys

import yaml

from loraf_operator import rbac_rules
from loraf_operator.api.models import LoRAFineTune
from loraf_operator.api.trainer_config import TrainerConfig
from loraf_operator.builders import (
    build_config_map,
    build_role,
    build_role_binding,
    build_run,
    build_service_account,
)
from loraf_operator.kube import KINDS


def ft() -> LoRAFineTune:
    return LoRAFineTune.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u", "generation": 2},
            "spec": {
                "baseModel": {"huggingFace": "org/model"},
                "dataset": {"s3": "s3://bkt/train.jsonl", "format": "alpaca"},
                "training": {"maxSteps": 10},
                "output": {"s3": "s3://bkt/out", "credentialsSecretRef": {"name": "s3c"}},
            },
        }
    )


def test_role_allows_only_own_status() -> None:
    role = build_role(ft(), 1)
    assert role["rules"] == [
        {
            "apiGroups": ["loraf.dev"],
            "resources": ["lorafinetunes/status"],
            "resourceNames": ["demo"],
            "verbs": ["get", "patch"],
        }
    ]


def test_binding_ties_the_run_sa_to_the_run_role() -> None:
    rb = build_role_binding(ft(), 3)
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "demo-r3",
    }
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "demo-r3", "namespace": "ns"}]
    sa = build_service_account(ft(), 3)
    assert sa["metadata"]["name"] == "demo-r3" and sa["automountServiceAccountToken"] is False


def test_config_map_holds_the_trainer_config() -> None:
    cm = build_config_map(ft(), 4)
    assert cm["metadata"]["name"] == "demo-r4-config" and cm["immutable"] is True
    cfg = TrainerConfig.from_yaml(cm["data"]["config.yaml"])
    assert (cfg.namespace, cfg.name, cfg.uid, cfg.generation, cfg.run) == ("ns", "demo", "u", 2, 4)
    assert "s3c" in cm["data"]["config.yaml"]  # the Secret's name, never its values


def test_every_child_is_owned_and_labelled() -> None:
    kinds = []
    for obj in build_run(ft(), 1):
        kinds.append(obj["kind"])
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "loraf.dev/v1alpha1",
                "kind": "LoRAFineTune",
                "name": "demo",
                "uid": "u",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "loraf"
        assert meta["labels"]["loraf.dev/run"] == "1"
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]  # Job last


def test_operator_cluster_role_is_generated_and_current() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "loraf_operator.rbac_rules", "--check"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    committed = yaml.safe_load(rbac_rules.OUTPUT.read_text())
    assert committed == rbac_rules.cluster_role()


def test_operator_rules_read_secrets_only_by_name_and_never_write_spec() -> None:
    secret_rules = [r for r in rbac_rules.RULES if "secrets" in r.resources]
    # One rule, read-only and by name: no list/watch (that would hand every value in the
    # namespace to the operator), no write.
    assert [(r.resources, r.verbs) for r in secret_rules] == [(("secrets",), ("get",))]
    for rule in rbac_rules.RULES:
        assert "*" not in rule.verbs and "*" not in rule.resources
        if "lorafinetunes" in rule.resources:
            assert not {"update", "create", "delete"} & set(rule.verbs)
        assert rule.why


def test_config_map_yaml_equals_trainer_config_to_yaml() -> None:
    cfg = TrainerConfig.for_resource(ft(), 4)
    data = build_config_map(ft(), 4)["data"]["config.yaml"]
    assert TrainerConfig.from_yaml(data) == TrainerConfig.from_yaml(cfg.to_yaml()) == cfg


def test_every_kind_the_operator_client_addresses_has_a_rule() -> None:
    """kube.KINDS is what the operator can address: each kind is granted by some rule."""
    granted = {(g, r) for rule in rbac_rules.RULES for g in rule.api_groups for r in rule.resources}
    for name, kind in KINDS.items():
        group = kind.api.split("/")[2] if kind.api.startswith("/apis/") else ""
        assert (group, kind.plural) in granted, f"no RBAC rule for {name}"
