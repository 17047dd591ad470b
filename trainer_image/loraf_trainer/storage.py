"""Where a run's files go: a local folder (`loraf run --output DIR`) or an S3 prefix.

Both stores speak relative keys ("adapter/adapter_config.json") under one run root, so
the artifact, checkpoint and resume code is written once. S3 uploads go through boto3's
transfer manager: multipart above a threshold, several files in flight at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def local_files(root: Path) -> list[tuple[Path, str]]:
    """Every regular file under root with its '/'-separated relative key, sorted."""
    out = [(p, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file()]
    return sorted(out, key=lambda t: t[1])


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # no leading slash; may be "" (bucket root)

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"s3 URI has no bucket: {uri!r}")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def s3_client(endpoint: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client; credentials come from the environment (secretKeyRef env)."""
    import boto3
    from botocore.config import Config

    endpoint = (
        endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # Path-style addressing for custom endpoints: S3-compatible servers (MinIO, Ceph,
    # SeaweedFS) rarely have wildcard DNS for virtual-hosted buckets.
    cfg = Config(
        retries={"max_attempts": 8, "mode": "adaptive"},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=cfg)


class Store(Protocol):
    """A run root: relative keys, '/'-separated."""

    def uri(self, rel: str = "") -> str: ...
    def put_files(self, files: Iterable[tuple[Path, str]]) -> None: ...
    def put_bytes(self, rel: str, data: bytes) -> None: ...
    def get_bytes(self, rel: str) -> bytes | None: ...
    def get_prefix(self, rel: str, dest: Path) -> None: ...
    def list_keys(self, rel: str) -> dict[str, int]: ...
    def list_children(self, rel: str) -> list[str]: ...
    def delete_prefix(self, rel: str) -> None: ...


def put_dir(store: Store, local_dir: Path, rel_prefix: str) -> None:
    prefix = rel_prefix.strip("/")
    store.put_files((p, f"{prefix}/{k}" if prefix else k) for p, k in local_files(local_dir))


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, rel: str) -> Path:
        return self.root / rel.strip("/") if rel.strip("/") else self.root

    def uri(self, rel: str = "") -> str:
        return str(self._path(rel))

    def put_files(self, files: Iterable[tuple[Path, str]]) -> None:
        for src, rel in files:
            dst = self._path(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".part")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)

    def put_bytes(self, rel: str, data: bytes) -> None:
        dst = self._path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(dst)

    def get_bytes(self, rel: str) -> bytes | None:
        p = self._path(rel)
        return p.read_bytes() if p.is_file() else None

    def get_prefix(self, rel: str, dest: Path) -> None:
        src = self._path(rel)
        shutil.copytree(src, dest, dirs_exist_ok=True)

    def list_keys(self, rel: str) -> dict[str, int]:
        root = self._path(rel)
        if not root.is_dir():
            return {}
        return {k: p.stat().st_size for p, k in local_files(root)}

    def list_children(self, rel: str) -> list[str]:
        root = self._path(rel)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def delete_prefix(self, rel: str) -> None:
        shutil.rmtree(self._path(rel), ignore_errors=True)


class S3Store:
    def __init__(self, client: Any, root: S3Uri, max_concurrency: int = 8) -> None:
        self.client = client
        self.root = root
        self.max_concurrency = max_concurrency

    def _key(self, rel: str) -> str:
        return self.root.join(rel).key

    def uri(self, rel: str = "") -> str:
        return str(self.root.join(rel))

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=64 * 1024 * 1024,
            multipart_chunksize=64 * 1024 * 1024,
            max_concurrency=self.max_concurrency,
        )

    def put_files(self, files: Iterable[tuple[Path, str]]) -> None:
        """Upload concurrently through one transfer manager, then check every size."""
        from boto3.s3.transfer import create_transfer_manager

        items = list(files)
        with create_transfer_manager(self.client, self._transfer_config()) as tm:
            futures = [tm.upload(str(src), self.root.bucket, self._key(rel)) for src, rel in items]
            for fut in futures:
                fut.result()
        for src, rel in items:
            head = self.client.head_object(Bucket=self.root.bucket, Key=self._key(rel))
            if int(head["ContentLength"]) != src.stat().st_size:
                raise OSError(
                    f"upload of {self.uri(rel)} has {head['ContentLength']} bytes, "
                    f"expected {src.stat().st_size}"
                )

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.root.bucket, Key=self._key(rel), Body=data)

    def get_bytes(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.root.bucket, Key=self._key(rel))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return bytes(obj["Body"].read())

    def _iter_objects(self, rel: str) -> Iterable[dict[str, Any]]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.root.bucket, Prefix=prefix
        )
        for page in pages:
            yield from page.get("Contents", [])

    def list_keys(self, rel: str) -> dict[str, int]:
        prefix = self._key(rel)
        strip = len(prefix) + 1 if prefix else 0
        return {o["Key"][strip:]: int(o["Size"]) for o in self._iter_objects(rel)}

    def list_children(self, rel: str) -> list[str]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        out: set[str] = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.root.bucket, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                out.add(cp["Prefix"][len(prefix) :].strip("/"))
        return sorted(out)

    def get_prefix(self, rel: str, dest: Path) -> None:
        download_prefix(self.client, self.root.join(rel), dest, self._transfer_config())

    def delete_prefix(self, rel: str) -> None:
        keys = [{"Key": o["Key"]} for o in self._iter_objects(rel)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.root.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True}
            )


def download_prefix(client: Any, src: S3Uri, dest: Path, transfer_config: Any = None) -> int:
    """Mirror an S3 prefix into dest; files already present with the right size are
    skipped and partial files are re-fetched, so an interrupted download resumes.
    Returns the number of files fetched."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    prefix = f"{src.key}/" if src.key else ""
    objects: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=src.bucket, Prefix=prefix):
        objects += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
    todo = []
    for key, size in objects:
        rel = key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        target = dest / rel
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        todo.append((key, target))
    if not todo:
        return 0
    cfg = transfer_config or TransferConfig(max_concurrency=8)
    with create_transfer_manager(client, cfg) as tm:
        # Fetch to a .part name and rename, so an interrupted download never leaves a
        # truncated file under the final name.
        futures = [
            (tm.download(src.bucket, key, str(t.with_name(t.name + ".part"))), t) for key, t in todo
        ]
        for fut, target in futures:
            fut.result()
            target.with_name(target.name + ".part").replace(target)
    return len(todo)


def open_store(output: str, endpoint: str | None = None, region: str | None = None) -> Store:
    """`s3://bucket/prefix` → S3Store; anything else is a local folder."""
    if output.startswith("s3://"):
        return S3Store(s3_client(endpoint, region), S3Uri.parse(output))
    return LocalStore(Path(output))
