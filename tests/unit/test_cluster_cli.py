"""hack/cluster.sh status with no cluster up says so (no traceback)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_status_after_down_says_no_cluster(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), "status"],
        env={**os.environ, "LORAF_CLUSTER_DIR": str(tmp_path / "gone")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr, res.stderr
    assert "no cluster is up" in res.stdout and "hack/cluster.sh up" in res.stdout
