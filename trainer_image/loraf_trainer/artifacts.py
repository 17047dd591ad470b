"""Saving, merging, the manifest and the upload.

The manifest lists the sha256 and size of every uploaded file plus what produced them
(base model, dataset hash, hyper-parameters, metrics, library versions). It is uploaded
last: its presence means the run's upload is complete, and `verify_manifest` re-checks
every file against it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraf_operator.api import run_manifest
from loraf_operator.api.run_layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST
from loraf_operator.api.run_manifest import MANIFEST_KIND, MANIFEST_VERSION

from .storage import Store, local_files, sha256_file

log = logging.getLogger(__name__)


def trainer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loraf")
    except PackageNotFoundError:
        return "0+unknown"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------ saving


def cast_safetensors(path: Path, dtype_name: str) -> None:
    """Rewrite a safetensors file with floating tensors in dtype_name (peft saves the
    adapter in its training dtype, fp32 on CPU: twice the size the spec asks for)."""
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    tensors = load_file(str(path))
    cast = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }
    save_file(cast, str(path), metadata={"format": "pt"})


def save_adapter(model: Any, tokenizer: Any, out: Path, dtype_name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    cast_safetensors(out / ADAPTER_WEIGHTS, dtype_name)
    tokenizer.save_pretrained(out)
    return out


def adapter_from_folder(saved: Path, tokenizer: Any, out: Path, dtype_name: str) -> Path:
    """An adapter the Trainer saved (FSDP: gathered from every rank), as save_adapter
    writes one: its config and weights, cast to dtype_name, and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copyfile(saved / name, out / name)
    cast_safetensors(out / ADAPTER_WEIGHTS, dtype_name)
    tokenizer.save_pretrained(out)
    return out


def merge_export(
    base_path: Path,
    adapter_dir: Path,
    out: Path,
    dtype_name: str,
    trust_remote_code: bool = False,
    max_shard_size: str = "2GB",
) -> Path:
    """Merged weights: a fresh load of the base in dtype_name (never the 4-bit training
    copy: merging into quantized weights is lossy, and never in place: the cached base
    files are shared), adapter merged in, sharded safetensors written to `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=getattr(torch, dtype_name),
        device_map={"": "cpu"},
        trust_remote_code=trust_remote_code,
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out)
    del base, merged
    return out


# ------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


def describe_files(root: Path) -> list[FileEntry]:
    return [FileEntry(rel, p.stat().st_size, sha256_file(p)) for p, rel in local_files(root)]


def build_manifest(
    *,
    files: list[FileEntry],
    identity: Mapping[str, Any],
    base_model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    chat: Mapping[str, Any] | None = None,
    created_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Pure: everything is passed in, so the manifest is testable without a model.
    `chat`: the system prompt and chat template used in training (data.chat_record)."""
    out: dict[str, Any] = {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "createdAt": (created_at or dt.datetime.now(dt.UTC)).replace(microsecond=0).isoformat(),
        "trainer": {"version": trainer_version(), "libraries": library_versions()},
        "resource": dict(identity),
        "baseModel": dict(base_model),
        "dataset": dict(dataset),
        "hyperparameters": dict(hyperparameters),
        "metrics": dict(metrics),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }
    if chat is not None:
        out["chat"] = dict(chat)
    return out


def upload_run(store: Store, local_root: Path, manifest: Mapping[str, Any]) -> None:
    """Upload every file under local_root, then the manifest (last)."""
    store.put_files(local_files(local_root))
    store.put_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=False).encode())


def verify_manifest(store: Store, check_hashes: bool = True) -> list[str]:
    """Problems found (empty list: the run's upload is complete and intact); the checks
    themselves are `loraf_operator.api.run_manifest`'s, shared with the operator."""
    manifest, problems = run_manifest.parse(store.get_bytes(MANIFEST), store.uri(MANIFEST))
    if manifest is None:
        return problems
    problems = run_manifest.problems(manifest, store.list_keys(""))
    if check_hashes and not problems:
        for f in manifest.get("files", []):
            data = store.get_bytes(f["path"])
            if data is None or hashlib.sha256(data).hexdigest() != f["sha256"]:
                problems.append(f"{f['path']}: sha256 differs from the manifest")
    return problems
