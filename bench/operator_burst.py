"""Burst benchmark: N LoRAFineTunes applied at once vs a plain client creating N Jobs.

Not a test. Against a running local control plane (`hack/cluster.sh up`, then
`kubectl apply -f crds/`):

    LORAF_CLUSTER_DIR=.cache/cluster-operator .venv/bin/python bench/operator_burst.py -n 1000

Both sides create suspended objects (spec.suspend / Job.spec.suspend), so no pods are
made: the numbers measure the operator's path from a LoRAFineTune to its Job, not the
scheduler or kwok. Reported: time until all Jobs exist (seen by a `kubectl get -w`
watch) for both, apply->Job latency p50/p99 per resource, the operator's peak RSS, and
API requests per run (apiserver_request_total delta of the operator run minus the plain
run, per run; plus the operator-only verbs broken down).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from loraf_dev import cluster as cp  # noqa: E402
from loraf_operator.api.models import LoRAFineTune  # noqa: E402
from loraf_operator.builders import build_job  # noqa: E402
from loraf_operator.kube import Kube  # noqa: E402

CONCURRENCY = 16
_METRIC = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def spec(name: str) -> dict[str, Any]:
    return {
        "baseModel": {"huggingFace": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"s3": "s3://data/train.jsonl", "format": "alpaca"},
        "training": {"maxSteps": 10},
        "output": {"s3": f"s3://out/{name}", "credentialsSecretRef": {"name": "s3-creds"}},
        "resources": {"gpus": 1},
        "suspend": True,
    }


def finetune(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAFineTune",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec(name),
    }


def plain_job(ns: str, name: str) -> dict[str, Any]:
    """The Job the operator would build, minus the owner reference (no owner exists)."""
    ft = LoRAFineTune.model_validate(
        {
            "metadata": {"name": name, "namespace": ns, "uid": "x", "generation": 1},
            "spec": spec(name),
        }
    )
    job = build_job(ft, 1)
    del job["metadata"]["ownerReferences"]
    return job


def kubectl(st: cp.State, *args: str) -> str:
    return subprocess.run(
        [f"{st.bin_dir}/kubectl", f"--kubeconfig={st.path('admin.kubeconfig')}", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def request_counts(st: cp.State) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in kubectl(st, "get", "--raw", "/metrics").splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'\w+="[^"]*"', m.group(1)))
        labels = {k: v.strip('"') for k, v in labels.items()}
        key = f"{labels.get('verb')} {labels.get('resource')}" + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        out[key] += int(float(m.group(2)))
    return out


class JobWatch:
    """`kubectl get jobs -w` in a thread: when each Job was first seen (monotonic)."""

    def __init__(self, st: cp.State, ns: str) -> None:
        self.seen: dict[str, float] = {}
        self.proc = subprocess.Popen(
            [
                f"{st.bin_dir}/kubectl",
                f"--kubeconfig={st.path('admin.kubeconfig')}",
                "get",
                "jobs",
                "-n",
                ns,
                "-w",
                "--no-headers",
                "-o",
                "custom-columns=N:.metadata.name",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.setdefault(line.strip(), time.monotonic())

    async def wait_for(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.seen)}/{n} Jobs after {timeout}s")
            await asyncio.sleep(0.05)
        return max(self.seen.values())

    def stop(self) -> None:
        self.proc.terminate()


async def create_all(kube: Kube, objs: list[dict[str, Any]]) -> dict[str, float]:
    """Create with CONCURRENCY in flight; return each object's created-at (monotonic)."""
    done: dict[str, float] = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for o in objs:
        queue.put_nowait(o)

    async def worker() -> None:
        while not queue.empty():
            o = queue.get_nowait()
            await kube.create(o)
            done[o["metadata"]["name"]] = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """user+system CPU time of a process (load-independent, unlike wall time here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator_burst.json"))
    args = ap.parse_args()
    st = cp.State.load(Path(os.environ["LORAF_CLUSTER_DIR"]))
    os.environ["KUBECONFIG"] = str(st.path("admin.kubeconfig"))
    kube = await Kube.connect()
    tag = uuid.uuid4().hex[:5]
    ns_plain, ns_op = f"bench-plain-{tag}", f"bench-op-{tag}"
    for ns in (ns_plain, ns_op):
        kubectl(st, "create", "namespace", ns)
    # The Secret the specs reference: the operator checks it exists before each Job.
    kubectl(
        st, "create", "secret", "generic", "s3-creds", "-n", ns_op,
        "--from-literal=AWS_ACCESS_KEY_ID=id", "--from-literal=AWS_SECRET_ACCESS_KEY=x",
    )  # fmt: skip
    n = args.n
    result: dict[str, Any] = {
        "n": n,
        "client_concurrency": CONCURRENCY,
        "suspended": True,
        "loadavg_before": os.getloadavg(),
    }
    op = None
    try:
        # 1. Plain client: N Jobs.
        watch = JobWatch(st, ns_plain)
        await asyncio.sleep(1)
        before = request_counts(st)
        t0 = time.monotonic()
        made = await create_all(kube, [plain_job(ns_plain, f"ft-{i:04d}") for i in range(n)])
        result["client_seconds_to_create_all_jobs"] = round(max(made.values()) - t0, 2)
        t_all = await watch.wait_for(n, args.timeout)
        plain_requests = request_counts(st) - before
        watch.stop()
        result["plain_seconds_to_all_jobs"] = round(t_all - t0, 2)

        # 2. Operator: N LoRAFineTunes.
        env = {
            **os.environ,
            "KUBECONFIG": str(st.path("operator.kubeconfig")),
            "LORAF_NAMESPACES": ns_op,
            "LORAF_METRICS_PORT": "0",
            "LORAF_HEALTH_PORT": "0",
        }
        log = Path(f"/tmp/operator-burst-{tag}.log")
        with log.open("wb") as out:
            op = subprocess.Popen(
                [sys.executable, "-m", "loraf_operator.main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await asyncio.sleep(4)
        watch = JobWatch(st, ns_op)
        await asyncio.sleep(1)
        cpu0 = cpu_seconds(op.pid)
        before = request_counts(st)
        t0 = time.monotonic()
        created = await create_all(kube, [finetune(ns_op, f"ft-{i:04d}") for i in range(n)])
        result["client_seconds_to_create_all_finetunes"] = round(max(created.values()) - t0, 2)
        t_all = await watch.wait_for(n, args.timeout)
        # Let the run settle (status written, no more events) before counting requests.
        await asyncio.sleep(5)
        op_requests = request_counts(st) - before
        watch.stop()
        lat = [watch.seen[f"{name}-r1"] - t for name, t in created.items()]
        phases = Counter(
            (i.get("status") or {}).get("phase")
            for i in json.loads(kubectl(st, "get", "lorafinetunes", "-n", ns_op, "-o", "json"))[
                "items"
            ]
        )
        result.update(
            operator_seconds_to_all_jobs=round(t_all - t0, 2),
            ratio_operator_vs_plain=round((t_all - t0) / result["plain_seconds_to_all_jobs"], 2),
            apply_to_job_p50_seconds=round(statistics.median(lat), 3),
            apply_to_job_p99_seconds=round(pct(lat, 99), 3),
            apply_to_job_max_seconds=round(max(lat), 3),
            operator_peak_rss_mib=round(peak_rss_mib(op.pid), 1),
            operator_cpu_seconds_per_run=round((cpu_seconds(op.pid) - cpu0) / n, 4),
            phases_after=dict(phases),
            operator_handler_retries=log.read_text(errors="replace").count("will try again"),
            operator_log=str(log),
        )
        diff = {
            k: op_requests[k] - plain_requests.get(k, 0)
            for k in set(op_requests) | set(plain_requests)
        }
        diff = {k: v for k, v in diff.items() if v}
        result["api_requests_per_run_vs_plain"] = round(sum(diff.values()) / n, 2)
        own = (
            "POST serviceaccounts",
            "POST roles",
            "POST rolebindings",
            "POST configmaps",
            "POST jobs",
            "PATCH lorafinetunes/status",
            "PATCH lorafinetunes",
            "POST events",
            "GET jobs",
            "GET lorafinetunes",
            "GET configmaps",
            "GET serviceaccounts",
        )
        result["operator_requests_per_run"] = {
            k: round(op_requests[k] / n, 2) for k in own if op_requests[k]
        }
        result["request_delta_by_verb_resource"] = dict(
            sorted(diff.items(), key=lambda kv: -abs(kv[1]))
        )
    finally:
        if op is not None:
            op.terminate()
            op.wait(15)
        for ns in (ns_plain, ns_op):
            kubectl(st, "delete", "namespace", ns, "--wait=false")
        await kube.close()
    result["loadavg_after"] = os.getloadavg()
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "note": "shared 2-core dev VM; apiserver, etcd, controllers, kwok and the "
        "operator all on it",
    }
    result["command"] = (
        "LORAF_CLUSTER_DIR=.cache/cluster-operator .venv/bin/python bench/operator_burst.py "
        + " ".join(sys.argv[1:])
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
