"""Where a run's files go: a local folder (`loraf run --output DIR`) or an S3 prefix.

Both stores speak relative keys ("adapter/adapter_config.json") under one run root, so
the artifact, checkpoint and resume code is written once. S3 uploads go through boto3's
transfer manager: multipart above a threshold, several files in flight at once.

Faults: botocore retries each request a few times (standard mode) with connect/read
timeouts from `spec.output.retry`, and logs every retry. An outage longer than that is
ridden out by `Retry`, which repeats the whole operation with exponential backoff for
`output.retry.timeoutSeconds` (botocore counts attempts and drains a retry quota; it has
no time budget), reports each failure (status.progress.storageError) and then raises
StorageUnavailable (exit 69). Rejected credentials raise StorageAccessDenied (exit 77)
at once: they are never retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from loraf_operator.api.models import StorageRetry

from .errors import StorageAccessDenied, StorageUnavailable

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
T = TypeVar("T")

# Error codes S3 (and S3-compatible servers) answer for bad keys, signatures or policies.
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidSecurity",
        "InvalidToken",
        "NotSignedUp",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "Forbidden",
        "403",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
_MISSING_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound", "404"})

ErrorKind = Literal["denied", "unavailable", "missing", "other"]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (or of one it was raised from), else ''."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def classify(exc: BaseException) -> ErrorKind:
    """What an S3 failure means: wrong credentials, an unreachable or failing server
    (worth retrying), a missing bucket/key, or something else."""
    from botocore import exceptions as bce

    for e in _chain(exc):
        if isinstance(e, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return "denied"
        if isinstance(e, bce.ClientError):
            code = error_code(e)
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _DENIED_CODES or status == 403:
                return "denied"
            if code in _MISSING_CODES or status == 404:
                return "missing"
            if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
                return "unavailable"
            return "other"
        if isinstance(e, (bce.ConnectionError, bce.HTTPClientError, ConnectionError, TimeoutError)):
            return "unavailable"
    return "other"


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


@dataclass
class Retry:
    """Repeats an S3 operation while S3 is unreachable, for at most `timeout_s`.

    `on_error(message, attempts)` is called before each wait and `on_recovered()` once
    the operation succeeds after failures (the trainer wires both to its status)."""

    timeout_s: float = 0.0
    on_error: Callable[[str, int], None] | None = None
    on_recovered: Callable[[], None] | None = None
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    failures: int = field(default=0, init=False)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        start = self.clock()
        attempts = 0
        backoff = self.first_backoff_s
        while True:
            try:
                result = fn()
            except (StorageAccessDenied, StorageUnavailable):
                raise
            except Exception as e:
                kind = classify(e)
                if kind == "denied":
                    raise StorageAccessDenied(
                        f"S3 denied access while {what}: {describe(e)}; check the keys in "
                        "output.credentialsSecretRef and the bucket policy"
                    ) from e
                if kind != "unavailable":
                    raise
                attempts += 1
                self.failures += 1
                elapsed = self.clock() - start
                left = self.timeout_s - elapsed
                message = f"S3 unavailable while {what}: {describe(e)}"
                if left <= 0:
                    raise StorageUnavailable(
                        f"{message}; gave up after {elapsed:.0f} s and {attempts} attempt(s) "
                        f"(output.retry.timeoutSeconds is {self.timeout_s:g})"
                    ) from e
                wait = min(backoff, left, self.max_backoff_s)
                log.warning(
                    "%s; attempt %d failed, retrying in %.1f s (%.0f s of %g s left)",
                    message,
                    attempts,
                    wait,
                    left,
                    self.timeout_s,
                )
                if self.on_error is not None:
                    self.on_error(f"{message} (attempt {attempts}, retrying)", self.failures)
                self.sleep(wait)
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                if attempts:
                    log.info(
                        "S3 reachable again: %s succeeded after %d failed attempt(s), %.0f s",
                        what,
                        attempts,
                        self.clock() - start,
                    )
                    if self.on_recovered is not None:
                        self.on_recovered()
                return result

    def note(self, message: str) -> None:
        """A request attempt failed inside botocore (e.g. a read timeout): say so now."""
        self.failures += 1
        if self.on_error is not None:
            self.on_error(message, self.failures)


NO_RETRY = Retry()


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


class _AttemptObserver:
    """`needs-retry` observer: sees every failed request attempt botocore may retry.

    A timeout (a hung server: each one costs connect/read timeout seconds) is logged as
    a warning and reported through `notify` (status.progress.storageError) at once, long
    before the operation gives up; quick failures (refused, 5xx) only at debug level, as
    `Retry` logs each round of them."""

    def __init__(self, notify: Callable[[str], None] | None) -> None:
        self.notify = notify

    def __call__(
        self,
        attempts: int = 0,
        caught_exception: BaseException | None = None,
        response: Any = None,
        operation: Any = None,
        **_: Any,
    ) -> None:
        from botocore import exceptions as bce

        name = getattr(operation, "name", "request")
        if caught_exception is not None:
            why = describe(caught_exception)
        elif response is not None and int(response[0].status_code) >= 500:
            why = f"HTTP {response[0].status_code}"
        else:
            return
        if isinstance(caught_exception, (bce.ReadTimeoutError, bce.ConnectTimeoutError)):
            message = f"S3 {name} attempt {attempts} timed out: {why}"
            log.warning("%s", message)
            if self.notify is not None:
                self.notify(message)
        else:
            log.debug("S3 %s attempt %d failed: %s", name, attempts, why)


def s3_client(
    endpoint: str | None = None,
    region: str | None = None,
    retry: StorageRetry | None = None,
    notify: Callable[[str], None] | None = None,
) -> Any:
    """A boto3 S3 client; credentials come from the environment (secretKeyRef env).

    `retry` is a spec StorageRetry (connect/read timeouts); botocore's standard retry
    mode repeats each request a few times; timed-out attempts are logged and passed to
    `notify`."""
    import boto3
    from botocore.config import Config

    endpoint = (
        endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # Path-style addressing for custom endpoints: S3-compatible servers (MinIO, Ceph,
    # SeaweedFS) rarely have wildcard DNS for virtual-hosted buckets.
    timeouts: dict[str, Any] = {}
    if retry is not None:
        timeouts = {
            "connect_timeout": retry.connect_timeout_seconds,
            "read_timeout": retry.read_timeout_seconds,
        }
    cfg = Config(
        retries={"max_attempts": 4, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
        **timeouts,
    )
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=cfg
    )
    client.meta.events.register_first("needs-retry.s3", _AttemptObserver(notify))
    return client


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
    def check_access(self) -> None: ...


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

    def check_access(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


def check_readable(client: Any, uri: str, retry: Retry = NO_RETRY) -> bool:
    """Whether an s3:// input's bucket exists; wrong credentials raise
    StorageAccessDenied and an outage is retried (then StorageUnavailable)."""
    from botocore.exceptions import ClientError

    src = S3Uri.parse(uri)

    def attempt() -> bool:
        if src.key and not uri.endswith("/"):
            # An object: HEAD it (a policy may allow GetObject without ListBucket).
            try:
                client.head_object(Bucket=src.bucket, Key=src.key)
                return True
            except ClientError as e:
                if classify(e) != "missing":
                    raise
        try:
            client.list_objects_v2(Bucket=src.bucket, Prefix=src.key, MaxKeys=1)
        except ClientError as e:
            if classify(e) == "missing":
                return False
            raise
        return True

    return retry.call(f"checking access to {uri}", attempt)


class S3Store:
    def __init__(
        self, client: Any, root: S3Uri, max_concurrency: int = 8, retry: Retry = NO_RETRY
    ) -> None:
        self.client = client
        self.root = root
        self.max_concurrency = max_concurrency
        self.retry = retry

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
        """Upload concurrently through one transfer manager, then check every size.
        After an outage only the files not yet uploaded by this call are sent again."""
        from boto3.s3.transfer import create_transfer_manager

        items = list(files)
        done: set[str] = set()

        def attempt() -> None:
            todo = [(src, rel) for src, rel in items if rel not in done]
            with create_transfer_manager(self.client, self._transfer_config()) as tm:
                futures = [
                    (tm.upload(str(src), self.root.bucket, self._key(rel)), rel)
                    for src, rel in todo
                ]
                first: BaseException | None = None
                for fut, rel in futures:
                    try:
                        fut.result()
                        done.add(rel)
                    except Exception as e:
                        first = first or e
                if first is not None:
                    raise first
            for src, rel in items:
                head = self.client.head_object(Bucket=self.root.bucket, Key=self._key(rel))
                if int(head["ContentLength"]) != src.stat().st_size:
                    raise OSError(
                        f"upload of {self.uri(rel)} has {head['ContentLength']} bytes, "
                        f"expected {src.stat().st_size}"
                    )

        if items:
            self.retry.call(f"uploading {len(items)} file(s) to {self.uri()}", attempt)

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.retry.call(
            f"writing {self.uri(rel)}",
            lambda: self.client.put_object(Bucket=self.root.bucket, Key=self._key(rel), Body=data),
        )

    def get_bytes(self, rel: str) -> bytes | None:
        def attempt() -> bytes | None:
            from botocore.exceptions import ClientError

            try:
                obj = self.client.get_object(Bucket=self.root.bucket, Key=self._key(rel))
            except ClientError as e:
                if error_code(e) in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(obj["Body"].read())

        return self.retry.call(f"reading {self.uri(rel)}", attempt)

    def _objects(self, rel: str) -> list[dict[str, Any]]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""

        def attempt() -> list[dict[str, Any]]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.root.bucket, Prefix=prefix
            )
            return [o for page in pages for o in page.get("Contents", [])]

        return self.retry.call(f"listing {self.uri(rel)}", attempt)

    def list_keys(self, rel: str) -> dict[str, int]:
        prefix = self._key(rel)
        strip = len(prefix) + 1 if prefix else 0
        return {o["Key"][strip:]: int(o["Size"]) for o in self._objects(rel)}

    def list_children(self, rel: str) -> list[str]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""

        def attempt() -> list[str]:
            out: set[str] = set()
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.root.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    out.add(cp["Prefix"][len(prefix) :].strip("/"))
            return sorted(out)

        return self.retry.call(f"listing {self.uri(rel)}", attempt)

    def get_prefix(self, rel: str, dest: Path) -> None:
        download_prefix(
            self.client, self.root.join(rel), dest, self._transfer_config(), retry=self.retry
        )

    def delete_prefix(self, rel: str) -> None:
        keys = [{"Key": o["Key"]} for o in self._objects(rel)]
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            self.retry.call(
                f"deleting under {self.uri(rel)}",
                lambda batch=batch: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.root.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )

    def check_access(self) -> None:
        """Fail fast on wrong keys or a missing bucket: list the run root and write and
        delete a probe object (the run needs both), before any data or model is loaded."""
        self._objects("")
        probe = self._key(".loraf-access-check")
        self.retry.call(
            f"writing {self.uri('.loraf-access-check')}",
            lambda: self.client.put_object(Bucket=self.root.bucket, Key=probe, Body=b"ok"),
        )
        self.retry.call(
            f"deleting {self.uri('.loraf-access-check')}",
            lambda: self.client.delete_object(Bucket=self.root.bucket, Key=probe),
        )


def download_prefix(
    client: Any,
    src: S3Uri,
    dest: Path,
    transfer_config: Any = None,
    retry: Retry = NO_RETRY,
) -> int:
    """Mirror an S3 prefix into dest; files already present with the right size are
    skipped and partial files are re-fetched, so an interrupted download resumes (also
    after an outage, through `retry`). Returns the number of files fetched."""
    return retry.call(
        f"downloading {src}", lambda: _download_prefix(client, src, dest, transfer_config)
    )


def _download_prefix(client: Any, src: S3Uri, dest: Path, transfer_config: Any) -> int:
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


def open_store(
    output: str,
    endpoint: str | None = None,
    region: str | None = None,
    retry: Retry = NO_RETRY,
    spec_retry: StorageRetry | None = None,
) -> Store:
    """`s3://bucket/prefix` → S3Store; anything else is a local folder. `spec_retry` is
    the spec's StorageRetry (timeouts), `retry` the outage policy built from it."""
    if output.startswith("s3://"):
        client = s3_client(endpoint, region, spec_retry, notify=retry.note)
        return S3Store(client, S3Uri.parse(output), retry=retry)
    return LocalStore(Path(output))
