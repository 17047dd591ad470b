"""The dev/test process kubelet runs pods on `loraf-local` as real local processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Cluster
from tests.waiting import wait_progress

LOCAL = {
    "nodeSelector": {"loraf.dev/process-kubelet": "true"},
    "tolerations": [{"operator": "Exists"}],
}

PROBE = r"""
import os, json, pathlib
from kubernetes import client, config
config.load_incluster_config()
review = client.AuthenticationV1Api().create_self_subject_review(
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
out = {
    "user": review.status.user_info.username,
    "config": pathlib.Path("/etc/probe/greeting").read_text(),
    "secret": os.environ["SECRET_VALUE"],
    "ns": os.environ["POD_NS"],
}
pathlib.Path("/dev/termination-log").write_text(json.dumps(out))
raise SystemExit(3)
"""


def wait_pod(cluster: Cluster, ns: str, name: str, pred: Any, stall: float = 60) -> Any:
    """Wait until `pred(pod)` (pod None once gone); fails when the pod's status stood still
    for `stall` seconds."""
    last: dict[str, Any] = {}

    def check() -> Any:
        res = cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
        pod = json.loads(res.stdout) if res.returncode == 0 else None
        last["status"] = pod and pod.get("status")
        return (pod or {"gone": True}) if pred(pod) else None

    got = wait_progress(f"pod {name} to match", check, seen=lambda: last.get("status"), stall=stall)
    return None if got == {"gone": True} else got


def test_pod_runs_with_volumes_env_and_its_own_identity(
    cluster: Cluster, namespace: str, process_kubelet: Path
) -> None:
    cluster.kubectl("create", "configmap", "probe", "-n", namespace, "--from-literal=greeting=hi")
    cluster.kubectl(
        "create", "secret", "generic", "probe", "-n", namespace, "--from-literal=v=s3cr3t"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            **LOCAL,
            "restartPolicy": "Never",
            "volumes": [{"name": "cfg", "configMap": {"name": "probe"}}],
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "command": ["python", "-c", PROBE],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/probe"}],
                    "env": [
                        {
                            "name": "SECRET_VALUE",
                            "valueFrom": {"secretKeyRef": {"name": "probe", "key": "v"}},
                        },
                        {
                            "name": "POD_NS",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                    ],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    done = wait_pod(
        cluster, namespace, "probe", lambda p: p and p["status"].get("phase") == "Failed"
    )
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3
    seen = json.loads(term["message"])
    assert seen == {
        "user": f"system:serviceaccount:{namespace}:default",
        "config": "hi",
        "secret": "s3cr3t",
        "ns": namespace,
    }


def test_deleting_a_pod_sends_sigterm_and_removes_it(
    cluster: Cluster, namespace: str, process_kubelet: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "got-sigterm"
    script = f"trap 'echo term > {marker}; exit 0' TERM; while true; do sleep 0.2; done"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {
            **LOCAL,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    wait_pod(cluster, namespace, "sleeper", lambda p: p and p["status"].get("phase") == "Running")
    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--wait=false")
    wait_pod(cluster, namespace, "sleeper", lambda p: p is None, stall=30)
    assert marker.read_text().strip() == "term"


SERVER = r"""
import http.server, pathlib, sys
host, port = sys.argv[1], int(sys.argv[2])
pathlib.Path("/dev/termination-log").write_text(pathlib.Path("/shared/seed").read_text())
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = pathlib.Path("/shared/ready").exists()
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((host, port), H).serve_forever()
"""


def test_init_containers_then_every_container_with_readiness_and_fallback_logs(
    cluster: Cluster, namespace: str, process_kubelet: Path
) -> None:
    """What a vLLM serving pod needs: an init container first, then server and sidecar at
    once, readiness from an httpGet probe, $(VAR) expansion, 0.0.0.0 kept on loopback, and a
    failed container's log tail as its message (FallbackToLogsOnError)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shared = [{"name": "shared", "mountPath": "/shared"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "multi"},
        "spec": {
            **LOCAL,
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [
                {
                    "name": "seed",
                    "image": "python:3.11",
                    "command": ["sh", "-c", "echo seeded > /shared/seed"],
                    "volumeMounts": shared,
                }
            ],
            "containers": [
                {
                    "name": "server",
                    "image": "python:3.11",
                    "command": ["python", "-c", SERVER],
                    "args": ["0.0.0.0", "$(PORT)"],
                    "env": [{"name": "PORT", "value": str(port)}],
                    "volumeMounts": shared,
                    "readinessProbe": {"httpGet": {"path": "/", "port": port}},
                },
                {
                    "name": "sidecar",
                    "image": "python:3.11",
                    "command": [
                        "sh", "-c",
                        "test -f /shared/seed && while [ ! -f /shared/stop ]; do sleep 0.2; done;"
                        " echo sidecar gives up; exit 4",
                    ],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": shared,
                },
            ],
        },
    }  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def ready(p: Any) -> bool:
        conds = {c["type"]: c["status"] for c in (p or {}).get("status", {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    running = wait_pod(
        cluster, namespace, "multi", lambda p: p and p["status"].get("phase") == "Running"
    )
    init = running["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    assert {c["name"] for c in running["status"]["containerStatuses"]} == {"server", "sidecar"}
    assert not ready(running)  # the probe answers 503 until /shared/ready exists
    kubelet_pod = next((process_kubelet / "pods").glob(f"{running['metadata']['uid']}"))
    (kubelet_pod / "volumes" / "shared" / "ready").write_text("")
    wait_pod(cluster, namespace, "multi", ready)

    (kubelet_pod / "volumes" / "shared" / "stop").write_text("")
    done = wait_pod(
        cluster, namespace, "multi", lambda p: p and p["status"].get("phase") == "Failed"
    )
    states = {c["name"]: c["state"]["terminated"] for c in done["status"]["containerStatuses"]}
    assert states["sidecar"]["exitCode"] == 4
    assert states["sidecar"]["message"] == "sidecar gives up"  # the log's tail
    assert states["server"]["message"] == "seeded"  # its own termination log wins
    assert states["server"]["exitCode"] != 0  # stopped because its sibling failed
