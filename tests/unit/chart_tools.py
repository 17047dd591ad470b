"""Helpers shared by the chart tests: find helm, render the chart into objects."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "loraf-operator"


def helm_binary() -> str | None:
    """helm from PATH, $LORAF_BIN_DIR, or the pinned cache of hack/fetch-bins.sh."""
    found = shutil.which("helm")
    if found:
        return found
    candidates = []
    if os.environ.get("LORAF_BIN_DIR"):
        candidates.append(Path(os.environ["LORAF_BIN_DIR"]) / "helm")
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    cache = Path(os.environ.get("LORAF_CACHE", Path.home() / ".cache" / "loraf"))
    key = (
        f"k8s-{versions['K8S_VERSION']}-etcd-{versions['ETCD_VERSION']}"
        f"-kwok-{versions['KWOK_VERSION']}"
    )
    candidates.append(cache / "bin" / key / "helm")
    return next((str(c) for c in candidates if c.is_file()), None)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    assert binary, "helm not found"
    res = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stderr}")
    return res


def set_args(values: dict[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in values.items():
        out += ["--set", f"{k}={v}"]
    return out


def render(
    values: dict[str, str] | None = None,
    release: str = "loraf",
    namespace: str = "loraf-system",
    strings: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`helm template` the chart (`strings` go through --set-string); return its objects."""
    extra = [a for k, v in (strings or {}).items() for a in ("--set-string", f"{k}={v}")]
    res = helm("template", release, str(CHART), "-n", namespace, *set_args(values or {}), *extra)
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(deploy: dict[str, Any]) -> dict[str, str]:
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}
