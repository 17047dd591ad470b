"""The run manifest (`<run prefix>/manifest.json`, api.run_layout): the one contract
between the trainer that writes it, the operator that decides a run's outcome from it,
and the serving engines that load an adapter only when it checks out.

Pure (no S3 client here): callers pass the manifest's bytes and the listing of the run's
prefix (relative key -> size). The trainer uploads the manifest last, so its presence
means the upload is complete; `problems` then checks that every listed file is there with
its size and that the manifest is this run's (a copied or stale manifest is refused).
Hashes are checked where the bytes are read anyway (serving re-hashes its local copy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .models import Artifacts, EvalSummary
from .run_layout import ADAPTER_DIR, ADAPTER_WEIGHTS, EVAL_REPORT, MERGED_DIR, RunLayout

MANIFEST_KIND = "LoRAFineTuneManifest"
MANIFEST_VERSION = 1

Obj = dict[str, Any]


def parse(raw: bytes | None, where: str) -> tuple[Obj | None, list[str]]:
    """(manifest, problems) from the manifest's bytes (None: it does not exist)."""
    if raw is None:
        return None, [f"{where} is missing (upload incomplete)"]
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        return None, [f"{where} is not JSON: {e}"]
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        return None, [f"{where} is not a {MANIFEST_KIND}"]
    return manifest, []


def problems(
    manifest: Mapping[str, Any],
    present: Mapping[str, int],
    identity: Mapping[str, Any] | None = None,
) -> list[str]:
    """What is wrong with an upload (empty: complete). `present`: relative key -> size of
    every object under the run prefix; `identity`: the resource and run the manifest must
    name (namespace, name, uid, run), None to skip that check."""
    out: list[str] = []
    if identity is not None:
        resource = manifest.get("resource") or {}
        for key, want in identity.items():
            if str(resource.get(key)) != str(want):
                out.append(f"the manifest's resource.{key} is {resource.get(key)!r}, not {want!r}")
    files = manifest.get("files") or []
    paths = {str(f.get("path")) for f in files}
    if f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}" not in paths and identity is not None:
        out.append(f"the manifest lists no {ADAPTER_DIR}/{ADAPTER_WEIGHTS}")
    for f in files:
        size = present.get(f["path"])
        if size is None:
            out.append(f"{f['path']}: missing")
        elif size != f["size"]:
            out.append(f"{f['path']}: {size} bytes, manifest says {f['size']}")
    return out


def result(run_prefix: str, manifest: Mapping[str, Any]) -> tuple[Obj, Obj]:
    """(status.artifacts, status.evaluation) of a verified run, from its manifest alone."""
    layout = RunLayout(run_prefix)
    files = {str(f["path"]): f for f in manifest.get("files") or []}
    adapter = [f for p, f in files.items() if p.startswith(ADAPTER_DIR + "/")]
    weights = files.get(f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}") or {}
    artifacts = Artifacts(
        adapter_uri=layout.adapter_uri,
        merged_uri=(
            layout.merged_uri if any(p.startswith(MERGED_DIR + "/") for p in files) else None
        ),
        manifest_uri=layout.manifest_uri,
        eval_report_uri=layout.eval_report_uri if EVAL_REPORT in files else None,
        size_bytes=sum(int(f["size"]) for f in adapter),
        sha256=weights.get("sha256"),
    )
    metrics = manifest.get("metrics") or {}
    keys = [f.alias or name for name, f in EvalSummary.model_fields.items()]
    evaluation = EvalSummary.model_validate({k: metrics.get(k) for k in keys})
    return artifacts.to_dict(), evaluation.to_dict()
