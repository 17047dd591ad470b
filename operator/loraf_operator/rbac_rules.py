"""THE operator's RBAC rule set, as data, each rule with the reason it is needed.

`config/rbac/operator.yaml` (and, through hack/chart_gen.py, the Helm chart) is generated
from `RULES`; like the other generators (`make crds` runs them all):

    python -m loraf_operator.rbac_rules           # regenerate
    python -m loraf_operator.rbac_rules --check   # fail when the committed file is stale

Secrets: `get` only (no list/watch, no write): before creating a run's Job the operator
checks that each referenced Secret exists and has the referenced keys, and when a run's
Job completes it reads the run's manifest in S3 with the run's S3 Secret; a value is never
copied (not into a status, an Event, a log or another object). Notably absent: any write
on `lorafinetunes` beyond `patch` (kopf's annotations; the spec is never written).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .api.models import FINETUNE_PLURAL, GROUP, SERVING_PLURAL

CLUSTER_ROLE = "loraf-operator"
OUTPUT = Path(__file__).resolve().parents[2] / "config" / "rbac" / "operator.yaml"


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        (FINETUNE_PLURAL,),
        ("get", "list", "watch"),
        "watch LoRAFineTunes: the objects the operator reconciles",
    ),
    Rule(
        (GROUP,),
        (FINETUNE_PLURAL,),
        ("patch",),
        "kopf keeps its handler progress and last-handled spec in annotations (never the spec)",
    ),
    Rule(
        (GROUP,),
        (f"{FINETUNE_PLURAL}/status",),
        ("get", "patch"),
        "write conditions, phase, run, history and artifacts; also lets the operator grant "
        "exactly this to each run's Role (RBAC forbids granting what you do not hold)",
    ),
    Rule(
        (GROUP,),
        (f"{FINETUNE_PLURAL}/finalizers",),
        ("update",),
        "set blockOwnerDeletion on children's owner references (required where the "
        "OwnerReferencesPermissionEnforcement admission plugin is on)",
    ),
    Rule(
        ("batch",),
        ("jobs",),
        ("get", "list", "watch"),
        "follow each run's Job (conditions, counts) from a watch, not by polling",
    ),
    Rule(
        ("batch",),
        ("jobs",),
        ("create", "patch", "delete"),
        "create the run's Job, propagate spec.suspend, stop the old run on a spec change",
    ),
    Rule(
        ("",),
        ("pods",),
        ("get", "list", "watch"),
        "read the run's pod for precise reasons: Unschedulable, image pull errors, OOMKilled, "
        "exit codes and the trainer's termination message (read-only)",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("get",),
        "check that the Secrets a spec references exist with their keys before creating the "
        "run's Job, and read a finished run's manifest in S3 with its S3 Secret (values used "
        "in memory for that read, never copied); no list or watch",
    ),
    Rule(
        ("",),
        ("events",),
        ("list",),
        "read a run Job's FailedCreate events (a pod the Job controller cannot create: an "
        "unknown PriorityClass, a ResourceQuota) to report them and end the run",
    ),
    Rule(
        ("",),
        ("serviceaccounts", "configmaps"),
        ("get", "create", "delete"),
        "each run's ServiceAccount and trainer-config ConfigMap; delete when a run is replaced",
    ),
    Rule(
        ("rbac.authorization.k8s.io",),
        ("roles", "rolebindings"),
        ("get", "create", "delete"),
        "each run's Role/RoleBinding granting get/patch on its own LoRAFineTune's status only",
    ),
    Rule(
        (GROUP,),
        (SERVING_PLURAL,),
        ("get", "list", "watch", "create", "patch"),
        "reconcile LoRAServings; create a fine-tune's dedicated one (server-side apply) and "
        "add adapters to a shared one",
    ),
    Rule(
        (GROUP,),
        (f"{SERVING_PLURAL}/status",),
        ("get", "patch"),
        "write a LoRAServing's Ready condition, url, readyReplicas and adapter states",
    ),
    Rule(
        (GROUP,),
        (f"{SERVING_PLURAL}/finalizers",),
        ("update",),
        "blockOwnerDeletion on the serving Deployment/Service/ConfigMap owner references",
    ),
    Rule(
        ("apps",),
        ("deployments",),
        ("get", "list", "watch", "create", "patch"),
        "the serving Deployment (server-side apply) and its readiness for the status",
    ),
    Rule(
        ("",),
        ("services", "configmaps"),
        ("get", "create", "patch"),
        "the serving Service and adapter-list ConfigMap (server-side apply); get and "
        "create also make a multi-node run's headless rendezvous Service",
    ),
    Rule(
        ("",),
        ("services",),
        ("delete",),
        "delete a multi-node run's rendezvous Service when the run is replaced",
    ),
    Rule(
        ("", "events.k8s.io"),
        ("events",),
        ("create", "patch"),
        "a Kubernetes Event for every condition transition (kopf.event)",
    ),
    Rule(
        ("kopf.dev",),
        ("clusterkopfpeerings", "kopfpeerings"),
        ("get", "list", "watch", "patch"),
        "kopf peering: replicas see each other and only the highest priority one acts",
    ),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf notices when the LoRAFineTune CRD is (re)installed",
    ),
    Rule(
        ("",),
        ("namespaces",),
        ("list", "watch"),
        "kopf follows namespaces appearing/disappearing when watching a namespace pattern",
    ),
)


def cluster_role() -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": CLUSTER_ROLE,
            "labels": {
                "app.kubernetes.io/name": "loraf",
                "app.kubernetes.io/component": "operator",
            },
        },
        "rules": [r.to_dict() for r in RULES],
    }


def render() -> str:
    lines = [
        "# GENERATED by `python -m loraf_operator.rbac_rules` from",
        "# operator/loraf_operator/rbac_rules.py: edit that file, not this one.",
        "# Why each rule exists: docs/operations.md (RBAC).",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(cluster_role(), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    args = p.parse_args(argv)
    text = render()
    if not args.check:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text)
    elif not OUTPUT.exists() or OUTPUT.read_text() != text:
        print(f"{OUTPUT} is stale: run python -m loraf_operator.rbac_rules", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
