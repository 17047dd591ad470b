"""S3 faults against a real S3 server with auth (s3s-fs), with real CPU training
(issue 21 items 3, 5, 8):

- an outage right at the final upload is ridden out (the upload retries, then succeeds);
- an outage longer than output.retry.timeoutSeconds exits 69 StorageUnavailable, and the
  retry finds the final checkpoint and only evaluates and uploads;
- a hung server (frozen process) shows as logged read timeouts, then the run finishes;
- wrong keys exit 77 StorageAccessDenied at once, before the model loads, whether the
  dataset is on S3 or on a PVC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loraf_trainer import cli
from loraf_trainer.artifacts import verify_manifest
from loraf_trainer.storage import S3Store, S3Uri

from .conftest import make_spec, write_manifest
from .s3server import S3Server

MAX_STEPS = 3
BUCKET = "faults"
# Logged once evaluation is done: next come the adapter, the merged export, the upload.
EVALUATED = "eval loss base"


def _spec(
    retry: dict[str, Any], merged: bool = False, dataset: dict[str, Any] | None = None
) -> dict[str, Any]:
    return make_spec(
        training={"maxSteps": MAX_STEPS, "evalPrompts": 0},
        dataset={"maxRows": 40, **(dataset or {})},
        output={"s3": f"s3://{BUCKET}/ft", "retry": retry, "mergedWeights": merged},
    )


def _wait_for_log(
    proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{text!r} not logged in {timeout} s"
        time.sleep(0.02)


def _start(
    s3: S3Server, manifest: Path, pvc_root: Path, tmp: Path, name: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{name}.log"
    env = {
        **os.environ,
        **s3.env(),
        "LORAF_PVC_ROOT": str(pvc_root),
        "LORAF_NO_STATUS": "1",
        "LORAF_TERMINATION_LOG": str(tmp / f"{name}.termination-log"),
    }
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loraf_trainer", "run", str(manifest), "--run", "1"),
            *("--work-dir", str(tmp / f"work-{name}")),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def _wait_for_final_checkpoint(
    s3: S3Server, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300
) -> None:
    client = s3.client()
    key = f"ft/run-1/checkpoints/step-{MAX_STEPS}/COMPLETE"
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no final checkpoint in time"
        try:
            client.head_object(Bucket=BUCKET, Key=key)
            return
        except Exception:
            time.sleep(0.1)


def _store(s3: S3Server) -> S3Store:
    return S3Store(s3.client(), S3Uri.parse(f"s3://{BUCKET}/ft/run-1"))


@pytest.fixture
def bucket(s3_server: S3Server) -> S3Server:
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


def test_outage_at_the_final_upload_is_ridden_out(
    tmp_path: Path, pvc_root: Path, bucket: S3Server
) -> None:
    s3 = bucket
    spec = _spec({"timeoutSeconds": 120}, merged=True)
    manifest = write_manifest(tmp_path / "ft.yaml", "outage", spec)
    proc, log = _start(s3, manifest, pvc_root, tmp_path, "outage")
    _wait_for_log(proc, log, EVALUATED)
    s3.stop()  # down while the merged weights are exported: the final upload hits it
    down_at = time.monotonic()
    _wait_for_log(proc, log, "S3 unavailable while uploading", timeout=120)
    time.sleep(20)  # longer than botocore's own retries (the old trainer gave up after ~4 s)
    assert proc.poll() is None, f"gave up during the outage:\n{log.read_text()[-3000:]}"
    s3.start()
    outage = time.monotonic() - down_at
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "S3 unavailable while" in text and "S3 reachable again" in text, text[-3000:]
    assert verify_manifest(_store(s3)) == []
    print(f"\nS3 down {outage:.0f} s at the final upload: run finished, manifest verifies")


def test_long_outage_exits_69_and_the_retry_only_uploads(
    tmp_path: Path, pvc_root: Path, bucket: S3Server
) -> None:
    s3 = bucket
    manifest = write_manifest(tmp_path / "ft.yaml", "long", _spec({"timeoutSeconds": 5}))
    proc, log = _start(s3, manifest, pvc_root, tmp_path, "first")
    _wait_for_final_checkpoint(s3, proc, log)
    s3.stop()
    down_at = time.monotonic()
    assert proc.wait(timeout=120) == 69, log.read_text()[-3000:]
    gave_up = time.monotonic() - down_at
    message = (tmp_path / "first.termination-log").read_text()
    assert message.startswith("S3 unavailable while") and "timeoutSeconds is 5" in message

    s3.start()
    proc2, log2 = _start(s3, manifest, pvc_root, tmp_path, "second")
    assert proc2.wait(timeout=300) == 0, log2.read_text()[-3000:]
    text = log2.read_text()
    assert f"training already complete at step {MAX_STEPS}" in text, text[-3000:]
    assert verify_manifest(_store(s3)) == []
    man = json.loads(_store(s3).get_bytes("manifest.json") or b"{}")
    assert man["metrics"]["steps"] == MAX_STEPS
    print(f"\nS3 down for good: exit 69 after {gave_up:.1f} s (budget 5 s); retry only uploaded")


def test_hung_s3_during_upload_is_logged_and_survived(
    tmp_path: Path, pvc_root: Path, bucket: S3Server
) -> None:
    s3 = bucket
    retry = {"timeoutSeconds": 120, "connectTimeoutSeconds": 2, "readTimeoutSeconds": 2}
    manifest = write_manifest(tmp_path / "ft.yaml", "hung", _spec(retry, merged=True))
    proc, log = _start(s3, manifest, pvc_root, tmp_path, "hung")
    _wait_for_log(proc, log, EVALUATED)
    s3.freeze()  # accepts connections, answers nothing
    frozen_at = time.monotonic()
    _wait_for_log(proc, log, "S3 unavailable while uploading", timeout=120)
    first_sign = time.monotonic() - frozen_at
    s3.thaw()
    text = log.read_text()
    assert "ReadTimeoutError" in text or "ConnectTimeoutError" in text, text[-3000:]
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    print(f"\nhung S3: first retry logged {first_sign:.1f} s after the freeze; run finished")
    assert verify_manifest(_store(s3)) == []


@pytest.mark.parametrize("dataset_on", ["pvc", "s3"])
def test_wrong_keys_fail_fast_before_the_model_loads(
    tmp_path: Path,
    pvc_root: Path,
    bucket: S3Server,
    quickstart_rows: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    dataset_on: str,
) -> None:
    s3 = bucket
    over: dict[str, Any] = {}
    if dataset_on == "s3":
        s3.client().upload_file(str(quickstart_rows), BUCKET, "data/train.jsonl")
        over["dataset"] = {"s3": f"s3://{BUCKET}/data/train.jsonl", "pvc": None}
    manifest = write_manifest(tmp_path / "ft.yaml", "keys", _spec({"timeoutSeconds": 600}, **over))
    for k, v in s3.env(secret_key="wrong-" + s3.secret_key).items():
        monkeypatch.setenv(k, v)
    caplog.set_level("INFO")
    t0 = time.monotonic()
    rc = cli.main(["run", str(manifest), "--run", "1", "--work-dir", str(tmp_path / "work")])
    took = time.monotonic() - t0
    assert rc == 77
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("S3 denied access while"), message
    # s3s-fs answers 403 SignatureDoesNotMatch or NotSignedUp, depending on the request.
    assert any(c in message for c in ("SignatureDoesNotMatch", "NotSignedUp")), message
    assert not any("trainable params" in r.getMessage() for r in caplog.records)
    assert took < 30, f"not fast: {took:.1f} s"
    print(f"\nwrong keys, dataset on {dataset_on}: exit 77 in {took:.2f} s: {message}")
