"""A "process kubelet" for dev/test only: runs the pods bound to one node as local processes.

There is no container engine here, so pods scheduled onto the process-kubelet node
(``loraf-local``) are executed directly: init containers one after another, then every
container at once, each as a process with the pod's env (values from Secrets/ConfigMaps
resolved, ``$(VAR)`` references expanded as kubelet does) and its volumes materialised
into a per-pod folder and bind-mounted at their mount paths inside a private mount
namespace (``unshare -m``), so ``/etc/loraf/config.yaml`` and the projected
service-account token at ``/var/run/secrets/kubernetes.io/serviceaccount`` are where
in-cluster code expects them. The real pod status is written back: init and container
statuses, readiness from each container's ``httpGet`` readiness probe (a container
without one is ready once started), then Succeeded/Failed with the real exit codes and
termination messages (``FallbackToLogsOnError`` uses the log's tail). Deleting a pod sends
SIGTERM, waits the grace period, then SIGKILL. Containers are not restarted in place: when
one exits the pod ends (a Deployment's ReplicaSet then creates a new pod).

Images are ignored, except that ``--image-path REPO=DIR`` puts DIR first on PATH for
containers of that image repository (e.g. the CPU vLLM environment for
``vllm/vllm-openai``, so its ``vllm serve`` runs); everything else runs from this
machine's environment (the project's ``loraf``/``python`` stand in for the trainer image).
Pods share the host's network, which is loopback only here: an argument ``0.0.0.0`` (a
server's "all interfaces") becomes ``127.0.0.1``, and ``LORAF_BIND_HOST=127.0.0.1`` tells
the project's own servers the same.

What the real kubelet (and cluster DNS) give a pod that this one emulates differently:
- Names: each container gets its own ``/etc/hosts`` (bind-mounted, as the kubelet manages
  it) naming the pod's ``hostname``, and with a ``subdomain`` its FQDN
  ``<hostname>.<subdomain>.<ns>.svc.cluster.local``; for a pod of an Indexed Job also
  every peer's ``<job>-<index>.<subdomain>...`` (cluster DNS would answer those through
  the headless Service). Every name means 127.0.0.1, where all pods are.
- Ports: a real pod has its own IP, so every pod of a run can listen on the same port
  (torchrun's rendezvous on 29400); here they share one loopback with everything else on
  the machine (other runs, other test sessions). Each ``containerPort`` a container
  declares is therefore mapped to a free loopback port, one per Job and port (the pods of
  one Job agree on it), and env values that are that port (``29400``) or end in it
  (``host:29400``) are rewritten before ``$(VAR)`` expansion.
- Processes: a container is every process in its mount namespace (a real runtime uses the
  container's cgroup); SIGTERM goes to the main process's group, SIGKILL (after the grace
  period) and the container's end to all of them, so no worker process outlives its pod.

Not part of the product. Needs root (for ``unshare -m``), as on the CI machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("process-kubelet")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Host env passed through to pods: where the toolchain and the shared caches are.
PASSTHROUGH_ENV = ("PATH", "LORAF_CACHE", "HF_HOME", "TMPDIR", "LANG", "LC_ALL")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Proc:
    """One container's process (and, through its mount namespace, its descendants)."""

    name: str
    image: str
    proc: subprocess.Popen[bytes]
    log: Path
    termination_log: Path
    fallback_to_logs: bool
    started_at: str
    probe: tuple[int, str] | None  # readiness httpGet (port, path)
    ready: bool = False
    mnt_ns: str | None = None  # the container's mount namespace, once it exists
    ns_fd: int | None = None  # held while the pod runs: see container_namespace


