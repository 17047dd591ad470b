"""Fuzz-style table of manifests a user could write: every invalid one is rejected at
`kubectl apply` (naming the field and the value), or - where only Kubernetes itself can
tell, once the operator creates the run's children - ends `Failed` with a reason within a
minute. Never a silent retry loop (issue 16).

The apply-time cases are mostly specs the CRD used to accept while the Job (or Service)
create was refused with a 422, leaving the resource without any status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from loraf_operator.api.models import LoRAFineTune, LoRAServing
from tests.manifests import finetune, mutate, serving

from .operator_fixtures import OperatorHandle, operator, wait_until

__all__ = ["operator"]  # the fixture, imported for pytest

pytestmark = pytest.mark.cluster

FT = finetune("fuzz")
SV = serving("fuzz")
with_ = mutate
DPO = with_(FT, **{"spec.objective": "dpo", "spec.dataset.format": "preference"})


def res(**resources: Any) -> dict[str, Any]:
    return with_(FT, **{"spec.resources": resources})


def node_affinity(*expressions: dict[str, Any]) -> dict[str, Any]:
    term = {"matchExpressions": list(expressions)}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term]}}}  # fmt: skip


def pod_anti_affinity(term: dict[str, Any]) -> dict[str, Any]:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


# (id, manifest, texts the apiserver's error must all contain)
REJECTED: list[tuple[str, dict[str, Any], list[str]]] = [
    # -- more than one GPU: what cannot work is refused with the reason
    (
        "nodes-without-gpus",
        res(gpus=0, nodes=2),
        ["spec.resources.nodes: Forbidden", "nodes > 1 needs gpus >= 1"],
    ),
    ("nodes-0", res(nodes=0), ["spec.resources.nodes", "should be greater than or equal to 1"]),
    ("nodes-65", res(nodes=65), ["spec.resources.nodes", "should be less than or equal to 64"]),
    ("strategy-unknown", res(strategy="zero3"), ["spec.resources.strategy", "Unsupported value"]),
    # -- tolerations (were free-form: the Job create failed with 422)
    (
        "toleration-operator",
        res(tolerations=[{"key": "spot", "operator": "Sometimes"}]),
        ["spec.resources.tolerations[0].operator", '"Sometimes"'],
    ),
    (
        "toleration-effect",
        res(tolerations=[{"key": "spot", "operator": "Exists", "effect": "Never"}]),
        ["spec.resources.tolerations[0].effect", '"Never"'],
    ),
    (
        "toleration-exists-with-value",
        res(tolerations=[{"key": "spot", "operator": "Exists", "value": "yes"}]),
        ["spec.resources.tolerations[0].value", "must be empty when operator is Exists"],
    ),
    (
        "toleration-no-key",
        res(tolerations=[{"operator": "Equal", "value": "yes"}]),
        ["spec.resources.tolerations[0].key", "required unless operator is Exists"],
    ),
    (
        "toleration-seconds-without-noexecute",
        res(tolerations=[{"key": "a", "operator": "Exists", "tolerationSeconds": 30}]),
        ["tolerationSeconds is only allowed with effect NoExecute"],
    ),
    (
        "toleration-key-space",
        res(tolerations=[{"key": "spot pool", "operator": "Exists"}]),
        ["spec.resources.tolerations[0].key"],
    ),
    (
        "toleration-unknown-field",
        res(tolerations=[{"key": "a", "operator": "Exists", "effects": "NoSchedule"}]),
        ['unknown field "spec.resources.tolerations[0].effects"'],
    ),
    # -- nodeSelector keys and values
    (
        "node-selector-key-space",
        res(nodeSelector={"gpu pool": "a"}),
        ["spec.resources.nodeSelector: Forbidden", "keys must be valid label keys"],
    ),
    (
        "node-selector-value",
        res(nodeSelector={"pool": "a b"}),
        ["spec.resources.nodeSelector.pool"],
    ),
    (
        "node-selector-value-long",
        res(nodeSelector={"pool": "a" * 64}),
        ["spec.resources.nodeSelector.pool"],
    ),
    # -- affinity
    (
        "affinity-operator",
        res(affinity=node_affinity({"key": "zone", "operator": "Maybe", "values": ["a"]})),
        ["matchExpressions[0].operator", '"Maybe"'],
    ),
    (
        "affinity-in-without-values",
        res(affinity=node_affinity({"key": "zone", "operator": "In"})),
        ["matchExpressions[0].values", "operator In needs values"],
    ),
    (
        "affinity-exists-with-values",
        res(affinity=node_affinity({"key": "zone", "operator": "Exists", "values": ["a"]})),
        ["operator Exists allows no values"],
    ),
    (
        "affinity-gt-not-integer",
        res(affinity=node_affinity({"key": "cores", "operator": "Gt", "values": ["many"]})),
        ["operator Gt"],
    ),
    (
        "affinity-key-space",
        res(affinity=node_affinity({"key": "my zone", "operator": "Exists"})),
        ["matchExpressions[0].key"],
    ),
    (
        "affinity-unknown-field",
        res(affinity={"nodeAffinity": {"required": {}}}),
        ['unknown field "spec.resources.affinity.nodeAffinity.required"'],
    ),
    (
        "affinity-no-terms",
        res(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}),
        ["nodeSelectorTerms"],
    ),
    (
        "affinity-weight",
        res(
            affinity={
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 0, "preference": {"matchExpressions": []}}
                    ]
                }
            }
        ),
        ["weight"],
    ),
    (
        "pod-affinity-no-topology-key",
        res(affinity=pod_anti_affinity({"labelSelector": {"matchLabels": {"app": "x"}}})),
        ["topologyKey"],
    ),
    # -- names of other objects
    (
        "image-pull-secret",
        res(imagePullSecrets=["My Registry"]),
        ["spec.resources.imagePullSecrets[0]"],
    ),
    (
        "priority-class-name",
        res(priorityClassName="High Priority"),
        ["spec.resources.priorityClassName"],
    ),
    ("model-cache-pvc", res(modelCachePvc="Model_Cache"), ["spec.resources.modelCachePvc"]),
    ("gpu-type-space", res(gpuType="NVIDIA H100"), ["spec.resources.gpuType"]),
    ("image-space", res(image="my image:1"), ["spec.resources.image"]),
    (
        "credentials-secret-name",
        with_(FT, **{"spec.output.credentialsSecretRef": {"name": "S3 Creds"}}),
        ["spec.output.credentialsSecretRef.name"],
    ),
    (
        "credentials-secret-key",
        with_(FT, **{"spec.output.credentialsSecretRef": {"name": "s3", "accessKeyIdKey": "a/b"}}),
        ["spec.output.credentialsSecretRef.accessKeyIdKey"],
    ),
    (
        "hf-token-key",
        with_(FT, **{"spec.baseModel.tokenSecretRef": {"name": "hf", "key": "tok en"}}),
        ["spec.baseModel.tokenSecretRef.key"],
    ),
    # -- CEL messages name the value, not "object"
    (
        "two-model-sources",
        with_(FT, **{"spec.baseModel.s3": "s3://models/x"}),
        ["spec.baseModel: Forbidden", "set: huggingFace s3"],
    ),
    (
        "no-model-source",
        with_(FT, **{"spec.baseModel": {"trustRemoteCode": True}}),
        ["spec.baseModel: Required value", "exactly one of huggingFace, s3 or pvc"],
    ),
    (
        "cpu-lots",
        res(cpu="lots"),
        ['spec.resources.cpu: Invalid value: "lots"'],
    ),
    # -- names: a LoRAServing names its Service (DNS-1035), and so does a dedicated one
    (
        "serving-name-dot",
        with_(SV, **{"metadata.name": "smollm2.adapters"}),
        ["DNS-1035", "got smollm2.adapters"],
    ),
    ("serving-name-digit", with_(SV, **{"metadata.name": "1-adapters"}), ["DNS-1035"]),
    ("serving-name-long", with_(SV, **{"metadata.name": "a" * 64}), ["DNS-1035"]),
    (
        "finetune-dedicated-serving-name",
        with_(FT, **{"metadata.name": "smollm2.v1", "spec.serving": {"enabled": True}}),
        ["servingRef", "got smollm2.v1"],
    ),
    (
        "serving-ref-name",
        with_(FT, **{"spec.serving": {"enabled": True, "servingRef": "Shared.Svc"}}),
        ["spec.serving.servingRef"],
    ),
    # -- objective dpo (issue 20): preference data and DPO go together
    (
        "dpo-without-preference-data",
        with_(FT, **{"spec.objective": "dpo"}),
        ["spec.dataset.format", "objective dpo needs dataset.format preference"],
    ),
    (
        "preference-data-without-dpo",
        with_(FT, **{"spec.dataset.format": "preference"}),
        ["spec.dataset.format", "objective dpo needs dataset.format preference"],
    ),
    (
        "dpo-knobs-without-dpo",
        with_(FT, **{"spec.dpo": {"beta": 0.2}}),
        ["spec.dpo", "only allowed when spec.objective is dpo"],
    ),
    (
        "dpo-starting-reference-without-start",
        with_(DPO, **{"spec.dpo": {"reference": "startingAdapter"}}),
        ["spec.dpo.reference", "needs spec.startFrom"],
    ),
    (
        "start-from-two-sources",
        with_(DPO, **{"spec.startFrom": {"fineTune": "sft", "s3": "s3://b/sft/run-1/"}}),
        ["spec.startFrom", "exactly one of fineTune or s3"],
    ),
    ("dpo-beta-zero", with_(DPO, **{"spec.dpo": {"beta": 0}}), ["spec.dpo.beta"]),
]

ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("gpus-0", res(gpus=0)),
    ("gpus-1", res(gpus=1, gpuType="NVIDIA-H100-80GB-HBM3")),
    ("gpus-8-fsdp", res(gpus=8, strategy="fsdp")),
    ("nodes-4", res(gpus=2, nodes=4, strategy="auto")),
    ("gpus-0-one-node", res(gpus=0, nodes=1)),
    (
        "tolerations",
        res(
            tolerations=[
                {"operator": "Exists"},
                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                {"key": "example.com/gone", "effect": "NoExecute", "tolerationSeconds": 60},
                {"key": "a", "value": "b"},
            ]
        ),
    ),
    ("node-selector", res(nodeSelector={"example.com/pool": "gpu-a", "zone": ""})),
    (
        "affinity",
        res(
            affinity={
                **node_affinity(
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]},
                    {"key": "cores", "operator": "Gt", "values": ["8"]},
                    {"key": "spot", "operator": "DoesNotExist"},
                ),
                **pod_anti_affinity(
                    {
                        "labelSelector": {
                            "matchExpressions": [{"key": "app", "operator": "Exists"}]
                        },
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ),
            }
        ),
    ),
    (
        "names",
        res(imagePullSecrets=["regcred"], priorityClassName="high", modelCachePvc="hf-cache"),
    ),
    ("finetune-name-dot-without-serving", with_(FT, **{"metadata.name": "smollm2.v1"})),
    (
        "finetune-name-dot-shared-serving",
        with_(
            FT,
            **{"metadata.name": "smollm2.v2", "spec.serving": {"enabled": True, "servingRef": "s"}},
        ),
    ),
    ("serving-name", with_(SV, **{"metadata.name": "smollm2-adapters"})),
    ("dpo", DPO),
    (
        "dpo-from-sft",
        with_(
            DPO,
            **{
                "spec.startFrom": {"fineTune": "sft"},
                "spec.dpo": {"beta": 0.2, "lossType": "ipo", "reference": "startingAdapter"},
            },
        ),
    ),
]

MODELS: dict[str, type[LoRAFineTune] | type[LoRAServing]] = {
    "LoRAFineTune": LoRAFineTune,
    "LoRAServing": LoRAServing,
}


def create(cluster: Any, ns: str, obj: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "create", "--validate=strict", "-n", ns, "-f", "-", input=json.dumps(obj), check=False
    )


@pytest.mark.parametrize(("case_id", "manifest", "needles"), REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected_at_apply(
    cluster: Any,
    crds: Any,
    namespace: str,
    case_id: str,
    manifest: dict[str, Any],
    needles: list[str],
) -> None:
    got = create(cluster, namespace, manifest)
    assert got.returncode != 0, f"{case_id} was accepted"
    for needle in needles:
        assert needle in got.stderr, got.stderr
    assert 'Invalid value: "object"' not in got.stderr, got.stderr


@pytest.mark.parametrize(("case_id", "manifest"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_valid_neighbours_accepted(
    cluster: Any, crds: Any, namespace: str, case_id: str, manifest: dict[str, Any]
) -> None:
    got = create(cluster, namespace, manifest)
    assert got.returncode == 0, got.stderr
    kind = manifest["kind"]
    stored = cluster.get_json(kind.lower(), manifest["metadata"]["name"], "-n", namespace)
    # What the apiserver stored parses, and the copied core/v1 objects are kept verbatim.
    parsed = MODELS[kind].model_validate(stored)
    spec_res = manifest["spec"].get("resources") or {}
    for key in ("tolerations", "affinity", "nodeSelector"):
        if key in spec_res:
            assert parsed.spec.resources.to_dict()[key] == spec_res[key]


def test_models_agree_with_the_apiserver() -> None:
    """The trainer and operator parse with the same models: they refuse what the
    apiserver refuses and accept what it accepts (no cluster needed)."""
    for case_id, manifest, _ in REJECTED:
        with pytest.raises(ValidationError):
            MODELS[manifest["kind"]].model_validate(manifest)
            pytest.fail(f"model accepted {case_id}")
    for _, manifest in ACCEPTED:
        MODELS[manifest["kind"]].model_validate(manifest)


# ---------------------------------------------------------------------------------------------
# Accepted by the CRD, refused by Kubernetes when the operator creates the run's children:
# the run ends Failed/InvalidSpec with the apiserver's message, one Warning, no leftovers.
# An admission policy stands in for every such refusal (a pod template Kubernetes rejects,
# a policy engine's denial): whatever the cause, a refusal retrying cannot fix.


@pytest.fixture
def deny_jobs(cluster: Any, namespace: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A ValidatingAdmissionPolicy that refuses every Job in `namespace` (422 or 403)."""
    reason = getattr(request, "param", "Invalid")
    name = f"deny-jobs-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["jobs"],
                    }
                ]
            },
            "validations": [
                {"expression": "false", "message": "jobs are refused here", "reason": reason}
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    for obj in (policy, binding):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    probe = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}
            }
        },
    }

    def denied() -> bool:
        got = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
        )
        return got.returncode != 0 and "jobs are refused here" in got.stderr

    wait_until("the admission policy to take effect", denied, stall=30, every=0.5)
    yield reason
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        cluster.kubectl("delete", kind, name, "--wait=false", check=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("deny_jobs", ["Invalid", "Forbidden"], indirect=True)
def test_op_refused_child_fails_the_run(
    cluster: Any, namespace: str, operator: OperatorHandle, deny_jobs: str
) -> None:
    ns, name = namespace, "refused"
    ft = with_(FT, **{"metadata.name": name, "metadata.namespace": ns})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ft))
    started = time.monotonic()

    def failed() -> dict[str, Any] | None:
        got = cluster.get_json("lorafinetune", name, "-n", ns)
        conds = {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}
        ok = conds.get("Failed", {}).get("status") == "True"
        return got if ok else None

    got = wait_until("the run to end Failed", failed, stall=60)
    assert time.monotonic() - started < 60
    conds = {c["type"]: c for c in got["status"]["conditions"]}
    assert conds["Failed"]["reason"] == "InvalidSpec"
    msg = conds["Failed"]["message"]
    assert f"Job {name}-r1" in msg and "jobs are refused here" in msg, msg
    assert got["status"]["phase"] == "Failed"
    assert "Scheduled" not in conds  # no "waiting for the Job controller" on a dead run
    # No orphans: the run's ServiceAccount, Role, RoleBinding and ConfigMap are gone.
    for kind, child in (
        ("serviceaccount", f"{name}-r1"),
        ("role", f"{name}-r1"),
        ("rolebinding", f"{name}-r1"),
        ("configmap", f"{name}-r1-config"),
        ("job", f"{name}-r1"),
    ):
        res = cluster.kubectl("get", kind, child, "-n", ns, check=False)
        assert res.returncode != 0 and "NotFound" in res.stderr, (kind, res.stdout)

    # Exactly one Warning, and no retry loop: nothing changes after that.
    def warnings() -> list[dict[str, Any]]:
        items = cluster.get_json(
            "events",
            "-n",
            ns,
            "--field-selector",
            f"involvedObject.name={name},involvedObject.kind=LoRAFineTune,type=Warning",
        )["items"]
        return list(items)

    wait_until("a Warning event", warnings, stall=10)
    rv = got["metadata"]["resourceVersion"]
    time.sleep(5)
    after = cluster.get_json("lorafinetune", name, "-n", ns)
    assert after["metadata"]["resourceVersion"] == rv, "status changed after the failure"
    got_warnings = warnings()
    assert [e["reason"] for e in got_warnings] == ["InvalidSpec"], got_warnings
    assert got_warnings[0].get("count", 1) == 1
    assert "jobs are refused here" in got_warnings[0]["message"]
    assert "Traceback" not in operator.logs()
