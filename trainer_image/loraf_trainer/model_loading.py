"""Resolving and loading the base model.

Sources (spec.baseModel): a Hugging Face id (+revision, token from HF_TOKEN), an `s3://`
prefix (mirrored into the cache: resumable, skipped once complete), a PVC path, and any
of these holding a GGUF file. Everything lands as a plain transformers folder in a
shared cache ($LORAF_CACHE), so later runs on the same node/cache volume skip the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraf_operator.api.mounts import ENV_PVC_ROOT, PVC_ROOT

from .errors import ModelInvalid, TrainerError

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".loraf-complete"


def cache_root() -> Path:
    """$LORAF_CACHE, else $HF_HOME/loraf (the model-cache PVC), else ~/.cache/loraf."""
    if os.environ.get("LORAF_CACHE"):
        return Path(os.environ["LORAF_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "loraf"
    return Path.home() / ".cache" / "loraf"


def pvc_path(claim_name: str, path: str, pvc_root: str | None = None) -> Path:
    """Where a PVC source is in the pod: each claim is mounted at <root>/<claimName>
    (root: $LORAF_PVC_ROOT, default api.mounts.PVC_ROOT), so sources sharing a claim share
    a mount."""
    root = Path(pvc_root or os.environ.get(ENV_PVC_ROOT) or PVC_ROOT)
    return root / claim_name / path.lstrip("/")


def _slug(text: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)[-60:].strip("-")
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a folder (or, for GGUF, the folder holding the .gguf file)
    gguf_file: str | None
    name: str  # for the manifest: hub id, s3 URI or pvc path
    revision: str | None


def resolve_source(
    base_model: Any, s3_client: Any = None, retry: Any = None, local: Path | None = None
) -> ResolvedModel:
    """Make the model files available locally (downloading if needed); `retry` (a
    storage.Retry) rides out an S3 outage; `local`: a plain folder given to `loraf run`
    instead of the spec's source."""
    gguf = base_model.gguf_file
    name = base_model.display_name
    if local is not None:
        name = str(local / gguf) if gguf else str(local)
        if not local.exists():
            raise ModelInvalid(f"base model path {local} does not exist")
        return ResolvedModel(local, gguf, name, None)
    if base_model.pvc is not None:
        path = pvc_path(base_model.pvc.claim_name, base_model.pvc.path)
        if gguf is None and path.is_file() and path.suffix == ".gguf":
            path, gguf = path.parent, path.name
        if not path.exists():
            raise ModelInvalid(f"base model path {path} does not exist on the volume")
        return ResolvedModel(path, gguf, name, None)
    if base_model.s3 is not None:
        return ResolvedModel(
            download_s3_model(base_model.s3, s3_client, gguf, retry), gguf, name, None
        )
    return ResolvedModel(
        download_hf_model(base_model.hugging_face, base_model.revision, gguf),
        gguf,
        name,
        base_model.revision,
    )


def download_s3_model(
    uri: str, client: Any, gguf_file: str | None = None, retry: Any = None
) -> Path:
    """Mirror an s3:// prefix into the cache. A marker written after the last file makes
    later runs skip the bucket entirely; an interrupted copy resumes file by file."""
    from .storage import NO_RETRY, S3Uri, download_prefix, error_code, s3_client

    dest = cache_root() / "models" / "s3" / _slug(uri.rstrip("/"))
    if (dest / COMPLETE_MARKER).exists():
        log.info("base model %s already cached at %s", uri, dest)
        return dest
    client = client or s3_client()
    try:
        fetched = download_prefix(
            client, S3Uri.parse(uri.rstrip("/")), dest, retry=retry or NO_RETRY
        )
    except TrainerError:
        raise
    except Exception as e:
        code = error_code(e)
        if code in ("NoSuchBucket", "404"):
            raise ModelInvalid(f"cannot read base model {uri}: {code}") from e
        raise
    if not dest.exists() or not any(dest.iterdir()):
        raise ModelInvalid(f"base model prefix {uri} is empty")
    if gguf_file and not (dest / gguf_file).is_file():
        raise ModelInvalid(f"base model prefix {uri} has no file {gguf_file}")
    if not gguf_file and not (dest / "config.json").is_file():
        raise ModelInvalid(f"base model prefix {uri} has no config.json")
    (dest / COMPLETE_MARKER).write_text(json.dumps({"uri": uri, "fetched": fetched}))
    log.info("base model %s: %d files fetched into %s", uri, fetched, dest)
    return dest


