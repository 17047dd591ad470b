"""Serving end to end: a shared LoRAServing runs the transformers engine as a real process;
a fine-tune naming it succeeds → its adapter is loaded at runtime without a restart,
answers closer to the domain than the base model on an OpenAI-compatible endpoint,
survives a pod restart, and another adapter added at runtime becomes servable too."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from loraf_dev import quickstart as qs
from tests.conftest import Cluster
from tests.e2e.helpers import (
    HELD_OUT,
    apply,
    chat,
    cond,
    domain_score,
    free_port,
    get,
    healthy,
    http,
    model_ids,
    namespace_state,
    serving_pods,
    wait_for,
)


def test_finetune_is_served_survives_restart_and_loads_adapters_at_runtime(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]]
) -> None:
    # A shared LoRAServing on the process-kubelet node, on the CPU (the trainer keeps the
    # node's one GPU), on a free loopback port: it starts serving the base model at once.
    port = free_port()
    doc = stage(
        "served",
        {
            "spec": {
                # A little more training than the other e2e runs, so answers visibly move.
                "training": {"maxSteps": 20, "learningRate": 0.003},
                "lora": {"targetModules": ["all-linear"]},
                "serving": {"enabled": True, "engine": "transformers", "servingRef": "shared"},
            }
        },
    )
    serving = qs.local_serving("shared", "transformers", port)
    apply(cluster, namespace, serving)
    apply(cluster, namespace, doc)
    pod = wait_for(
        "serving pod Running",
        lambda: next(
            (
                p
                for p in serving_pods(cluster, namespace, "shared")
                if p["status"].get("phase") == "Running"
            ),
            None,
        ),
        stall=120,
        seen=namespace_state(cluster, namespace),
    )
    wait_for(
        "server healthy",
        lambda: healthy(port),
        stall=300,
        every=1,
        seen=namespace_state(cluster, namespace),
    )

    # The run succeeds; its adapter joins the running server without a restart.
    wait_for(
        "fine-tune Succeeded",
        lambda: cond(get(cluster, namespace, "served"), "Succeeded").get("status") == "True",
        stall=600,
        seen=namespace_state(cluster, namespace),
    )
    ids = wait_for(
        "adapter listed",
        lambda: (i := model_ids(port)) and "served" in i and i,
        stall=180,
        every=1,
        seen=namespace_state(cluster, namespace),
    )
    assert [p["metadata"]["uid"] for p in serving_pods(cluster, namespace, "shared")] == [
        pod["metadata"]["uid"]
    ]
    assert cond(get(cluster, namespace, "served"), "Serving").get("status") == "True"

    # The adapter answers held-out questions closer to the domain than the base model.
    base_id = next(i for i in ids if i != "served")
    score = {m: sum(domain_score(chat(port, m, p)) for p in HELD_OUT) for m in ("served", base_id)}
    assert score["served"] > score[base_id], score

    # Restarting the serving pod keeps the adapter.
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
    new = wait_for(
        "replacement pod Running",
        lambda: next(
            (
                p
                for p in serving_pods(cluster, namespace, "shared")
                if p["metadata"]["uid"] != pod["metadata"]["uid"]
                and p["status"].get("phase") == "Running"
            ),
            None,
        ),
        stall=180,
        seen=namespace_state(cluster, namespace),
    )
    wait_for(
        "replacement healthy with the adapter",
        lambda: healthy(port) and "served" in model_ids(port),
        stall=300,
        every=1,
        seen=namespace_state(cluster, namespace),
    )

    # A second adapter added at runtime is served by the same pod, with no restart.
    adapters = json.loads(
        cluster.kubectl("get", "loraserving", "shared", "-n", namespace, "-o", "json").stdout
    )["spec"]["adapters"]
    extra = {**adapters[0], "name": "served-copy"}
    cluster.kubectl(
        "patch",
        "loraserving",
        "shared",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"adapters": [*adapters, extra]}}),
    )
    wait_for(
        "second adapter servable",
        lambda: "served-copy" in model_ids(port),
        stall=180,
        every=1,
        seen=namespace_state(cluster, namespace),
    )
    out = http(port, "/v1/completions", {"model": "served-copy", "prompt": "Hi", "max_tokens": 4})
    assert out["choices"][0]["text"] is not None
    still = [p["metadata"]["uid"] for p in serving_pods(cluster, namespace, "shared")]
    assert still == [new["metadata"]["uid"]]