@dataclass
class Running:
    pod: str
    namespace: str
    workdir: Path
    spec: Any = None  # the pod as started, for volume re-syncs
    procs: dict[str, Proc] = field(default_factory=dict)
    init_statuses: list[dict[str, Any]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    grace: int = 30


def _image_repo(image: str | None) -> str:
    """registry/name without tag or digest."""
    ref = (image or "").split("@", 1)[0]
    head, _, tail = ref.rpartition(":")
    return head if head and "/" not in tail else ref


def _loopback(argv: list[str]) -> list[str]:
    return [
        a.replace("=0.0.0.0", "=127.0.0.1") if a.endswith("=0.0.0.0") else
        ("127.0.0.1" if a == "0.0.0.0" else a)
        for a in argv
    ]  # fmt: skip


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args ($$ escapes a $)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _readiness(c: Any) -> tuple[int, str] | None:
    probe = c.readiness_probe
    if probe is None or probe.http_get is None:
        return None
    port = probe.http_get.port
    if isinstance(port, str) and not port.isdigit():
        port = next((p.container_port for p in c.ports or [] if p.name == port), 0)
    return int(port), probe.http_get.path or "/"


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def container_namespace(p: Proc) -> str | None:
    """The container's own mount namespace (None until `unshare` has made it: a process
    still in ours must never count as the container).

    A descriptor on it is held until `release_namespace`: the kernel gives a freed
    namespace's number to the next `unshare` at once, so without it a cleanup that runs
    just after a container ends would SIGKILL whichever container started next."""
    if p.mnt_ns is None and p.proc.returncode is None:  # not reaped: the pid is still ours
        try:
            fd = os.open(f"/proc/{p.proc.pid}/ns/mnt", os.O_RDONLY)
        except OSError:
            return None
        ino = os.fstat(fd).st_ino
        if ino == os.stat("/proc/self/ns/mnt").st_ino:
            os.close(fd)
            return None
        p.ns_fd, p.mnt_ns = fd, f"mnt:[{ino}]"
    return p.mnt_ns


def release_namespace(p: Proc) -> None:
    """Let the kernel reuse the container's namespace number (its processes are gone)."""
    if p.ns_fd is not None:
        os.close(p.ns_fd)
    p.ns_fd = p.mnt_ns = None


def kill_namespace(ns: str, sig: int = signal.SIGKILL) -> int:
    """Signal every process in mount namespace `ns`; returns how many."""
    hit = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mnt_ns(int(entry)) == ns:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), sig)
                hit += 1
    return hit


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rewrite_ports(env: dict[str, str], ports: dict[int, int]) -> dict[str, str]:
    """Env values that are a mapped port, or end in `:<port>`, with the mapped port."""
    out = dict(env)
    for k, v in env.items():
        for old, new in ports.items():
            if v == str(old):
                out[k] = str(new)
            elif v.endswith(f":{old}"):
                out[k] = v[: -len(str(old))] + str(new)
    return out


