"""A real local Kubernetes control plane plus an S3 server, for tests and the demo.

    python -m loraf_dev.cluster up|down|env|status   (wrapped by hack/cluster.sh)

Starts etcd, kube-apiserver (RBAC on, token auth), kube-controller-manager, kube-scheduler,
kwok (fake GPU and CPU nodes, pod phases driven by annotations) and s3s-fs (S3 with sigv4
auth) on 127.0.0.1 with free ports. Writes kubeconfigs and an env file into the state dir
and records every pid so `down` stops exactly what `up` started.

Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"

# Fake node pool: what a GPU cluster looks like to the scheduler.
GPU_NODES = ("gpu-node-0", "gpu-node-1")
CPU_NODES = ("cpu-node-0",)
# Pods bound to this node are run as local processes by loraf_dev.kubelet, not by kwok.
LOCAL_NODE = "loraf-local"
LOCAL_GPUS = 4
GPU_PER_NODE = 8
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"

ADMIN_USER = "loraf-admin"
# What `up` starts; add-ons (operator, process kubelet) may be added to the pid list too.
CORE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "s3")
OPERATOR_USER = "loraf-operator"


@dataclass
class State:
    """Everything `up` decided, persisted as state.json for `env`/`down` and for tests."""

    dir: str
    bin_dir: str
    apiserver_port: int
    etcd_port: int
    s3_port: int
    admin_token: str
    operator_token: str
    s3_access_key: str
    s3_secret_key: str
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def path(self, *parts: str) -> Path:
        return Path(self.dir, *parts)

    def save(self) -> None:
        self.path("state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> State:
        return cls(**json.loads((state_dir / "state.json").read_text()))


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The machine-wide cache (binaries, Python env, models); see hack/fetch-bins.sh."""
    return Path(os.environ.get("LORAF_CACHE") or Path.home() / ".cache" / "loraf")


def state_dir() -> Path:
    return Path(os.environ.get("LORAF_CLUSTER_DIR", ROOT / ".cache" / "cluster"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch_bins() -> str:
    out = subprocess.run(
        [str(HACK / "fetch-bins.sh"), "all"], check=True, stdout=subprocess.PIPE, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def kubeconfig(st: State, user: str, token: str) -> str:
    ca = st.path("certs", "apiserver.crt")
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "loraf",
                    "cluster": {"server": st.server, "certificate-authority": str(ca)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "loraf", "user": user}}],
            "current-context": user,
        },
        indent=2,
    )


