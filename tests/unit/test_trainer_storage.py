"""Stores, checkpoints bookkeeping and the manifest on a local folder and on moto S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraf_trainer import artifacts
from loraf_trainer.checkpoints import (
    MARKER,
    complete_checkpoints,
    fetch_latest_checkpoint,
    upload_checkpoint,
)
from loraf_trainer.storage import LocalStore, S3Store, S3Uri, Store, download_prefix, put_dir


def test_s3_uri() -> None:
    u = S3Uri.parse("s3://bucket/a/b/")
    assert (u.bucket, u.key) == ("bucket", "a/b")
    assert str(u.join("run-1", "/adapter/")) == "s3://bucket/a/b/run-1/adapter"
    assert str(S3Uri.parse("s3://bucket").join("x")) == "s3://bucket/x"
    with pytest.raises(ValueError):
        S3Uri.parse("http://bucket/x")


@pytest.fixture
def moto_store() -> Iterator[Store]:
    moto = pytest.importorskip("moto", reason="moto is a dev dependency")
    import boto3

    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="unit-bucket")
        yield S3Store(client, S3Uri.parse("s3://unit-bucket/prefix/run-1"))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "out" / "run-1")
    store: Store = request.getfixturevalue("moto_store")
    return store


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_put_list_get(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": b"aa", "sub/b.bin": b"bbb"})
    put_dir(store, src, "adapter")
    assert store.list_keys("adapter") == {"a.txt": 2, "sub/b.bin": 3}
    assert store.list_children("") == ["adapter"]
    assert store.get_bytes("adapter/sub/b.bin") == b"bbb"
    assert store.get_bytes("adapter/missing") is None
    store.get_prefix("adapter", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == b"bbb"
    store.delete_prefix("adapter")
    assert store.list_keys("adapter") == {}


def test_checkpoints_only_complete_ones_count(store: Store, tmp_path: Path) -> None:
    for step in (5, 10, 15):
        upload_checkpoint(
            store, make_tree(tmp_path / f"c{step}", {"trainer_state.json": b"{}"}), step, keep=2
        )
    # keep=2: step-5 was pruned once step-15 was complete.
    assert complete_checkpoints(store) == [10, 15]
    # A checkpoint cut off mid-upload (no marker) is ignored.
    put_dir(
        store, make_tree(tmp_path / "c20", {"trainer_state.json": b"{}"}), "checkpoints/step-20"
    )
    assert complete_checkpoints(store) == [10, 15]
    got = fetch_latest_checkpoint(store, tmp_path / "work")
    assert got == tmp_path / "work" / "checkpoint-15"
    assert (got / "trainer_state.json").exists() and not (got / MARKER).exists()


def test_manifest_upload_last_and_verify(store: Store, tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "stage",
        {"adapter/adapter_model.safetensors": b"x" * 100, "eval/report.json": b"{}"},
    )
    files = artifacts.describe_files(root)
    manifest = artifacts.build_manifest(
        files=files,
        identity={"name": "ft", "run": 1},
        base_model={"name": "m"},
        dataset={"sha256": "d"},
        hyperparameters={"r": 8},
        metrics={"evalLossAdapter": 1.0},
    )
    assert manifest["files"][0] == {
        "path": "adapter/adapter_model.safetensors",
        "size": 100,
        "sha256": "09ecb6ebc8bcefc733f6f2ec44f791abeed6a99edf0cc31519637898aebd52d8",
    }
    assert artifacts.verify_manifest(store) == [
        f"{store.uri('manifest.json')} is missing (upload incomplete)"
    ]
    artifacts.upload_run(store, root, manifest)
    assert artifacts.verify_manifest(store) == []
    assert json.loads(store.get_bytes("manifest.json") or b"")["kind"] == "LoRAFineTuneManifest"
    store.put_bytes("adapter/adapter_model.safetensors", b"y" * 100)  # same size, other bytes
    assert artifacts.verify_manifest(store) == [
        "adapter/adapter_model.safetensors: sha256 differs from the manifest"
    ]
    store.put_bytes("eval/report.json", b"{}  ")
    assert "eval/report.json: 4 bytes, manifest says 2" in artifacts.verify_manifest(store)


def test_download_prefix_skips_complete_files(moto_store: Any, tmp_path: Path) -> None:
    s3 = moto_store
    put_dir(
        s3, make_tree(tmp_path / "m", {"config.json": b"{}", "w.safetensors": b"w" * 10}), "model"
    )
    src = s3.root.join("model")
    assert download_prefix(s3.client, src, tmp_path / "dl") == 2
    assert download_prefix(s3.client, src, tmp_path / "dl") == 0
    (tmp_path / "dl" / "w.safetensors").write_bytes(b"w" * 3)  # truncated: fetched again
    assert download_prefix(s3.client, src, tmp_path / "dl") == 1
    assert (tmp_path / "dl" / "w.safetensors").read_bytes() == b"w" * 10
