"""The GPU suite's process plumbing (bench/gpu/suite.py run_config), on the CPU: a runner
with its own pins (Unsloth's trl/datasets) gets its folder first on its PYTHONPATH only,
and a child that writes no result is recorded as failed, not raised."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.gpu import suite

PROBE = (
    "import json, os, sys; "
    "open(sys.argv[1], 'w').write(json.dumps({'path': os.environ['PYTHONPATH']}))"
)


def test_a_runner_with_its_own_site_sees_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/project/site")
    out = tmp_path / "r.json"
    res = suite.run_config([sys.executable, "-c", PROBE, str(out)], {"site": "/uns"}, out, 60)
    assert res["path"].split(":")[:2] == ["/uns", "/project/site"]
    plain = suite.run_config([sys.executable, "-c", PROBE, str(out)], {}, out, 60)
    assert plain["path"] == "/project/site"


def test_every_unsloth_config_names_its_site() -> None:
    configs = [c for cs in suite.suites(12).values() for c in cs if c["runner"] == "unsloth"]
    assert configs and all(c["site"] == "/tmp/site-uns" and not c.get("baseline") for c in configs)


def test_a_child_without_a_result_is_a_failed_run(tmp_path: Path) -> None:
    out = tmp_path / "none.json"
    res = suite.run_config([sys.executable, "-c", "pass"], {"id": "x"}, out, 60)
    assert (
        res["ok"] is False and "FileNotFoundError" in res["error"] and res["config"] == {"id": "x"}
    )
    json.dumps(res)