def start(st: State, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start a long-running process in its own session; `down` stops it by pid."""
    logf = open(st.path("logs", f"{name}.log"), "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=st.dir,
        env=env,
    )
    st.pids[name] = proc.pid
    st.save()
    # Kept for restart_process (fault tests: an apiserver or etcd stopped and started again).
    st.path("logs", f"{name}.argv.json").write_text(json.dumps({"argv": argv, "env": env}))


def restart_process(st: State, name: str) -> None:
    """Start a process stopped by `stop_process` again, with the argv it was started with."""
    saved = json.loads(st.path("logs", f"{name}.argv.json").read_text())
    start(st, name, saved["argv"], saved["env"])


def wait_for(what: str, check, timeout: float = 60.0, st: State | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        if st is not None:
            for name, pid in st.pids.items():
                if not pid_alive(pid):
                    raise SystemExit(f"{name} exited; see {st.path('logs', name + '.log')}")
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def kubectl(st: State, *args: str, input: str | None = None, user: str = "admin") -> str:
    cfg = st.path(f"{user}.kubeconfig")
    res = subprocess.run(
        [str(Path(st.bin_dir, "kubectl")), f"--kubeconfig={cfg}", *args],
        input=input,
        text=True,
        capture_output=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def https_ok(st: State, path: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(st.path("certs", "apiserver.crt")))
    req = urllib.request.Request(
        st.server + path, headers={"Authorization": f"Bearer {st.admin_token}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
        return bool(r.status == 200)


def node_manifest(name: str, gpus: int, labels: dict[str, str], taints: list[dict]) -> dict:
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def nodes() -> list[dict]:
    gpu_labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": GPU_PRODUCT,
        "nvidia.com/gpu.count": str(GPU_PER_NODE),
    }
    gpu_taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    out = [node_manifest(n, GPU_PER_NODE, gpu_labels, gpu_taint) for n in GPU_NODES]
    out += [node_manifest(n, 0, {}, []) for n in CPU_NODES]
    # The local node looks like a node of LOCAL_GPUS GPUs (the trainer runs on the CPU there,
    # one rank per GPU asked for: multi-GPU and multi-node runs fit). Its own taint keeps
    # pods off it unless they ask for it, so kwok-driven tests never land here.
    out.append(
        node_manifest(
            LOCAL_NODE,
            LOCAL_GPUS,
            {
                **gpu_labels,
                "nvidia.com/gpu.count": str(LOCAL_GPUS),
                "loraf.dev/process-kubelet": "true",
            },
            [
                *gpu_taint,
                {"key": "loraf.dev/process-kubelet", "value": "true", "effect": "NoSchedule"},
            ],
        )
    )
    return out


def up(args: argparse.Namespace | None = None) -> State:
    sd = state_dir()
    if (sd / "state.json").exists():
        old = State.load(sd)
        core = [pid for name, pid in old.pids.items() if name in CORE]
        if len(core) == len(CORE) and all(pid_alive(p) for p in core):
            log(f"already up ({sd})")
            return old
        down_state(old)
    t0 = time.monotonic()
    bin_dir = fetch_bins()
    log(f"binaries ready in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    shutil.rmtree(sd, ignore_errors=True)
    for sub in ("certs", "logs", "etcd", "s3"):
        (sd / sub).mkdir(parents=True)
    st = State(
        dir=str(sd),
        bin_dir=bin_dir,
        apiserver_port=free_port(),
        etcd_port=free_port(),
        s3_port=free_port(),
        admin_token=secrets.token_hex(16),
        operator_token=secrets.token_hex(16),
        s3_access_key="loraf-" + secrets.token_hex(4),
        s3_secret_key=secrets.token_hex(20),
    )
    st.save()
    b = Path(bin_dir)
    certs = st.path("certs")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(certs / "sa.key"), "2048"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(certs / "sa.key"), "-pubout", "-out", str(certs / "sa.pub")],
        check=True,
        capture_output=True,
    )
    # Token auth: an admin and the non-admin identity the operator runs as.
    st.path("tokens.csv").write_text(
        f'{st.admin_token},{ADMIN_USER},1,"system:masters"\n{st.operator_token},{OPERATOR_USER},2\n'
    )
    peer = free_port()
    start(
        st,
        "etcd",
        [
            str(b / "etcd"),
            "--data-dir",
            str(st.path("etcd")),
            "--name",
            "loraf",
            "--listen-client-urls",
            f"http://127.0.0.1:{st.etcd_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{st.etcd_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"loraf=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ],
    )
    start(
        st,
        "kube-apiserver",
        [
            str(b / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{st.etcd_port}",
            f"--cert-dir={certs}",
            f"--secure-port={st.apiserver_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            f"--token-auth-file={st.path('tokens.csv')}",
            f"--service-account-issuer={st.server}/",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ],
    )
    wait_for("apiserver cert", lambda: st.path("certs", "apiserver.crt").exists(), st=st)
    for user, token in (("admin", st.admin_token), ("operator", st.operator_token)):
        st.path(f"{user}.kubeconfig").write_text(kubeconfig(st, user, token))
    wait_for("kube-apiserver /readyz", lambda: https_ok(st, "/readyz"), timeout=90, st=st)
    admin_cfg = str(st.path("admin.kubeconfig"))
    common = [
        f"--kubeconfig={admin_cfg}",
        f"--authentication-kubeconfig={admin_cfg}",
        f"--authorization-kubeconfig={admin_cfg}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
    ]
    start(
        st,
        "kube-controller-manager",
        [
            str(b / "kube-controller-manager"),
            *common,
            f"--secure-port={free_port()}",
            f"--service-account-private-key-file={certs / 'sa.key'}",
            f"--root-ca-file={certs / 'apiserver.crt'}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            "--concurrent-job-syncs=20",
            "--v=1",
        ],
    )
    start(
        st,
        "kube-scheduler",
        [
            str(b / "kube-scheduler"),
            *common,
            f"--secure-port={free_port()}",
            "--v=1",
        ],
    )
    start(
        st,
        "kwok",
        [
            str(b / "kwok"),
            f"--kubeconfig={admin_cfg}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--config={HACK / 'kwok-stages.yaml'}",
            f"--server-address=127.0.0.1:{free_port()}",
            "--node-lease-duration-seconds=40",
        ],
    )
    start_s3(st)
    kubectl(
        st,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes()}),
    )
    wait_for("nodes Ready", lambda: nodes_ready(st), timeout=60, st=st)
    # The trainer identity may change only status.progress (as the Helm chart installs it).
    kubectl(st, "apply", "-f", str(HACK.parent / "config" / "policy" / "trainer-status.yaml"))
    wait_for(
        "default service account",
        lambda: bool(kubectl(st, "get", "sa", "default", "-o", "name")),
        st=st,
    )
    wait_for("S3 server", lambda: s3_listening(st), st=st)
    write_env(st)
    took = time.monotonic() - t0
    log(f"up in {took:.1f}s: {st.server}, S3 {st.s3_endpoint}; source {st.path('env')}")
    return st


def start_s3(st: State) -> None:
    """Start (or, after `stop_process(st, "s3")`, restart) the S3 server: same port,
    keys and data, so fault tests can take S3 down and bring it back."""
    start(
        st,
        "s3",
        [
            str(Path(st.bin_dir) / "s3s-fs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(st.s3_port),
            "--access-key",
            st.s3_access_key,
            "--secret-key",
            st.s3_secret_key,
            str(st.path("s3")),
        ],
    )


def stop_process(st: State, name: str) -> None:
    """Kill one started process by its recorded pid (an outage, for fault tests)."""
    pid = st.pids.pop(name, None)
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    st.save()


def nodes_ready(st: State) -> bool:
    out = kubectl(st, "get", "nodes", "-o", "json")
    items = json.loads(out)["items"]
    ready = [
        n
        for n in items
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n["status"].get("conditions", [])
        )
    ]
    return len(ready) == len(GPU_NODES) + len(CPU_NODES) + 1


def s3_listening(st: State) -> bool:
    with socket.create_connection(("127.0.0.1", st.s3_port), timeout=1):
        return True


def env_vars(st: State) -> dict[str, str]:
    return {
        "LORAF_CLUSTER_DIR": st.dir,
        "KUBECONFIG": str(st.path("admin.kubeconfig")),
        "LORAF_OPERATOR_KUBECONFIG": str(st.path("operator.kubeconfig")),
        "LORAF_BIN_DIR": st.bin_dir,
        "AWS_ENDPOINT_URL": st.s3_endpoint,
        "AWS_ACCESS_KEY_ID": st.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": st.s3_secret_key,
        "AWS_REGION": "us-east-1",
    }


def write_env(st: State) -> None:
    lines = [f"export {k}={v}" for k, v in env_vars(st).items()]
    lines.append(f'export PATH="{st.bin_dir}:$PATH"')
    st.path("env").write_text("\n".join(lines) + "\n")


def down_state(st: State) -> None:
    # Reverse start order: consumers first, etcd last.
    for pid in reversed(list(st.pids.values())):
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    deadline = time.monotonic() + 10
    for name, pid in st.pids.items():
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            log(f"{name} ignored SIGTERM; killing")
            os.killpg(pid, signal.SIGKILL)
    st.pids = {}
    st.save()


def down(args: argparse.Namespace) -> None:
    sd = state_dir()
    if not (sd / "state.json").exists():
        log("nothing to stop")
        return
    down_state(State.load(sd))
    if not args.keep:
        shutil.rmtree(sd, ignore_errors=True)
    log("down")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="hack/cluster.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start everything (reuses a running cluster)")
    d = sub.add_parser("down", help="stop every process `up` started")
    d.add_argument("--keep", action="store_true", help="keep the state dir (logs) after stopping")
    sub.add_parser("env", help="print the env file path (source it)")
    sub.add_parser("status", help="print state.json")
    args = p.parse_args(argv)
    if args.cmd == "up":
        st = up(args)
        print(st.path("env"))
    elif args.cmd == "down":
        down(args)
    elif args.cmd == "env":
        print(state_dir() / "env")
    elif args.cmd == "status":
        state = state_dir() / "state.json"
        if not state.exists():
            print(f"no cluster is up (no {state}); start one with: hack/cluster.sh up")
            return 1
        print(state.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