def _hf_cache() -> str | None:
    """The hub's own cache under $HF_HOME when set (shared with other HF tools)."""
    return None if os.environ.get("HF_HOME") else str(cache_root() / "hf")


def download_hf_model(repo_id: str, revision: str | None, gguf_file: str | None) -> Path:
    """snapshot_download into the shared cache (it skips files already there)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = (
        [gguf_file, "*.json", "tokenizer*", "*.model", "*.txt"]
        if gguf_file
        else ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.py"]
    )

    def download(allow: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                token=os.environ.get("HF_TOKEN") or None,
                cache_dir=_hf_cache(),
                allow_patterns=allow,
            )
        )

    try:
        path = download(patterns)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
        raise ModelInvalid(
            f"cannot fetch {repo_id}@{revision or 'main'}: {type(e).__name__}"
        ) from e
    if not gguf_file and not any(path.glob("*.safetensors")):
        # Older repos ship only pytorch_model*.bin.
        path = download(["*.bin"])
    return path


def materialize(resolved: ResolvedModel, trust_remote_code: bool = False) -> Path:
    """A plain transformers folder for the model (GGUF converted once, then cached).

    transformers dequantizes GGUF weights on load, but a GGUF-loaded model refuses
    save_pretrained and every later load would repeat the dequantization: convert once
    into the cache. Written to a temp dir and renamed, so a crash leaves no half folder."""
    if resolved.gguf_file is None:
        if not (resolved.path / "config.json").is_file():
            raise ModelInvalid(f"{resolved.name}: no config.json in {resolved.path}")
        return resolved.path
    src = resolved.path / resolved.gguf_file
    if not src.is_file():
        raise ModelInvalid(f"{resolved.name}: GGUF file {src} not found")
    st = src.stat()
    dest = cache_root() / "gguf" / _slug(f"{src.resolve()}:{st.st_size}:{int(st.st_mtime)}")
    if (dest / COMPLETE_MARKER).exists():
        return dest
    log.info("converting %s to a transformers folder at %s (once)", src, dest)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            gguf_file=resolved.gguf_file,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:
        raise ModelInvalid(f"cannot load GGUF {src}: {e}") from e
    _detach_quantizer(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"gguf": str(src)}))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _detach_quantizer(model: Any) -> None:
    """Forget the GGUF 'quantization' so save_pretrained writes plain weights."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    for flag in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, flag, False):
            setattr(model, flag, False)


# ------------------------------------------------------------------ device / loading


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" | "cpu"
    dtype_name: str  # dtype for unquantized weights
    index: int = 0  # the CUDA device of this rank (its LOCAL_RANK)

    @property
    def on_gpu(self) -> bool:
        return self.kind == "cuda"


def pick_device(local_rank: int = 0) -> Device:
    """cuda (bf16 where supported, else fp16) when present, GPU `local_rank` for a rank;
    CPU trains in fp32."""
    import torch

    if torch.cuda.is_available():
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return Device("cuda", dtype, local_rank)
    return Device("cpu", "float32")


def free_gpu_gib() -> float:
    """Free memory of the current CUDA device (other processes' use excluded)."""
    import torch

    free, _total = torch.cuda.mem_get_info()
    return free / 2**30


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelInvalid(f"cannot load tokenizer from {path}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: Path,
    device: Device,
    *,
    quantization: Any = None,
    trust_remote_code: bool = False,
    dtype_name: str | None = None,
    fsdp: bool = False,
) -> Any:
    """The frozen base: full precision/bf16 for LoRA, bitsandbytes 4/8-bit for QLoRA.

    Under FSDP the weights load on rank 0's host memory only (the Trainer shards and
    broadcasts them, optimizations.fsdp_env); a 4-bit base quantizes on each rank's GPU
    and stores its packed weights in the compute dtype, which FSDP can flatten and shard."""
    import torch
    from transformers import AutoModelForCausalLM

    from .adapters import build_bnb_config

    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, dtype_name or device.dtype_name),
        "trust_remote_code": trust_remote_code,
        "device_map": {"": device.index if device.on_gpu else "cpu"},
    }
    if fsdp:  # transformers places the weights (bitsandbytes: this rank's current GPU)
        del kwargs["device_map"]
    if quantization is not None:
        storage = kwargs["dtype"] if fsdp else None
        kwargs["quantization_config"] = build_bnb_config(quantization, device.on_gpu, storage)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelInvalid(f"cannot load base model from {path}: {e}") from e
    model.config.use_cache = False  # incompatible with gradient checkpointing; off for training
    return model
