"""A "process kubelet" for dev/test only: runs the pods bound to one node as local processes.

There is no container engine here, so pods scheduled onto the process-kubelet node
(``loraf-local``) are executed directly: the container's command/args with the pod's env
(values from Secrets/ConfigMaps resolved), its volumes materialised into a per-pod folder
and bind-mounted at their mount paths inside a private mount namespace (``unshare -m``), so
``/etc/loraf/config.yaml`` and the projected service-account token at
``/var/run/secrets/kubernetes.io/serviceaccount`` are where in-cluster code expects them.
The real pod status is written back (Running, then Succeeded/Failed with the real exit code
and the termination message), and deleting a pod sends SIGTERM, waits the grace period,
then SIGKILL. Images are ignored: the command runs from this machine's environment (the
project's installed ``loraf`` entry point stands in for the trainer image).

Not part of the product. Needs root (for ``unshare -m``), as on the CI machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
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
class Running:
    pod: str
    namespace: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    termination_log: Path
    started_at: str
    container: str
    image: str
    spec: Any = None  # the pod as started, for volume re-syncs
    stopping: threading.Event = field(default_factory=threading.Event)


class ProcessKubelet:
    def __init__(self, node: str, workdir: Path, apiserver_port: int) -> None:
        self.node = node
        self.workdir = workdir
        self.apiserver_port = apiserver_port
        self.core = client.CoreV1Api()
        self.running: dict[str, Running] = {}
        self.done: set[str] = set()
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
        return env

    # --- lifecycle -------------------------------------------------------------------
    def start(self, pod: Any) -> None:
        uid = pod.metadata.uid
        c = pod.spec.containers[0]
        root = self.workdir / "pods" / uid
        root.mkdir(parents=True, exist_ok=True)
        try:
            vols = self._materialise(pod, root)
            env = self._env(pod, c, root / "home")
        except (ApiException, KeyError) as exc:
            # Like kubelet's CreateContainerConfigError: the pod stays Pending with a reason.
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
            return
        (root / "home").mkdir(exist_ok=True)
        tlog_path = c.termination_message_path or DEFAULT_TERMINATION_LOG
        tlog = root / "termination-log"
        tlog.write_text("")
        binds = [(vols[m.name], m.mount_path) for m in c.volume_mounts or [] if m.name in vols]
        binds.append((tlog, tlog_path))
        argv = [*(c.command or []), *(c.args or [])]
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
        log.info("starting %s/%s: %s", pod.metadata.namespace, pod.metadata.name, shlex.join(argv))
        out = open(root / "container.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        r = Running(
            pod.metadata.name,
            pod.metadata.namespace,
            proc,
            root,
            tlog,
            now(),
            c.name,
            c.image,
            spec=pod,
        )
        with self.lock:
            self.running[uid] = r
        self._patch(
            pod,
            {
                "phase": "Running",
                "startTime": r.started_at,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": r.started_at}
                    for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": r.started_at}},
                    }
                ],
            },
        )
        threading.Thread(target=self._wait, args=(uid, r), daemon=True).start()

    def _wait(self, uid: str, r: Running) -> None:
        code = r.proc.wait()
        exit_code = code if code >= 0 else 128 - code
        message = r.termination_log.read_text(errors="replace")[-4096:].strip()
        reason = "Completed" if exit_code == 0 else "Error"
        log.info("%s/%s exited %d", r.namespace, r.pod, exit_code)
        finished = now()
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": finished,
                },
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": finished,
                },
            ],
            "containerStatuses": [
                {
                    "name": r.container,
                    "image": r.image,
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": reason,
                            "message": message,
                            "startedAt": r.started_at,
                            "finishedAt": finished,
                        }
                    },
                }
            ],
        }
        try:
            self.core.patch_namespaced_pod_status(r.pod, r.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status patch for %s failed: %s", r.pod, exc.reason)
        with self.lock:
            self.running.pop(uid, None)
            self.done.add(uid)
        if r.stopping.is_set():
            self._force_delete(r.pod, r.namespace)

    def terminate(self, uid: str, grace: int) -> None:
        with self.lock:
            r = self.running.get(uid)
        if r is None or r.stopping.is_set():
            return
        r.stopping.set()
        log.info("stopping %s/%s (grace %ss)", r.namespace, r.pod, grace)
        try:
            os.killpg(r.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def killer() -> None:
            try:
                r.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(r.proc.pid, signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()

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
            procs = list(self.running.values())
        for r in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
        for r in procs:
            try:
                r.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(r.proc.pid, signal.SIGKILL)


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
    args = p.parse_args(argv)
    if args.shared_cache:
        os.environ["LORAF_CACHE"] = str(args.shared_cache)  # passed through to pods
    logging.basicConfig(level=logging.INFO, format="%(asctime)s process-kubelet %(message)s")
    config.load_kube_config(args.kubeconfig)
    port = int(client.Configuration.get_default_copy().host.rsplit(":", 1)[1])
    kl = ProcessKubelet(args.node, args.workdir, port)
    signal.signal(signal.SIGTERM, lambda *_: kl.stop.set())
    threading.Thread(target=kl.run, daemon=True).start()
    threading.Thread(target=kl.resync, daemon=True).start()
    while not kl.stop.is_set():
        time.sleep(0.5)
    kl.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
