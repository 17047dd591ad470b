"""End to end on the local cluster: kubectl apply → operator → Job → the process kubelet runs
the real trainer on SmolLM2 → progress in status → artifacts in the real S3 → conditions.

Runs are kept tiny (a few steps, short sequences) so the layer fits CI's budget.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loraf_dev import quickstart as qs
from tests.conftest import Cluster
from tests.e2e.helpers import apply, cond, get, namespace_state, s3_objects, wait_for

pytestmark = pytest.mark.e2e


def test_happy_path_trains_reports_progress_and_uploads_verified_artifacts(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]], s3: Any
) -> None:
    doc = stage("happy")
    apply(cluster, namespace, doc)
    steps: set[int] = set()

    def finished() -> bool:
        obj = get(cluster, namespace, "happy")
        step = obj.get("status", {}).get("progress", {}).get("step")
        if step is not None:
            steps.add(step)
        return (
            cond(obj, "Succeeded").get("status") == "True"
            or cond(obj, "Failed").get("status") == "True"
        )

    wait_for(
        "run to finish", finished, stall=300, every=0.3, seen=namespace_state(cluster, namespace)
    )
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Succeeded",
        "loraf/happy",
        "-n",
        namespace,
        "--timeout=30s",
        check=False,
    )
    obj = get(cluster, namespace, "happy")
    assert waited.returncode == 0, (obj.get("status"), operator.logs()[-3000:])
    assert len(steps) >= 3, f"saw only progress steps {sorted(steps)}"
    progress = obj["status"]["progress"]
    assert progress["step"] == progress["totalSteps"] == 8
    assert 0 < progress["trainablePercent"] < 5
    # the trainer's plan survives the status schema; on a CPU the spec's batch is used as given
    assert progress["plan"]["microBatchSize"] == 2 and progress["plan"]["techniques"] == []
    arts = obj["status"]["artifacts"]
    run_prefix = doc["spec"]["output"]["s3"] + "/run-1"
    assert arts["manifestUri"] == f"{run_prefix}/manifest.json"
    # Verify the manifest ourselves: every listed file exists with that size and sha256.
    bucket, _, key = arts["manifestUri"].removeprefix("s3://").partition("/")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    files = {f["path"]: f for f in manifest["files"]}
    assert any(p.endswith("adapter_model.safetensors") for p in files)
    base_key = key.rsplit("/", 1)[0]
    for path, f in files.items():
        body = s3.get_object(Bucket=bucket, Key=f"{base_key}/{path}")["Body"].read()
        assert len(body) == f["size"] and hashlib.sha256(body).hexdigest() == f["sha256"], path


def test_bad_dataset_row_fails_fast_with_row_number_and_no_artifacts(
    cluster: Cluster,
    namespace: str,
    operator: Any,
    stage: Callable[..., dict[str, Any]],
    s3: Any,
    tmp_path: Path,
) -> None:
    rows = qs.DATASET.read_text().splitlines()[:20]
    rows[6] = json.dumps({"instruction": "What is the warranty?", "input": ""})  # no output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    data_uri = f"s3://loraf-data/{namespace}/bad.jsonl"
    qs.stage_inputs(s3, dataset=bad, data_uri=data_uri)
    doc = stage("badrow", {"spec": {"dataset": {"s3": data_uri}}})
    apply(cluster, namespace, doc)
    obj = wait_for(
        "Failed",
        lambda: (
            (o := get(cluster, namespace, "badrow"))
            and cond(o, "Failed").get("status") == "True"
            and o
        ),
        stall=300,
        seen=namespace_state(cluster, namespace),
    )
    failed = cond(obj, "Failed")
    assert failed["reason"] == "DatasetInvalid"
    assert "row 7" in failed["message"], failed["message"]
    job = obj["status"]["run"]["jobName"]
    time.sleep(2)  # a retry storm would show up as more pods by now
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job}")["items"]
    assert len(pods) == 1
    assert not [
        k for k in s3_objects(s3, doc["spec"]["output"]["s3"]) if k.endswith("manifest.json")
    ]


def test_preempted_pod_resumes_from_checkpoint(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]], s3: Any
) -> None:
    doc = stage("preempt", {"spec": {"training": {"maxSteps": 14, "checkpointSteps": 3}}})
    apply(cluster, namespace, doc)
    ckpt_prefix = doc["spec"]["output"]["s3"] + "/run-1/checkpoints/"

    def checkpointed_step() -> int:
        markers = [k for k in s3_objects(s3, ckpt_prefix) if k.endswith("/COMPLETE")]
        return max((int(k.split("step-")[1].split("/")[0]) for k in markers), default=0)

    wait_for(
        "a complete checkpoint",
        checkpointed_step,
        stall=400,
        seen=namespace_state(cluster, namespace),
    )
    job = get(cluster, namespace, "preempt")["status"]["run"]["jobName"]
    first = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job}")["items"][0]
    cluster.kubectl("delete", "pod", first["metadata"]["name"], "-n", namespace, "--wait=false")
    saved = wait_for(
        "pod gone",
        lambda: (
            cluster.kubectl(
                "get", "pod", first["metadata"]["name"], "-n", namespace, check=False
            ).returncode
            != 0
            and checkpointed_step()
        ),
        stall=120,
        seen=namespace_state(cluster, namespace),
    )

    def replacement() -> dict[str, Any] | None:
        pods = cluster.get_json("pods", "-n", namespace, "-l", f"job-name={job}")["items"]
        return next((p for p in pods if p["metadata"]["uid"] != first["metadata"]["uid"]), None)

    wait_for("replacement pod", replacement, stall=120, seen=namespace_state(cluster, namespace))
    seen_after: list[int] = []

    def done() -> bool:
        obj = get(cluster, namespace, "preempt")
        step = obj.get("status", {}).get("progress", {}).get("step")
        if step is not None and (not seen_after or seen_after[-1] != step):
            seen_after.append(step)
        return (
            cond(obj, "Succeeded").get("status") == "True"
            or cond(obj, "Failed").get("status") == "True"
        )

    wait_for("finish", done, stall=300, every=0.3, seen=namespace_state(cluster, namespace))
    obj = get(cluster, namespace, "preempt")
    assert cond(obj, "Succeeded").get("status") == "True", obj["status"]
    # The replacement continued from the checkpoint: after it started, no step fell back
    # below the checkpointed one, and the run did not restart at 0.
    resumed = [s for s in seen_after if s > 0]
    assert resumed and min(resumed) >= saved, (saved, seen_after)
    assert obj["status"]["progress"]["step"] == 14


def test_spec_change_mid_run_starts_a_new_run_and_keeps_history(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]]
) -> None:
    doc = stage("respec", {"spec": {"training": {"maxSteps": 40}}})
    apply(cluster, namespace, doc)
    wait_for(
        "run 1 training",
        lambda: (
            (
                get(cluster, namespace, "respec").get("status", {}).get("progress", {}).get("step")
                or 0
            )
            >= 1
        ),
        stall=300,
        seen=namespace_state(cluster, namespace),
    )
    old_job = get(cluster, namespace, "respec")["status"]["run"]["jobName"]
    cluster.kubectl(
        "patch",
        "loraf",
        "respec",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"training": {"maxSteps": 4}}}),
    )
    obj = wait_for(
        "run 2 to succeed",
        lambda: (
            (o := get(cluster, namespace, "respec"))
            and o["status"].get("run", {}).get("number") == 2
            and cond(o, "Succeeded").get("status") == "True"
            and o
        ),
        stall=300,
        seen=namespace_state(cluster, namespace),
    )
    assert cluster.kubectl("get", "job", old_job, "-n", namespace, check=False).returncode != 0
    history = obj["status"]["history"]
    assert [h["number"] for h in history] == [1]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2


def test_deleting_the_resource_mid_run_stops_the_process_and_cleans_up(
    cluster: Cluster, namespace: str, operator: Any, stage: Callable[..., dict[str, Any]]
) -> None:
    doc = stage("cancel", {"spec": {"training": {"maxSteps": 40}}})
    apply(cluster, namespace, doc)
    wait_for(
        "training",
        lambda: (
            (
                get(cluster, namespace, "cancel").get("status", {}).get("progress", {}).get("step")
                or 0
            )
            >= 1
        ),
        stall=300,
        seen=namespace_state(cluster, namespace),
    )
    obj = get(cluster, namespace, "cancel")
    job = obj["status"]["run"]["jobName"]
    cluster.kubectl("delete", "loraf", "cancel", "-n", namespace, "--wait=true", timeout=120)

    def gone() -> bool:
        left = [
            cluster.kubectl(
                "get",
                kind,
                "-n",
                namespace,
                "-l",
                f"job-name={job}" if kind == "pod" else "app.kubernetes.io/managed-by=loraf",
                "-o",
                "name",
            ).stdout.strip()
            for kind in ("job", "pod", "configmap", "serviceaccount", "role", "rolebinding")
        ]
        return not any(left)

    wait_for(
        "children garbage-collected", gone, stall=120, seen=namespace_state(cluster, namespace)
    )
    # The trainer process of this run is gone too (the kubelet SIGTERMed it on pod delete).
    wait_for(
        "no trainer process left",
        lambda: not _trainer_pids(namespace),
        stall=60,
        seen=namespace_state(cluster, namespace),
    )


def _trainer_pids(namespace: str) -> list[str]:
    """Pids of `loraf train` processes whose pod env names this namespace."""
    out = subprocess.run(["pgrep", "-f", "loraf train"], capture_output=True, text=True).stdout
    found = []
    for pid in out.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LORAF_NAMESPACE={namespace}".encode() in env:
            found.append(pid)
    return found
