"""Fixtures of the e2e layer: the operator (non-admin) and the quickstart's inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loraf_dev import quickstart as qs
from tests.conftest import Cluster
from tests.integration.operator_fixtures import start_operator

# Small enough for a 2-core CPU, big enough to show loss moving and several progress updates.
FAST: dict[str, Any] = {
    "spec": {
        "lora": {"r": 8, "targetModules": ["q_proj", "v_proj"]},
        "training": {
            "maxSteps": 8,
            "perDeviceBatchSize": 2,
            "maxSeqLength": 96,
            "evalPrompts": 2,
            "statusIntervalSeconds": 1,
            "loggingSteps": 1,
        },
        "dataset": {"evalFraction": 0.05},
    }
}


@pytest.fixture(scope="module")
def operator(cluster: Cluster, crds: list[str], process_kubelet: Path) -> Iterator[Any]:
    handle = start_operator(cluster, namespaces=["t-*"])
    yield handle
    handle.stop()


@pytest.fixture
def stage(cluster: Cluster, namespace: str, s3: Any) -> Callable[..., dict[str, Any]]:
    """Upload inputs, create the S3 secret; return a function making this test's manifest."""
    qs.stage_inputs(s3)
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(qs.s3_secret(cluster.s3_access_key, cluster.s3_secret_key)),
    )

    def manifest(name: str, *overrides: dict[str, Any]) -> dict[str, Any]:
        doc = qs.local_manifest(f"{namespace}-{name}"[:60], FAST)
        doc["metadata"]["name"] = name
        for o in overrides:
            doc = qs.merge(doc, o)
        return doc

    return manifest
