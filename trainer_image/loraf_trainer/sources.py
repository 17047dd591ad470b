"""Fetching dataset rows from spec.dataset sources (s3 file or prefix, PVC, HF Hub)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .data import _SUFFIXES, infer_file_format, read_rows
from .errors import DatasetInvalid
from .model_loading import pvc_path

log = logging.getLogger(__name__)


def _read_files(files: list[Path], file_format: str) -> list[Any]:
    if not files:
        raise DatasetInvalid("no dataset files found (.jsonl/.json/.parquet/.csv)")
    if len(files) == 1:
        return read_rows(files[0], infer_file_format(files[0].name, file_format))
    rows: list[Any] = []
    for f in files:
        try:
            part = read_rows(f, infer_file_format(f.name, file_format))
        except DatasetInvalid as e:
            raise DatasetInvalid(f"{f.name} {e.message}") from e
        rows += part
    return rows


def _data_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)


def load_rows(
    source: Any,
    file_format: str,
    work_dir: Path,
    s3_client: Any = None,
    retry: Any = None,
    local: Path | None = None,
) -> list[Any]:
    """Raw rows of one DataSource (spec.dataset or spec.dataset.eval); `retry` (a
    storage.Retry) rides out an S3 outage; `local`: a plain file or folder given to
    `loraf run` instead of the source."""
    if local is not None or source.pvc is not None:
        path = local or pvc_path(source.pvc.claim_name, source.pvc.path)
        if path.is_dir():
            return _read_files(_data_files(path), file_format)
        if not path.exists():
            raise DatasetInvalid(f"dataset path {path} does not exist on the volume")
        return _read_files([path], file_format)
    if source.s3 is not None:
        return _read_files(_fetch_s3(source.s3, work_dir, s3_client, retry), file_format)
    return _load_hf(source.hugging_face, source.split)


def _fetch_s3(uri: str, work_dir: Path, client: Any, retry: Any = None) -> list[Path]:
    from botocore.exceptions import ClientError

    from .storage import NO_RETRY, S3Uri, download_prefix, error_code, s3_client

    retry = retry or NO_RETRY
    client = client or s3_client()
    src = S3Uri.parse(uri)
    dest = work_dir / "dataset" / src.bucket / (src.key or "_root")

    def fetch_file() -> Path | None:
        """The object itself when the URI names one (None: treat it as a prefix)."""
        try:
            head = client.head_object(Bucket=src.bucket, Key=src.key)
        except ClientError as e:
            if error_code(e) in ("404", "NoSuchKey"):
                return None
            raise
        target = dest / Path(src.key).name
        if target.is_file() and target.stat().st_size == int(head["ContentLength"]):
            return target  # fetched by an earlier attempt into the same work dir
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        client.download_file(src.bucket, src.key, str(part))
        part.replace(target)
        return target

    try:
        if src.key and not uri.endswith("/"):
            found = retry.call(f"downloading dataset {uri}", fetch_file)
            if found is not None:
                return [found]
        download_prefix(client, src, dest, retry=retry)
    except ClientError as e:
        code = error_code(e)
        if code in ("NoSuchBucket", "404"):
            raise DatasetInvalid(f"cannot read dataset {uri}: {code}") from e
        raise
    files = _data_files(dest) if dest.is_dir() else []
    if not files:
        raise DatasetInvalid(f"dataset {uri}: no .jsonl/.json/.parquet/.csv files there")
    return files


def _load_hf(dataset_id: str, split: str) -> list[Any]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise DatasetInvalid(f"cannot load dataset {dataset_id} split {split}: {e}") from e
    return list(ds.to_list())
