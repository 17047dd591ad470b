"""Run the loraf operator as a subprocess against the test control plane.

`start_operator(cluster, namespaces=..., env=...)` is the one entry point (the e2e tests
reuse it): it grants the ClusterRole from config/rbac/operator.yaml to the non-admin user
`loraf-operator`, starts `python -m loraf_operator.main` with that user's kubeconfig and
waits until it is watching. Import the fixtures you need into a test module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loraf_dev.operator_proc import grant_operator_rbac as grant_rbac_with
from loraf_dev.operator_proc import operator_env
from tests.waiting import wait_progress

ROOT = Path(__file__).resolve().parents[2]


def grant_operator_rbac(cluster: Any) -> None:
    """Apply the operator's ClusterRole and bind it to the operator's identity (admin)."""
    grant_rbac_with(cluster.kubectl)


@dataclass
class OperatorHandle:
    proc: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """Graceful stop (SIGTERM, then SIGKILL)."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """Crash it (SIGKILL): no cleanup, like a node loss or OOM kill."""
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def report_as_run(cluster: Any, ns: str, name: str, run_sa: str, progress: dict[str, Any]) -> None:
    """Patch status.progress the way the trainer does: as the run's own ServiceAccount."""
    token = cluster.kubectl("create", "token", run_sa, "-n", ns).stdout.strip()
    cluster.kubectl(
        "patch",
        "lorafinetune",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"progress": progress}}),
        f"--token={token}",
        "--kubeconfig=" + cluster.kubeconfig,
    )


def start_operator(
    cluster: Any,
    namespaces: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 40,
) -> OperatorHandle:
    """Start the operator as the non-admin `loraf-operator` identity; return once it watches.

    `namespaces` may hold kopf patterns (e.g. "t-test-op-*"); empty watches all namespaces.
    """
    grant_operator_rbac(cluster)
    log = Path(tempfile.mkstemp(prefix="loraf-operator-", suffix=".log")[1])
    full_env = {
        **operator_env(cluster.state, cluster.env),
        "LORAF_NAMESPACES": ",".join(namespaces),
        "LORAF_STATUS_INTERVAL_SECONDS": "60",
        **(env or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loraf_operator.main"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    handle = OperatorHandle(proc, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not handle.alive():
            raise AssertionError(f"operator exited ({proc.returncode}):\n{handle.logs()[-4000:]}")
        if "Initial authentication has finished" in handle.logs():
            time.sleep(0.5)  # the watchers start right after authentication
            return handle
        time.sleep(0.1)
    handle.stop()
    raise AssertionError(f"operator not ready in {ready_timeout}s:\n{handle.logs()[-4000:]}")


def wait_until(
    what: str,
    check: Callable[[], Any],
    stall: float = 30,
    every: float = 0.2,
    *,
    seen: Callable[[], Any] | None = None,
    cap: float | None = None,
) -> Any:
    """Poll `check` until it returns something truthy. Fails when what `seen` returns (by
    default the check's own falsy result) has not changed for `stall` seconds, or after
    `cap` seconds (pass it where the test asserts a bound, e.g. "Failed within a minute")."""
    return wait_progress(what, check, seen=seen, stall=stall, cap=cap, every=every)


@pytest.fixture(scope="module")
def operator(cluster: Any, crds: list[str]) -> Iterator[OperatorHandle]:
    """An operator for the module's tests; watches namespaces named t-test-op-* only."""
    handle = start_operator(cluster, namespaces=["t-test-op-*"])
    yield handle
    handle.stop()
    if os.environ.get("LORAF_KEEP_OPERATOR_LOG"):
        print(handle.logs())
