"""The run manifest contract (api.run_manifest): what makes an upload complete, and the
status the operator builds from a verified manifest (never from the trainer's status)."""

from __future__ import annotations

import json
from typing import Any

from loraf_operator.api import run_manifest as rm

ID: dict[str, Any] = {"namespace": "ns", "name": "ft", "uid": "u1", "run": 2}
FILES: list[dict[str, Any]] = [
    {"path": "adapter/adapter_model.safetensors", "size": 100, "sha256": "ab"},
    {"path": "adapter/adapter_config.json", "size": 10, "sha256": "cd"},
    {"path": "eval/report.json", "size": 5, "sha256": "ef"},
]
MANIFEST: dict[str, Any] = {
    "kind": rm.MANIFEST_KIND,
    "resource": {**ID, "generation": 1},
    "metrics": {"evalLossBase": 3.0, "evalLossAdapter": 2.0, "trainLoss": 2.5},
    "files": FILES,
}
PRESENT = {f["path"]: f["size"] for f in FILES} | {"manifest.json": 1}


def test_parse() -> None:
    assert rm.parse(None, "s3://b/ft/run-2/manifest.json") == (
        None,
        ["s3://b/ft/run-2/manifest.json is missing (upload incomplete)"],
    )
    assert rm.parse(b"{", "m")[1][0].startswith("m is not JSON")
    assert rm.parse(b'{"kind": "Other"}', "m") == (None, ["m is not a LoRAFineTuneManifest"])
    assert rm.parse(json.dumps(MANIFEST).encode(), "m") == (MANIFEST, [])


def test_problems() -> None:
    assert rm.problems(MANIFEST, PRESENT, ID) == []
    missing = {k: v for k, v in PRESENT.items() if k != "adapter/adapter_config.json"}
    assert rm.problems(MANIFEST, missing, ID) == ["adapter/adapter_config.json: missing"]
    short = {**PRESENT, "eval/report.json": 4}
    assert rm.problems(MANIFEST, short, ID) == ["eval/report.json: 4 bytes, manifest says 5"]
    # Another run's (or another resource's) manifest copied into this prefix is refused.
    assert rm.problems(MANIFEST, PRESENT, {**ID, "run": 3}) == [
        "the manifest's resource.run is 2, not 3"
    ]
    assert rm.problems(MANIFEST, PRESENT, {**ID, "uid": "u2"}) == [
        "the manifest's resource.uid is 'u1', not 'u2'"
    ]
    no_weights = {**MANIFEST, "files": FILES[1:]}
    assert rm.problems(no_weights, PRESENT, ID) == [
        "the manifest lists no adapter/adapter_model.safetensors"
    ]


def test_result_comes_from_the_manifest() -> None:
    artifacts, evaluation = rm.result("s3://b/ft/run-2/", MANIFEST)
    assert artifacts == {
        "adapterUri": "s3://b/ft/run-2/adapter/",
        "manifestUri": "s3://b/ft/run-2/manifest.json",
        "evalReportUri": "s3://b/ft/run-2/eval/report.json",
        "sizeBytes": 110,
        "sha256": "ab",
    }
    assert evaluation == {"evalLossBase": 3.0, "evalLossAdapter": 2.0}
    merged = {**MANIFEST, "files": [*FILES, {"path": "merged/x", "size": 1}]}
    assert rm.result("s3://b/ft/run-2", merged)[0]["mergedUri"] == "s3://b/ft/run-2/merged/"
