"""LoRAServing on the real control plane: its children and status, and the
LoRAFineTune → LoRAServing link (dedicated, shared, base-model mismatch, deletion).

Runs succeed through kwok (hack/kwok-stages.yaml): the test writes the trainer's
`status.progress.result` as the run's own ServiceAccount, then annotates the pod
`sim.loraf.dev/exit-code=0`. No server process runs here (kwok pods run nothing); the
engine itself is tested in tests/trainer/test_serve.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from loraf_operator.kube import FIELD_MANAGER

from .operator_fixtures import OperatorHandle, start_operator, wait_until
from .test_operator import (
    apply,
    cond,
    finish_pod,
    get_ft,
    manifest,
    running_pod,
    upload_run,
    wait_cond,
)

pytestmark = pytest.mark.timeout(180)

SMOL = {"huggingFace": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@pytest.fixture(scope="module")
def serving_operator(cluster: Any, crds: list[str]) -> Iterator[OperatorHandle]:
    handle = start_operator(cluster, namespaces=["t-test-sv-*"])
    yield handle
    handle.stop()
    print(handle.logs()[-3000:])


def serving_manifest(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAServing",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"baseModel": SMOL, "engine": "transformers", "resources": {"gpus": 0}, **spec},
    }


def get(cluster: Any, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    r = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def succeed(cluster: Any, ns: str, name: str) -> None:
    """Run 1 of `name` uploads its adapter and manifest (to the test S3) and exits 0."""
    pod = running_pod(cluster, ns, f"{name}-r1")
    upload_run(cluster, ns, name)
    finish_pod(cluster, ns, pod, 0)
    wait_cond(cluster, ns, name, "Succeeded")


def test_sv_serving_reconciles_into_deployment_and_service(
    cluster: Any, namespace: str, serving_operator: OperatorHandle
) -> None:
    ns = namespace
    apply(
        cluster,
        serving_manifest(
            "chat", ns, adapters=[{"name": "a", "uri": "s3://out/a/run-1/", "rank": 8}]
        ),
    )
    dep = wait_until("Deployment chat", lambda: get(cluster, "deployment", ns, "chat"))
    svc = get(cluster, "service", ns, "chat")
    cm = get(cluster, "configmap", ns, "chat-adapters")
    assert svc is not None and cm is not None
    sv = get(cluster, "loraserving", ns, "chat")
    assert sv is not None
    for obj in (dep, svc, cm):
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["uid"]) == ("LoRAServing", sv["metadata"]["uid"])
    server = dep["spec"]["template"]["spec"]["containers"][0]
    assert server["command"][-2:] == ["--config", "/etc/loraf-serving/serve.yaml"]
    assert json.loads(cm["data"]["adapters.json"])["adapters"][0]["name"] == "a"
    # Applied by the operator's one field manager (kube.py), like everything it writes.
    for kind, child in (("deployment", "chat"), ("service", "chat"), ("cm", "chat-adapters")):
        managed = cluster.get_json(kind, child, "-n", ns, "--show-managed-fields")
        fields = managed["metadata"]["managedFields"]
        assert {m["manager"] for m in fields if m["operation"] == "Apply"} == {FIELD_MANAGER}

    def ready() -> dict[str, Any] | None:
        s = (get(cluster, "loraserving", ns, "chat") or {}).get("status") or {}
        return s if cond(s and {"status": s}, "Ready").get("status") == "True" else None

    st = wait_until("LoRAServing chat Ready", ready, stall=90, every=1)
    assert st["url"] == f"http://chat.{ns}.svc:8000/v1"
    assert st["readyReplicas"] == 1
    # Adapter states come from the replicas' own /v1/adapters; a kwok pod serves nothing, so
    # the adapter stays Loading (never a Ready nobody reported: the e2e layer sees Ready).
    assert st["adapters"] == [{"name": "a", "uri": "s3://out/a/run-1/", "state": "Loading"}]
    # kubectl get shows every adapter and the state of those not Ready.
    table = cluster.kubectl("get", "loraserving", "chat", "-n", ns).stdout
    assert "a (Loading)" in table, table

    # Adding an adapter updates the ConfigMap without rolling the transformers pods.
    template = dep["spec"]["template"]
    cluster.kubectl(
        "patch",
        "loraserving",
        "chat",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "adapters": [
                        {"name": "a", "uri": "s3://out/a/run-1/", "rank": 8},
                        {"name": "b", "uri": "s3://out/b/run-2/"},
                    ]
                }
            }
        ),
    )
    wait_until(
        "adapter b in the ConfigMap",
        lambda: (
            '"b"'
            in (get(cluster, "configmap", ns, "chat-adapters") or {"data": {"adapters.json": ""}})[
                "data"
            ]["adapters.json"]
        ),
    )
    assert get(cluster, "deployment", ns, "chat")["spec"]["template"] == template  # type: ignore[index]


def test_sv_succeeded_finetune_creates_owned_serving_and_delete_cleans_up(
    cluster: Any, namespace: str, serving_operator: OperatorHandle
) -> None:
    ns = namespace
    apply(
        cluster,
        manifest(
            "ft", ns, serving={"enabled": True, "engine": "transformers", "adapterName": "support"}
        ),
    )
    running_pod(cluster, ns, "ft-r1")
    assert get(cluster, "loraserving", ns, "ft") is None  # not before the run succeeded
    succeed(cluster, ns, "ft")
    ft = wait_cond(cluster, ns, "ft", "Serving", reason="AdapterAdded")
    sv = wait_until("LoRAServing ft", lambda: get(cluster, "loraserving", ns, "ft"))
    assert sv["spec"]["adapters"] == [
        {"name": "support", "uri": "s3://out/ft/run-1/adapter/", "rank": 16}
    ]
    assert sv["spec"]["baseModel"] == ft["spec"]["baseModel"]
    ref = sv["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"]) == ("LoRAFineTune", ft["metadata"]["uid"])
    wait_until("Deployment ft", lambda: get(cluster, "deployment", ns, "ft"))

    cluster.kubectl("delete", "lorafinetune", "ft", "-n", ns)
    wait_until(
        "the LoRAServing and its Deployment garbage-collected",
        lambda: (
            get(cluster, "loraserving", ns, "ft") is None
            and get(cluster, "deployment", ns, "ft") is None
        ),
        stall=60,
        every=1,
    )


def test_sv_shared_serving_and_base_model_mismatch(
    cluster: Any, namespace: str, serving_operator: OperatorHandle
) -> None:
    ns = namespace
    apply(cluster, serving_manifest("shared", ns))
    wait_until("Deployment shared", lambda: get(cluster, "deployment", ns, "shared"))
    for name in ("one", "two"):
        apply(cluster, manifest(name, ns, serving={"enabled": True, "servingRef": "shared"}))
    other = manifest("other", ns, serving={"enabled": True, "servingRef": "shared"})
    other["spec"]["baseModel"] = {"huggingFace": "Qwen/Qwen2-7B"}
    apply(cluster, other)
    for name in ("one", "two", "other"):
        succeed(cluster, ns, name)

    def names() -> list[str] | None:
        sv = get(cluster, "loraserving", ns, "shared") or {}
        got = [a["name"] for a in sv.get("spec", {}).get("adapters", [])]
        return got if sorted(got) == ["one", "two"] else None

    wait_until("both adapters in the shared LoRAServing", names)
    for name in ("one", "two"):
        wait_cond(cluster, ns, name, "Serving", reason="AdapterAdded")
    bad = wait_cond(cluster, ns, "other", "Serving", status="False", reason="BaseModelMismatch")
    assert "Qwen/Qwen2-7B" in cond(bad, "Serving")["message"]
    assert "SmolLM2" in cond(bad, "Serving")["message"]
    assert sorted(names() or []) == ["one", "two"]  # the mismatched adapter never got in
    # The shared one is not owned by any fine-tune: deleting one leaves it serving.
    cluster.kubectl("delete", "lorafinetune", "one", "-n", ns)
    assert get(cluster, "loraserving", ns, "shared") is not None
    assert get_ft(cluster, ns, "two")
    cm = wait_until("ConfigMap", lambda: get(cluster, "configmap", ns, "shared-adapters"))
    assert {a["name"] for a in json.loads(cm["data"]["adapters.json"])["adapters"]} == {
        "one",
        "two",
    }