def hosts_file(pod: Any, peers: list[str]) -> str:
    """/etc/hosts of a pod: localhost, its own names and its Indexed Job peers' names."""
    import socket

    # The pod shares this machine's hostname (no UTS namespace): it must resolve too, as
    # a real pod's own hostname does (gloo looks up the hostname to pick its interface).
    lines = [
        f"127.0.0.1\tlocalhost {socket.gethostname()}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    spec, ns = pod.spec, pod.metadata.namespace
    for host in dict.fromkeys([spec.hostname or pod.metadata.name, *peers]):
        names = [host]
        if spec.subdomain:
            fq = f"{host}.{spec.subdomain}"
            names = [f"{fq}.{ns}.svc.cluster.local", f"{fq}.{ns}.svc", f"{fq}.{ns}", fq, host]
        lines.append("127.0.0.1\t" + " ".join(dict.fromkeys(names)))
    return "\n".join(lines) + "\n"


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return 200 <= r.status < 400
    except (OSError, ValueError):
        return False


class ProcessKubelet:
    def __init__(
        self,
        node: str,
        workdir: Path,
        apiserver_port: int,
        image_paths: dict[str, str] | None = None,
        shared_cache: Path | None = None,
    ) -> None:
        self.node = node
        self.workdir = workdir
        self.apiserver_port = apiserver_port
        self.image_paths = image_paths or {}
        self.shared_cache = shared_cache
        self.core = client.CoreV1Api()
        self.running: dict[str, Running] = {}
        self.done: set[str] = set()
        self.ports: dict[tuple[str, int], int] = {}  # (Job uid, containerPort) -> host port
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # --- volumes and env -------------------------------------------------------------
    def _write_items(self, target: Path, data: dict[str, bytes], items: list[Any] | None) -> None:
        target.mkdir(parents=True, exist_ok=True)
        pairs = [(i.key, i.path) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key in data:
                p = target / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                if p.exists() and p.read_bytes() == data[key]:
                    continue
                # Atomic swap, so a process polling the file never reads half of it.
                tmp = p.with_name(f".{p.name}.tmp")
                tmp.write_bytes(data[key])
                tmp.replace(p)

    def refresh_volumes(self, pod: Any, root: Path) -> None:
        """Re-sync ConfigMap and Secret volumes of a running pod, as kubelet does."""
        ns = pod.metadata.namespace
        for v in pod.spec.volumes or []:
            d = root / "volumes" / v.name
            if v.config_map:
                self._write_items(d, self._configmap(ns, v.config_map.name), v.config_map.items)
            elif v.secret:
                self._write_items(d, self._secret(ns, v.secret.secret_name), v.secret.items)

    def _configmap(self, ns: str, name: str) -> dict[str, bytes]:
        cm = self.core.read_namespaced_config_map(name, ns)
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def _secret(self, ns: str, name: str) -> dict[str, bytes]:
        sec = self.core.read_namespaced_secret(name, ns)
        return {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}

    def _sa_token(self, pod: Any, expiration: int | None, audience: str | None) -> bytes:
        spec = client.V1TokenRequestSpec(
            audiences=[audience] if audience else [],
            expiration_seconds=expiration or 3600,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        )
        tr = self.core.create_namespaced_service_account_token(
            pod.spec.service_account_name or "default",
            pod.metadata.namespace,
            client.AuthenticationV1TokenRequest(spec=spec),
        )
        assert tr.status is not None
        return str(tr.status.token).encode()

    def _materialise(self, pod: Any, root: Path) -> dict[str, Path]:
        ns = pod.metadata.namespace
        out: dict[str, Path] = {}
        for v in pod.spec.volumes or []:
            d = root / "volumes" / v.name
            d.mkdir(parents=True, exist_ok=True)
            if v.config_map:
                self._write_items(d, self._configmap(ns, v.config_map.name), v.config_map.items)
            elif v.secret:
                self._write_items(d, self._secret(ns, v.secret.secret_name), v.secret.items)
            elif v.projected:
                for src in v.projected.sources or []:
                    if src.service_account_token:
                        t = src.service_account_token
                        (d / t.path).write_bytes(
                            self._sa_token(pod, t.expiration_seconds, t.audience)
                        )
                    elif src.config_map:
                        self._write_items(
                            d, self._configmap(ns, src.config_map.name), src.config_map.items
                        )
                    elif src.secret:
                        self._write_items(d, self._secret(ns, src.secret.name), src.secret.items)
                    elif src.downward_api:
                        for item in src.downward_api.items or []:
                            if item.field_ref:
                                (d / item.path).write_text(
                                    self._field(pod, item.field_ref.field_path)
                                )
            elif v.persistent_volume_claim:
                # A PVC is a folder shared by every pod that claims it.
                pvc = self.workdir / "pvcs" / ns / v.persistent_volume_claim.claim_name
                pvc.mkdir(parents=True, exist_ok=True)
                d = pvc
            # emptyDir and anything else: an empty per-pod folder.
            out[v.name] = d
        return out

    def _field(self, pod: Any, path: str) -> str:
        # metadata.annotations['k'] / metadata.labels['k'] (the Job controller gives
        # JOB_COMPLETION_INDEX this way)
        m = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
        if m:
            return str((getattr(pod.metadata, m.group(1)) or {}).get(m.group(2), ""))
        return {
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": pod.spec.node_name or "",
            "spec.serviceAccountName": pod.spec.service_account_name or "",
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }.get(path, "")

    def _env(self, pod: Any, c: Any, home: Path) -> dict[str, str]:
        ns = pod.metadata.namespace
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update(
            HOME=str(home),
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            KUBERNETES_SERVICE_HOST="127.0.0.1",
            KUBERNETES_SERVICE_PORT=str(self.apiserver_port),
            # Pods share the host's network here: servers must stay on loopback.
            LORAF_BIND_HOST="127.0.0.1",
        )
        for ef in c.env_from or []:
            data = (
                self._configmap(ns, ef.config_map_ref.name)
                if ef.config_map_ref
                else self._secret(ns, ef.secret_ref.name)
            )
            env.update({(ef.prefix or "") + k: v.decode() for k, v in data.items()})
        for e in c.env or []:
            if e.value_from is None:
                env[e.name] = e.value or ""
                continue
            vf = e.value_from
            try:
                if vf.secret_key_ref:
                    env[e.name] = self._secret(ns, vf.secret_key_ref.name)[
                        vf.secret_key_ref.key
                    ].decode()
                elif vf.config_map_key_ref:
                    r = vf.config_map_key_ref
                    env[e.name] = self._configmap(ns, r.name)[r.key].decode()
                elif vf.field_ref:
                    env[e.name] = self._field(pod, vf.field_ref.field_path)
            except (KeyError, ApiException):
                optional = vf.secret_key_ref or vf.config_map_key_ref
                if not (optional and optional.optional):
                    raise
        return rewrite_ports(env, self._port_map(pod, c))

    def _port_map(self, pod: Any, c: Any) -> dict[int, int]:
        """containerPort -> the loopback port standing in for it, shared by a Job's pods."""
        owner = (pod.metadata.labels or {}).get("batch.kubernetes.io/controller-uid")
        owner = owner or pod.metadata.uid
        out: dict[int, int] = {}
        with self.lock:
            for port in c.ports or []:
                key = (owner, int(port.container_port))
                if key not in self.ports:
                    self.ports[key] = free_port()
                out[key[1]] = self.ports[key]
        return out

    def _peers(self, pod: Any) -> list[str]:
        """Hostnames of an Indexed Job's pods (`<job>-<index>`), for the hosts file."""
        labels = pod.metadata.labels or {}
        job = labels.get("batch.kubernetes.io/job-name")
        if not (job and pod.spec.subdomain):
            return []
        try:
            j = client.BatchV1Api().read_namespaced_job(job, pod.metadata.namespace)
        except ApiException:
            return []
        if j.spec is None or j.spec.completion_mode != "Indexed":
            return []
        return [f"{job}-{i}" for i in range(int(j.spec.completions or 1))]

    # --- lifecycle -------------------------------------------------------------------
    def _spawn(self, pod: Any, c: Any, root: Path, vols: dict[str, Path]) -> Proc:
        """Start one container as a process in its own mount namespace."""
        env = self._env(pod, c, root / "home")
        bin_dir = self.image_paths.get(_image_repo(c.image))
        if bin_dir:
            env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
        if self.shared_cache is not None:
            # A node-local model cache shared by pods (the GGUF conversion happens once).
            env["LORAF_CACHE"] = str(self.shared_cache)
        cdir = root / "containers" / c.name
        cdir.mkdir(parents=True, exist_ok=True)
        tlog_path = c.termination_message_path or DEFAULT_TERMINATION_LOG
        tlog = cdir / "termination-log"
        tlog.write_text("")
        binds = [(vols[m.name], m.mount_path) for m in c.volume_mounts or [] if m.name in vols]
        binds.append((tlog, tlog_path))
        hosts = cdir / "hosts"
        hosts.write_text(hosts_file(pod, self._peers(pod)))
        binds.append((hosts, "/etc/hosts"))
        argv = _loopback([_expand(a, env) for a in [*(c.command or []), *(c.args or [])]])
        script = ["set -e"]
        for src, dst in binds:
            q, parent = shlex.quote(dst), shlex.quote(str(Path(dst).parent))
            if src.is_file():
                # A file mount point must exist as a file (e.g. /dev/termination-log).
                script.append(f"mkdir -p {parent} && {{ [ -e {q} ] || touch {q}; }}")
            else:
                script.append(f"mkdir -p {q}")
            script.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}")
        workdir = c.working_dir or str(root / "home")
        script.append(f"cd {shlex.quote(workdir)}")
        script.append("exec " + " ".join(shlex.quote(a) for a in argv))
        log.info(
            "starting %s/%s[%s]: %s",
            pod.metadata.namespace, pod.metadata.name, c.name, shlex.join(argv),
        )  # fmt: skip
        logfile = cdir / "container.log"
        out = open(logfile, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        return Proc(
            c.name,
            c.image,
            proc,
            logfile,
            tlog,
            c.termination_message_policy == "FallbackToLogsOnError",
            now(),
            _readiness(c),
        )

    @staticmethod
    def _terminated(p: Proc, code: int) -> dict[str, Any]:
        exit_code = code if code >= 0 else 128 - code
        message = p.termination_log.read_text(errors="replace")[-4096:].strip()
        if not message and exit_code != 0 and p.fallback_to_logs:
            lines = p.log.read_text(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:].strip()
        return {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": message,
            "startedAt": p.started_at,
            "finishedAt": now(),
        }

    @staticmethod
    def _status(p: Proc, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {
            "name": p.name,
            "image": p.image,
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def _patch_running(self, pod: Any, r: Running) -> None:
        procs = list(r.procs.values())
        ready = all(p.ready for p in procs)
        ts = now()
        conds = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts},
            {"type": "Initialized", "status": "True", "lastTransitionTime": ts},
            *(
                {"type": t, "status": "True" if ready else "False", "lastTransitionTime": ts}
                for t in ("Ready", "ContainersReady")
            ),
        ]
        self._patch(
            pod,
            {
                "phase": "Running",
                "startTime": procs[0].started_at if procs else ts,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "conditions": conds,
                "initContainerStatuses": r.init_statuses or None,
                "containerStatuses": [
                    self._status(p, {"running": {"startedAt": p.started_at}}, p.ready)
                    for p in procs
                ],
            },
        )

    def _config_error(self, pod: Any, exc: Exception) -> None:
        """Like kubelet's CreateContainerConfigError: the pod stays Pending with a reason."""
        c = pod.spec.containers[0]
        self._patch(
            pod,
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": str(exc)[:500],
                            }
                        },
                    }
                ],
            },
        )

    def start(self, pod: Any) -> None:
        uid = pod.metadata.uid
        root = self.workdir / "pods" / uid
        root.mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        try:
            vols = self._materialise(pod, root)
            for c in [*(pod.spec.init_containers or []), *pod.spec.containers]:
                self._env(pod, c, root / "home")  # fail early on a missing Secret key
        except (ApiException, KeyError) as exc:
            self._config_error(pod, exc)
            return
        r = Running(
            pod.metadata.name,
            pod.metadata.namespace,
            root,
            spec=pod,
            grace=int(pod.spec.termination_grace_period_seconds or 30),
        )
        with self.lock:
            self.running[uid] = r
        threading.Thread(target=self._run_pod, args=(uid, pod, r, vols), daemon=True).start()

    def _run_pod(self, uid: str, pod: Any, r: Running, vols: dict[str, Path]) -> None:
        final: list[dict[str, Any]] = []
        failed = False
        for c in pod.spec.init_containers or []:
            if r.stopping.is_set():
                break
            p = self._spawn(pod, c, r.workdir, vols)
            r.procs = {p.name: p}
            self._patch(
                pod,
                {
                    "phase": "Pending",
                    "initContainerStatuses": [
                        *r.init_statuses,
                        self._status(p, {"running": {"startedAt": p.started_at}}, False),
                    ],
                },
            )
            term = self._terminated(p, p.proc.wait())
            release_namespace(p)
            r.init_statuses.append(self._status(p, {"terminated": term}, False))
            if term["exitCode"] != 0:
                failed = True
                log.info("%s/%s init %s exited %d", r.namespace, r.pod, p.name, term["exitCode"])
                break
        r.procs = {}
        if not failed and not r.stopping.is_set():
            for c in pod.spec.containers:
                p = self._spawn(pod, c, r.workdir, vols)
                p.ready = p.probe is None
                r.procs[p.name] = p
            self._patch_running(pod, r)
            threading.Thread(target=self._probe, args=(pod, r), daemon=True).start()
            final = self._wait_containers(r)
            failed = any(s["state"]["terminated"]["exitCode"] != 0 for s in final)
        finished = now()
        status: dict[str, Any] = {
            "phase": "Failed" if failed or not final else "Succeeded",
            "conditions": [
                {"type": t, "status": "False", "reason": "PodCompleted",
                 "lastTransitionTime": finished}
                for t in ("Ready", "ContainersReady")
            ],
            "initContainerStatuses": r.init_statuses or None,
            "containerStatuses": final or None,
        }  # fmt: skip
        try:
            self.core.patch_namespaced_pod_status(r.pod, r.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status patch for %s failed: %s", r.pod, exc.reason)
        for p in r.procs.values():
            release_namespace(p)
        with self.lock:
            self.running.pop(uid, None)
            self.done.add(uid)
        if r.stopping.is_set():
            self._force_delete(r.pod, r.namespace)

    def _wait_containers(self, r: Running) -> list[dict[str, Any]]:
        """Wait until one container exits; a failure (or a stop) ends the others."""
        codes: dict[str, int] = {}
        while len(codes) < len(r.procs):
            for name, p in r.procs.items():
                if name not in codes:
                    container_namespace(p)  # learnt while the process lives
                if name not in codes and (code := p.proc.poll()) is not None:
                    codes[name] = code
                    if p.mnt_ns is not None and kill_namespace(p.mnt_ns):
                        log.info("%s/%s[%s]: killed processes left over", r.namespace, r.pod, name)
                    log.info("%s/%s[%s] exited %d", r.namespace, r.pod, name, code)
                    if code != 0 and not r.stopping.is_set():
                        self._signal_all(r, signal.SIGTERM)
                        threading.Thread(target=self._kill_after, args=(r,), daemon=True).start()
            time.sleep(0.2)
        return [self._status(p, {"terminated": self._terminated(p, codes[n])}, False)
                for n, p in r.procs.items()]  # fmt: skip

    def _probe(self, pod: Any, r: Running) -> None:
        """Readiness probes (httpGet on loopback); the pod status follows every change."""
        while r.procs and all(p.proc.poll() is None for p in r.procs.values()):
            changed = False
            for p in r.procs.values():
                if p.probe is not None and _http_ok(*p.probe) != p.ready:
                    p.ready, changed = not p.ready, True
            if changed and not r.stopping.is_set():
                self._patch_running(pod, r)
            time.sleep(1)

    @staticmethod
    def _signal_all(r: Running, sig: int) -> None:
        for p in list(r.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, sig)
            ns = container_namespace(p) if sig == signal.SIGKILL else None
            if ns is not None:
                kill_namespace(ns)

    def _kill_after(self, r: Running) -> None:
        deadline = time.monotonic() + r.grace
        while time.monotonic() < deadline:
            if all(p.proc.poll() is not None for p in r.procs.values()):
                return
            time.sleep(0.2)
        self._signal_all(r, signal.SIGKILL)

    def terminate(self, uid: str, grace: int) -> None:
        with self.lock:
            r = self.running.get(uid)
        if r is None or r.stopping.is_set():
            return
        r.stopping.set()
        r.grace = grace
        log.info("stopping %s/%s (grace %ss)", r.namespace, r.pod, grace)
        self._signal_all(r, signal.SIGTERM)
        threading.Thread(target=self._kill_after, args=(r,), daemon=True).start()

    def _force_delete(self, name: str, ns: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("delete of %s failed: %s", name, exc.reason)

    def _patch(self, pod: Any, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status}
            )
        except ApiException as exc:
            log.warning("status patch for %s failed: %s", pod.metadata.name, exc.reason)

    def handle(self, pod: Any) -> None:
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            if uid in self.running:
                self.terminate(uid, int(pod.metadata.deletion_grace_period_seconds or 30))
            else:
                self._force_delete(pod.metadata.name, pod.metadata.namespace)
            return
        if uid in self.running or uid in self.done:
            return
        if (pod.status.phase or "Pending") == "Pending":
            self.start(pod)

    def run(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self.stop.is_set():
            try:
                for ev in watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    timeout_seconds=30,
                ):
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self.handle(ev["object"])
                    if self.stop.is_set():
                        break
            except Exception as exc:
                log.warning("watch error: %s; retrying", exc)
                time.sleep(1)

    def resync(self, every: float = 2.0) -> None:
        """Keep ConfigMap/Secret volumes of running pods current (kubelet does ~1/min)."""
        while not self.stop.wait(every):
            with self.lock:
                running = list(self.running.values())
            for r in running:
                try:
                    self.refresh_volumes(r.spec, r.workdir)
                except ApiException as exc:
                    log.debug("volume resync of %s: %s", r.pod, exc.reason)

    def shutdown(self) -> None:
        self.stop.set()
        with self.lock:
            pods = list(self.running.values())
        for r in pods:
            r.stopping.set()
            self._signal_all(r, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for r in pods:
            for p in list(r.procs.values()):
                try:
                    p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node", default="loraf-local")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument(
        "--shared-cache",
        type=Path,
        help="LORAF_CACHE for every pod (like a node-local model cache shared by pods)",
    )
    p.add_argument(
        "--image-path",
        action="append",
        default=[],
        metavar="REPO=DIR",
        help="put DIR first on PATH for containers of image repository REPO",
    )
    args = p.parse_args(argv)
    image_paths = dict(x.split("=", 1) for x in args.image_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s process-kubelet %(message)s")
    config.load_kube_config(args.kubeconfig)
    port = int(client.Configuration.get_default_copy().host.rsplit(":", 1)[1])
    kl = ProcessKubelet(args.node, args.workdir, port, image_paths, args.shared_cache)
    signal.signal(signal.SIGTERM, lambda *_: kl.stop.set())
    threading.Thread(target=kl.run, daemon=True).start()
    threading.Thread(target=kl.resync, daemon=True).start()
    while not kl.stop.is_set():
        time.sleep(0.5)
    kl.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
