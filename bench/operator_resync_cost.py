"""Resync cost benchmark: what the periodic resync costs with N quiet, unfinished runs.

Not a test. Against a running local control plane (`hack/cluster.sh up`, then
`kubectl apply -f crds/`):

    LORAF_CLUSTER_DIR=.cache/cluster-burst .venv/bin/python bench/operator_resync_cost.py -n 1000

Creates N suspended LoRAFineTunes (Queued: unfinished, and no Job or Pod event keeps them
current, like a long training step), lets an operator with LORAF_STATUS_INTERVAL_SECONDS
`--interval` create their Jobs and settle, then counts for `--passes` intervals the
apiserver requests it makes (apiserver_request_total) and its CPU time: the cost of the
resync at that scale.
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(ROOT))

from bench.operator_burst import cpu_seconds, create_all, finetune, kubectl, request_counts  # noqa: E402
from loraf_dev import cluster as cp  # noqa: E402
from loraf_operator.kube import Kube  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator_resync_cost.json"))
    args = ap.parse_args()
    st = cp.State.load(Path(os.environ["LORAF_CLUSTER_DIR"]))
    os.environ["KUBECONFIG"] = str(st.path("admin.kubeconfig"))
    kube = await Kube.connect()
    ns = f"bench-resync-{uuid.uuid4().hex[:5]}"
    kubectl(st, "create", "namespace", ns)
    kubectl(
        st, "create", "secret", "generic", "s3-creds", "-n", ns,
        "--from-literal=AWS_ACCESS_KEY_ID=id", "--from-literal=AWS_SECRET_ACCESS_KEY=x",
    )  # fmt: skip
    await create_all(kube, [finetune(ns, f"ft-{i:04d}") for i in range(args.n)])
    env = {
        **os.environ,
        "KUBECONFIG": str(st.path("operator.kubeconfig")),
        "LORAF_NAMESPACES": ns,
        "LORAF_METRICS_PORT": "0",
        "LORAF_HEALTH_PORT": "0",
        "LORAF_STATUS_INTERVAL_SECONDS": str(args.interval),
    }
    log = Path(f"/tmp/operator-resync-{ns}.log")
    with log.open("wb") as out:
        op = subprocess.Popen([sys.executable, "-m", "loraf_operator.main"], env=env,
                              stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    result: dict[str, Any] = {"n": args.n, "interval_seconds": args.interval}
    try:
        # Jobs created and statuses written, then one quiet interval so the first resync
        # pass (all runs due at once) is over before counting.
        while kubectl(st, "get", "jobs", "-n", ns, "--no-headers").count("\n") < args.n:
            time.sleep(2)
        time.sleep(args.interval + 5)
        before, cpu0, t0 = request_counts(st), cpu_seconds(op.pid), time.monotonic()
        time.sleep(args.interval * args.passes)
        delta = request_counts(st) - before
        took = time.monotonic() - t0
        cpu = cpu_seconds(op.pid) - cpu0
        mine = {k: v for k, v in delta.items() if k.split()[1].split("/")[0] in
                ("lorafinetunes", "jobs", "pods", "events", "kopfpeerings")}  # fmt: skip
        per_pass = {k: round(v / args.passes / args.n, 2) for k, v in sorted(mine.items())}
        result.update(
            seconds_measured=round(took, 1),
            requests_per_run_per_interval=per_pass,
            requests_per_second=round(sum(mine.values()) / took, 1),
            operator_cpu_seconds_per_interval=round(cpu / args.passes, 2),
            operator_cpu_fraction=round(cpu / took, 3),
            loadavg=os.getloadavg(),
            machine={"cpus": os.cpu_count(), "note": "shared 2-core dev VM"},
            command=f"LORAF_CLUSTER_DIR=.cache/cluster-burst .venv/bin/python "
            f"bench/operator_resync_cost.py -n {args.n} --interval {args.interval:g} "
            f"--passes {args.passes}",
        )
    finally:
        op.terminate()
        op.wait(30)
        kubectl(st, "delete", "namespace", ns, "--wait=false")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
