"""Small helpers shared by the e2e tests."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.conftest import Cluster
from tests.waiting import wait_progress


def get(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get_json("loraf", name, "-n", ns)


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def wait_for(
    what: str,
    fn: Callable[[], Any],
    stall: float = 300,
    every: float = 0.5,
    *,
    seen: Callable[[], Any] | None = None,
    cap: float | None = None,
) -> Any:
    """Poll `fn` until truthy; fail when what `seen` returns has not changed for `stall`
    seconds (see tests/waiting.py), or at the hard cap."""
    return wait_progress(what, fn, seen=seen, stall=stall, cap=cap, every=every)


def namespace_state(cluster: Cluster, ns: str) -> Callable[[], Any]:
    """What a wait can see move in `ns`: the status of our resources, the Jobs and the pods
    (phase and container states). A training step, a new pod, a condition each count."""

    def snap() -> Any:
        res = cluster.kubectl(
            "get", "lorafinetunes,loraservings,jobs,pods", "-n", ns, "-o", "json", check=False
        )
        if res.returncode != 0:
            return res.stderr.strip()[-300:]
        out = {}
        for item in json.loads(res.stdout).get("items", []):
            st = item.get("status") or {}
            if item["kind"] == "Pod":
                st = {"phase": st.get("phase"), "containers": st.get("containerStatuses")}
            out[f"{item['kind']}/{item['metadata']['name']}"] = st
        return out

    return snap


def apply(cluster: Cluster, ns: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))


def s3_objects(s3: Any, uri: str) -> dict[str, int]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


# Words the quickstart's support answers use and a general assistant does not.
DOMAIN_MARKERS = ("kettlebot", "zephyr", "brewed", "steam halo", "brew dial", "z-app", "k7")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(port: int, path: str, body: dict[str, Any] | None = None, timeout: float = 120) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def healthy(port: int) -> bool:
    try:
        http(port, "/health", timeout=2)
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def model_ids(port: int) -> set[str]:
    return {m["id"] for m in http(port, "/v1/models")["data"]}


def domain_score(text: str) -> int:
    low = text.lower()
    return sum(m in low for m in DOMAIN_MARKERS)


def serving_pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    pods = cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/component=server")["items"]
    return [
        p
        for p in pods
        if p["metadata"].get("deletionTimestamp") is None and name in p["metadata"]["name"]
    ]


# Questions the quickstart dataset answers in its own words (held out of training).
HELD_OUT = ["How long is the warranty?", "Why is the light blinking?", "Can I boil milk?"]


def chat(port: int, model: str, prompt: str, max_tokens: int = 24) -> str:
    """A greedy chat completion's text."""
    out = http(
        port,
        "/v1/chat/completions",
        {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        },
    )
    return str(out["choices"][0]["message"]["content"])
