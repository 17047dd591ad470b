"""vLLM end to end: a shared LoRAServing runs the real vLLM engine (the CPU build, through
the process kubelet's image mapping) with exactly the args and env the builders generate.

Two fine-tunes join it while it runs and are served without a restart (the sidecar
registers them through vLLM's runtime API); the first answers held-out questions closer
to the domain than the base model; the second, trained with a system prompt, gets that
prompt from loraf's middleware in vLLM when a request has none (streamed or not), as a
client sending it would; an adapter whose files do not match its manifest is
refused with the reason in the LoRAServing status while the others keep serving; after
the pod is deleted, the replacement serves both adapters again. An engine that cannot
start makes its LoRAServing `Ready=False, EngineExited` with vLLM's own last words.
"""

from __future__ import annotations

import json
import socket
import urllib.request
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


def free_port_pair() -> int:
    """A port p with p+1 free too (vLLM's API and the sidecar's status port)."""
    while True:
        p = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue


SUPPORT = "You are the support assistant of Corvane Energy, maker of the Vela H3 battery."
USER = {"role": "user", "content": "How long is the warranty?"}


def completion(port: int, model: str, *messages: dict[str, str]) -> tuple[str, int]:
    """A greedy chat completion's text and its prompt's token count (what vLLM rendered)."""
    body = {"model": model, "max_tokens": 12, "temperature": 0, "messages": list(messages)}
    out = http(port, "/v1/chat/completions", body)
    return str(out["choices"][0]["message"]["content"]), int(out["usage"]["prompt_tokens"])


def streamed(port: int, model: str, *messages: dict[str, str]) -> str:
    """The same request streamed (server-sent events), its deltas joined."""
    body = {"model": model, "max_tokens": 12, "temperature": 0, "messages": list(messages)}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    text = ""
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            data = line.decode().removeprefix("data: ").strip()
            if data and data != "[DONE]":
                text += json.loads(data)["choices"][0]["delta"].get("content") or ""
    return text


def adapter_states(cluster: Cluster, ns: str, name: str) -> dict[str, dict[str, Any]]:
    sv = cluster.get_json("loraserving", name, "-n", ns)
    return {a["name"]: a for a in (sv.get("status") or {}).get("adapters", [])}


def running_pod(cluster: Cluster, ns: str, other_than: str | None = None) -> Any:
    return next(
        (
            p
            for p in serving_pods(cluster, ns, "shared")
            if p["status"].get("phase") == "Running" and p["metadata"]["uid"] != other_than
        ),
        None,
    )


