"""`make demo`: a real LoRA fine-tune through the whole product on this machine, then served.

Starts the local control plane and S3 server (hack/cluster.sh), installs the CRDs and the
operator's RBAC, runs the operator as its non-admin identity and the process kubelet (which
runs the trainer and serving pods as local processes), uploads the quickstart model and
dataset, creates a LoRAServing, applies examples/quickstart.yaml joined to it, streams
`kubectl get loraf -w`, prints the outcome and asks the served adapter a question.
The serving engine is vLLM (its CPU build) unless `ENGINE=transformers`.
Everything it starts keeps running for you to explore; `hack/cluster.sh down` stops it all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from loraf_dev import cluster as cp
from loraf_dev import quickstart as qs
from loraf_dev.operator_proc import grant_operator_rbac, operator_env

NAMESPACE = "loraf-demo"
NAME = "quickstart"
ENGINE = os.environ.get("ENGINE", "vllm")
SERVING = f"quickstart-{ENGINE}"
TIMEOUT_S = 900


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def kubectl(st: cp.State, *args: str, input: str | None = None, check: bool = True) -> str:
    res = subprocess.run(
        [f"{st.bin_dir}/kubectl", f"--kubeconfig={st.path('admin.kubeconfig')}", *args],
        input=input,
        text=True,
        capture_output=True,
    )
    if check and res.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def ensure_addon(st: cp.State, name: str, argv: list[str], env: dict[str, str]) -> None:
    pid = st.pids.get(name)
    if pid and cp.pid_alive(pid):
        return
    cp.start(st, name, argv, env=env)


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def vllm_bin() -> str:
    """bin/ of the CPU vLLM environment (hack/vllm-venv.sh: cached after the first run)."""
    out = subprocess.run(
        [str(qs.ROOT / "hack" / "vllm-venv.sh")], check=True, capture_output=True, text=True
    )
    return f"{out.stdout.strip()}/bin"


def main() -> int:
    if ENGINE not in ("vllm", "transformers"):
        raise SystemExit(f"ENGINE must be vllm or transformers, not {ENGINE!r}")
    t0 = time.monotonic()
    say("Starting the local control plane and S3 (binaries are cached after the first run)")
    st = cp.up()
    env = cp.env_vars(st)
    py = sys.executable
    say("Installing CRDs and the operator's RBAC; starting the operator and the process kubelet")
    for f in sorted((qs.ROOT / "crds").glob("*.yaml")):
        kubectl(st, "apply", "--server-side", "--force-conflicts", "-f", str(f))
    kubectl(st, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    grant_operator_rbac(lambda *a, **kw: kubectl(st, *a, **kw))
    path = f"{Path(py).parent}:{st.bin_dir}:/usr/local/bin:/usr/bin:/bin"
    ensure_addon(
        st, "operator", [py, "-m", "loraf_operator.main"], {**operator_env(st, env), "PATH": path}
    )
    ensure_addon(
        st,
        "process-kubelet",
        [
            py,
            "-m",
            "loraf_dev.kubelet",
            "--kubeconfig",
            str(st.path("admin.kubeconfig")),
            "--node",
            cp.LOCAL_NODE,
            "--workdir",
            str(st.path("kubelet")),
            "--shared-cache",
            str(cp.cache_root() / "pods"),
            # vllm/vllm-openai pods run `vllm serve` from the CPU build of the same release.
            "--image-path",
            f"vllm/vllm-openai={vllm_bin()}",
        ],
        {**env, "PATH": path},
    )

    say("Uploading SmolLM2-135M-Instruct (GGUF) and the quickstart dataset to the local S3")
    s3 = boto3.client(
        "s3",
        endpoint_url=st.s3_endpoint,
        aws_access_key_id=st.s3_access_key,
        aws_secret_access_key=st.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    qs.stage_inputs(s3)
    kubectl(st, "create", "namespace", NAMESPACE, check=False)
    kubectl(
        st,
        "apply",
        "-n",
        NAMESPACE,
        "-f",
        "-",
        input=json.dumps(qs.s3_secret(st.s3_access_key, st.s3_secret_key)),
    )
    # A second demo run starts a fresh fine-tune (caches make it faster).
    kubectl(st, "delete", "loraf", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")

    say(f"A LoRAServing ({ENGINE} engine, on the CPU) that the fine-tune will join")
    port = ensure_serving(st)
    say(f"kubectl apply -f examples/quickstart.yaml   (namespace {NAMESPACE}, on the local node)")
    manifest = qs.local_manifest(
        NAME,
        {"spec": {"serving": {"enabled": True, "engine": ENGINE, "servingRef": SERVING}}},
    )
    kubectl(st, "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))
    say("kubectl get loraf -w")
    watch = subprocess.Popen(
        [
            f"{st.bin_dir}/kubectl",
            f"--kubeconfig={st.path('admin.kubeconfig')}",
            "get",
            "loraf",
            NAME,
            "-n",
            NAMESPACE,
            "-w",
            "-o",
            "wide",
        ],
        stdout=sys.stdout,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    obj: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            obj = json.loads(kubectl(st, "get", "loraf", NAME, "-n", NAMESPACE, "-o", "json"))
            conds = conditions(obj)
            if any(conds.get(t, {}).get("status") == "True" for t in ("Succeeded", "Failed")):
                break
            time.sleep(2)
        time.sleep(1)
    finally:
        watch.terminate()
    code = report(st, s3, obj)
    if code == 0:
        ask_served_adapter(port)
    say(
        f"Done in {time.monotonic() - t0:.0f}s. Explore with: source {st.path('env')}; "
        "kubectl get loraf,lorasvc -A"
    )
    print("    Clean up everything this demo started: hack/cluster.sh down")
    return code


def ensure_serving(st: cp.State) -> int:
    """Create the shared LoRAServing once; later demo runs keep its port."""
    found = kubectl(st, "get", "lorasvc", SERVING, "-n", NAMESPACE, "-o", "json", check=False)
    port = json.loads(found)["spec"]["port"] if found else cp.free_port()
    serving = qs.local_serving(SERVING, ENGINE, port)
    kubectl(st, "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(serving))
    return int(port)


def http(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def ask_served_adapter(port: int) -> None:
    say(f"The adapter is served: OpenAI-compatible API on http://127.0.0.1:{port}/v1")
    deadline = time.monotonic() + 300
    ids: set[str] = set()
    while time.monotonic() < deadline:
        try:
            ids = {m["id"] for m in http(port, "/v1/models")["data"]}
        except (OSError, ValueError):
            ids = set()
        if NAME in ids:
            break
        time.sleep(2)
    else:
        print(f"  (adapter {NAME} not loaded yet; models: {sorted(ids)})")
        return
    # The dataset's answer (examples/data/make_quickstart.py): a 3-year Zephyr Promise.
    question, fact = "How long is the warranty?", "3-year"
    print(f"  GET /v1/models -> {sorted(ids)}")
    for model in sorted(ids, key=lambda m: m != NAME):
        out = http(
            port,
            "/v1/chat/completions",
            {
                "model": model,
                "max_tokens": 40,
                "temperature": 0,
                "messages": [{"role": "user", "content": question}],
            },
        )
        answer = out["choices"][0]["message"]["content"].strip().replace("\n", " ")
        says = "states" if fact.lower() in answer.lower() else "does not state"
        print(f"  {model}: {question!r} -> {answer!r}  ({says} the dataset's {fact!r})")


def report(st: cp.State, s3: Any, obj: dict[str, Any]) -> int:
    status = obj.get("status", {})
    say("Conditions")
    for c in status.get("conditions", []):
        print(
            f"  {c['type']:<10} {c['status']:<6} {c.get('reason', ''):<22} {c.get('message', '')}"
        )
    ok = conditions(obj).get("Succeeded", {}).get("status") == "True"
    if ok:
        arts = status.get("artifacts", {})
        say("Artifacts")
        for k in ("adapterUri", "manifestUri", "evalReportUri", "mergedUri"):
            if arts.get(k):
                print(f"  {k:<14} {arts[k]}")
        report_uri = arts.get("evalReportUri", "")
        if report_uri.endswith(".json"):
            report_uri = report_uri[: -len(".json")] + ".md"
        if report_uri:
            bucket, _, key = report_uri.removeprefix("s3://").partition("/")
            try:
                md = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
                say("Evaluation (base vs adapter)")
                print(md[:3000])
            except Exception as exc:  # the report is a nicety here
                print(f"  (could not read {report_uri}: {exc})")
    else:
        say(
            f"The run did not succeed; operator log: {st.path('logs', 'operator.log')}, "
            f"pod logs under {st.path('kubelet', 'pods')}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
