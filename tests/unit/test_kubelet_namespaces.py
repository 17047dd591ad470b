"""The process kubelet finds a container's processes by its mount namespace; the kernel
hands a freed namespace's number to the next `unshare` at once, so a cleanup after one
container ended must not hit the container started just after it (the CI failure where
a starting vLLM server was SIGKILLed with an empty log: exit 137)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from loraf_dev.kubelet import Proc, container_namespace, kill_namespace, release_namespace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private mount namespace, as the process kubelet",
)


def _container(tmp_path: Path, name: str, *argv: str) -> Proc:
    proc = subprocess.Popen(["unshare", "-m", "--", *argv])
    log, tlog = tmp_path / f"{name}.log", tmp_path / f"{name}.tl"
    return Proc(name, "img", proc, log, tlog, False, "", None)


def _learn(p: Proc) -> str:
    while (ns := container_namespace(p)) is None:
        assert p.proc.poll() is None, "the container ended before its namespace was seen"
    return ns


def test_a_cleanup_after_a_container_ended_spares_the_next_container(tmp_path: Path) -> None:
    gone = _container(tmp_path, "gone", "sleep", "60")
    old = _learn(gone)
    gone.proc.kill()
    gone.proc.wait()
    nxt = _container(tmp_path, "next", "sleep", "60")
    try:
        assert _learn(nxt) != old  # held: the number could not be handed on
        assert kill_namespace(old) == 0  # the leftovers sweep finds nobody else
        assert nxt.proc.poll() is None
        release_namespace(gone)
        assert gone.mnt_ns is None and container_namespace(gone) is None  # reaped: not relearnt
    finally:
        nxt.proc.kill()
        nxt.proc.wait()
        release_namespace(nxt)