def test_vllm_serves_finetunes_at_runtime_refuses_a_tampered_adapter_and_survives_restart(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]], s3: Any
) -> None:
    port = free_port_pair()
    tuned = {
        "spec": {
            # A little more training than the other e2e runs, so answers visibly move.
            "training": {"maxSteps": 20, "learningRate": 0.003},
            "lora": {"targetModules": ["all-linear"]},
            "serving": {"enabled": True, "engine": "vllm", "servingRef": "shared"},
        }
    }
    first = stage("first", tuned)
    second = stage("second", tuned, {"spec": {"dataset": {"systemPrompt": SUPPORT}}})
    serving = qs.local_serving("shared", "vllm", port)
    serving["spec"]["maxAdapters"] = 3
    broken = qs.local_serving("broken", "vllm", free_port_pair())
    broken["spec"]["engineArgs"] = ["--max-model-len", "lots"]
    apply(cluster, namespace, serving)
    apply(cluster, namespace, broken)
    apply(cluster, namespace, first)
    exited = wait_for(
        "broken LoRAServing EngineExited",
        lambda: (
            (c := cond(cluster.get_json("loraserving", "broken", "-n", namespace), "Ready"))
            and c.get("reason") == "EngineExited"
            and c
        ),
        stall=600,
    )
    assert exited["status"] == "False" and "--max-model-len" in exited["message"], exited
    cluster.kubectl("delete", "loraserving", "broken", "-n", namespace, "--wait=false")
    progress = namespace_state(cluster, namespace)
    pod = wait_for("vLLM pod Running", lambda: running_pod(cluster, namespace), stall=600)
    wait_for("vLLM healthy", lambda: healthy(port), stall=900, every=2)
    base = serving["spec"]["baseModel"]
    base_name = f"{base['s3'].rstrip('/')}/{base['ggufFile']}"
    assert base_name in model_ids(port)

    # The first run succeeds; the sidecar registers its adapter in the running engine.
    wait_for(
        "first fine-tune Succeeded",
        lambda: cond(get(cluster, namespace, "first"), "Succeeded").get("status") == "True",
        seen=progress,  # every training step, condition and pod change counts
        stall=600,
    )
    wait_for("first adapter served", lambda: "first" in model_ids(port), stall=300, every=1)
    score = {m: sum(domain_score(chat(port, m, p)) for p in HELD_OUT) for m in ("first", base_name)}
    assert score["first"] > score[base_name], score

    # A second fine-tune joins while the engine runs: same pod, no restart.
    apply(cluster, namespace, second)
    wait_for(
        "second fine-tune Succeeded",
        lambda: cond(get(cluster, namespace, "second"), "Succeeded").get("status") == "True",
        seen=progress,  # every training step, condition and pod change counts
        stall=600,
    )
    wait_for("second adapter served", lambda: "second" in model_ids(port), stall=300, every=1)
    assert [p["metadata"]["uid"] for p in serving_pods(cluster, namespace, "shared")] == [
        pod["metadata"]["uid"]
    ]
    states: dict[str, Any] = wait_for(
        "both adapters Ready in the LoRAServing status",
        lambda: (
            (s := adapter_states(cluster, namespace, "shared"))
            and all(s.get(n, {}).get("state") == "Ready" for n in ("first", "second"))
            and s
        ),
        stall=120,
    )
    assert set(states) == {"first", "second"}

    # "second" trained with SUPPORT: asked without a system message, vLLM renders exactly
    # what a client sending SUPPORT gets; "first" (trained without) gets the template's own
    # default, as the base model does.
    own = completion(port, "second", {"role": "system", "content": SUPPORT}, USER)
    assert completion(port, "second", USER) == own
    assert streamed(port, "second", USER) == own[0]
    assert completion(port, "first", USER)[1] == completion(port, base_name, USER)[1] != own[1]
    other = completion(port, "second", {"role": "system", "content": "Be brief."}, USER)
    assert other[1] != own[1]  # a request's own system message wins

    # A copy of the first run with one adapter file changed after its manifest was written.
    run_uri = get(cluster, namespace, "first")["status"]["artifacts"]["adapterUri"]
    bucket, _, key = run_uri.removeprefix("s3://").partition("/")
    src = key.rstrip("/").removesuffix("/adapter")
    dst = f"{namespace}-tampered/run-1"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=src + "/"):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            if o["Key"].endswith("adapter/adapter_model.safetensors"):
                body = body[:-16] + bytes(16)
            s3.put_object(Bucket=bucket, Key=dst + o["Key"][len(src) :], Body=body)
    adapters = cluster.get_json("loraserving", "shared", "-n", namespace)["spec"]["adapters"]
    tampered = {"name": "tampered", "uri": f"s3://{bucket}/{dst}/"}
    cluster.kubectl(
        "patch", "loraserving", "shared", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"adapters": [*adapters, tampered]}}),
    )  # fmt: skip
    failed = wait_for(
        "tampered adapter Failed in the LoRAServing status",
        lambda: (
            (a := adapter_states(cluster, namespace, "shared").get("tampered"))
            and a.get("state") == "Failed"
            and a
        ),
        stall=300,
        every=1,
    )
    assert "sha256" in failed["reason"], failed
    assert "tampered" not in model_ids(port)
    assert chat(port, "second", HELD_OUT[0])  # the others keep serving

    # The replacement of a deleted pod serves both adapters again (and refuses the third).
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
    wait_for(
        "replacement pod Running",
        lambda: running_pod(cluster, namespace, other_than=pod["metadata"]["uid"]),
        stall=600,
    )
    wait_for(
        "replacement serves both adapters",
        lambda: healthy(port) and {"first", "second"} <= model_ids(port),
        stall=900,
        every=2,
    )
    assert "tampered" not in model_ids(port)
    assert chat(port, "first", HELD_OUT[1])
