"""Reconnect benchmark: how soon the operator acts again after an apiserver outage.

Not a test. Against a running local control plane (`hack/cluster.sh up`, then
`kubectl apply -f crds/`); it kills and restarts that cluster's apiserver:

    LORAF_CLUSTER_DIR=.cache/cluster-reconnect .venv/bin/python bench/operator_reconnect.py

For each retry policy (the operator's default LORAF_API_RETRY_BACKOFFS and kopf's own
1,1,2,3,5,8,13,21) and each `--down` duration: start the operator, kill -9 the
apiserver, keep it down that long, start it again (same argv), wait for /readyz, then
create one LoRAFineTune and time from the apiserver accepting it to its Job existing:
the operator's reconnect delay plus one reconcile (about 0.1 s on an idle cluster). The
delay depends on where the outage ends among the retry times (kopf's fall 1, 2, 4, 7,
12, 20, 33, 54 s after the failure), so give several durations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from loraf_dev import cluster as cp  # noqa: E402
from loraf_dev.operator_proc import grant_operator_rbac, operator_env  # noqa: E402

POLICIES = {"loraf default": "", "kopf default": "1,1,2,3,5,8,13,21"}


def kubectl(st: cp.State, *args: str, check: bool = True, stdin: str | None = None) -> str:
    return subprocess.run(
        [f"{st.bin_dir}/kubectl", f"--kubeconfig={st.path('admin.kubeconfig')}", *args],
        check=check,
        capture_output=True,
        text=True,
        input=stdin,
    ).stdout


def finetune(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "baseModel": {"huggingFace": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
            "training": {"maxSteps": 10},
            "output": {"s3": f"s3://out/{name}", "credentialsSecretRef": {"name": "s3-creds"}},
            "resources": {"gpus": 1},
            "suspend": True,
        },
    }


def wait(what: str, check: Any, timeout: float, every: float = 0.05) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic()
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def ready_now(st: cp.State) -> bool:
    try:
        return cp.https_ok(st, "/readyz")
    except OSError:
        return False


def apply_ok(st: cp.State, body: str) -> bool:
    try:
        kubectl(st, "apply", "-f", "-", stdin=body)
        return True
    except subprocess.CalledProcessError:
        return False


def one_round(st: cp.State, backoffs: str, down: float) -> dict[str, Any]:
    ns = f"bench-reconnect-{uuid.uuid4().hex[:5]}"
    kubectl(st, "create", "namespace", ns)
    kubectl(
        st, "create", "secret", "generic", "s3-creds", "-n", ns,
        "--from-literal=AWS_ACCESS_KEY_ID=id", "--from-literal=AWS_SECRET_ACCESS_KEY=x",
    )  # fmt: skip
    env = {**operator_env(st, {**os.environ, **cp.env_vars(st)}), "LORAF_NAMESPACES": ns}
    env.update(LORAF_METRICS_PORT="0", LORAF_HEALTH_PORT="0")
    if backoffs:
        env["LORAF_API_RETRY_BACKOFFS"] = backoffs
    log = Path(f"/tmp/operator-reconnect-{ns}.log")
    with log.open("wb") as out:
        op = subprocess.Popen([sys.executable, "-m", "loraf_operator.main"], env=env,
                              stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait("the operator", lambda: "Initial authentication has finished" in log.read_text(), 60)
        time.sleep(2)
        cp.stop_process(st, "kube-apiserver")
        time.sleep(down)
        cp.restart_process(st, "kube-apiserver")
        ready = wait("/readyz", lambda: ready_now(st), 120, every=0.02)
        # Right after /readyz the CRD's API may not be served yet: the clock starts once
        # the apiserver accepts the LoRAFineTune.
        body = json.dumps(finetune(ns, "probe"))
        accepted = wait("the apply", lambda: apply_ok(st, body), 120, every=0.1)
        job = wait(
            "the Job",
            lambda: bool(kubectl(st, "get", "job", "probe-r1", "-n", ns, check=False)),
            300,
            every=0.1,
        )
        return {
            "backoffs": backoffs or "default",
            "down_seconds": down,
            "readyz_to_accepted_seconds": round(accepted - ready, 2),
            "accepted_to_job_seconds": round(job - accepted, 2),
            "operator_alive": op.poll() is None,
            "operator_log": str(log),
        }
    finally:
        op.terminate()
        op.wait(20)
        kubectl(st, "delete", "namespace", ns, "--wait=false", check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--down", type=float, nargs="+", default=[30.0], help="seconds the apiserver stays down"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator_reconnect.json"))
    args = ap.parse_args()
    st = cp.State.load(Path(os.environ["LORAF_CLUSTER_DIR"]))
    grant_operator_rbac(lambda *a, **kw: kubectl(st, *a, stdin=kw.get("input")))
    rounds = {
        f"{name}, down {down:g} s": one_round(st, b, down)
        for down in args.down
        for name, b in POLICIES.items()
    }
    result = {
        "rounds": rounds,
        "loadavg": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "note": "shared 2-core dev VM, one round each"},
        "command": "LORAF_CLUSTER_DIR=.cache/cluster-reconnect .venv/bin/python "
        "bench/operator_reconnect.py --down " + " ".join(f"{d:g}" for d in args.down),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
