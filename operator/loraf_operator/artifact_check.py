"""The operator's own check of a finished run's upload, before it says Succeeded.

A run succeeds when its Job is Complete AND `<output.s3>/run-<n>/manifest.json` exists,
names this resource and run, and every file it lists is in S3 with its size
(`api.run_manifest`, the checks the trainer and the serving engines use too). It is read
with the run's own S3 Secret (`spec.output.credentialsSecretRef`; the operator's default
credential chain when the spec names none) and the run's endpoint: the same access the
trainer wrote with. Nothing the trainer wrote into the status counts: `status.artifacts`
and `status.evaluation` are built from the manifest.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

from .api import run_manifest
from .api.models import LoRAFineTune
from .api.run_layout import MANIFEST
from .api.trainer_config import TrainerConfig
from .builders.common import BuildDefaults
from .kube import Kube

Obj = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """`ok`: verified (with the result); `retry`: could not look now (S3 or the Secret is
    unreachable); neither: the upload is missing or does not check out (`message`)."""

    ok: bool
    retry: bool
    message: str
    artifacts: Obj = field(default_factory=dict)
    evaluation: Obj = field(default_factory=dict)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def _read(endpoint: str | None, region: str | None, keys: Obj, prefix: str) -> tuple[Any, Any]:
    """(manifest bytes or None, relative key -> size) of a run prefix (blocking: a thread)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or "us-east-1",
        config=Config(
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=20,
            s3={"addressing_style": "path" if endpoint else "auto"},
        ),
        **keys,
    )
    bucket, root = _split(prefix)
    try:
        raw = client.get_object(Bucket=bucket, Key=f"{root}/{MANIFEST}")["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
        raw = None
    present: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root + "/"):
        for o in page.get("Contents", []):
            present[o["Key"][len(root) + 1 :]] = int(o["Size"])
    return raw, present


async def _credentials(kube: Kube, ft: LoRAFineTune) -> Obj | str:
    """boto3 client keyword arguments from the run's S3 Secret, or why there are none.
    The values stay in this call: never logged, stored or put into a status."""
    ref = ft.spec.output.credentials_secret_ref
    if ref is None:
        return {}
    secret = await kube.get("Secret", ft.namespace, ref.name)
    data = (secret or {}).get("data") or {}
    if ref.access_key_id_key not in data or ref.secret_access_key_key not in data:
        return f"Secret {ref.name} (spec.output.credentialsSecretRef) or its keys are missing"
    return {
        "aws_access_key_id": base64.b64decode(data[ref.access_key_id_key]).decode(),
        "aws_secret_access_key": base64.b64decode(data[ref.secret_access_key_key]).decode(),
    }


async def verify_run(kube: Kube, ft: LoRAFineTune, run: int, defaults: BuildDefaults) -> Verdict:
    layout = TrainerConfig.for_resource(ft, run).layout()
    prefix = layout.root
    where = layout.manifest_uri
    keys = await _credentials(kube, ft)
    if isinstance(keys, str):
        return Verdict(False, True, f"cannot check {where} yet: {keys}")
    out = ft.spec.output
    endpoint = out.endpoint or defaults.s3_endpoint
    region = out.region or defaults.s3_region
    try:
        raw, present = await asyncio.to_thread(_read, endpoint, region, keys, prefix)
    except Exception as e:  # S3 down, keys refused, a timeout: look again at the next sync
        return Verdict(False, True, f"cannot read {where} yet: {type(e).__name__}: {e}"[:500])
    manifest, problems = run_manifest.parse(raw, where)
    if manifest is not None:
        identity = {"namespace": ft.namespace, "name": ft.name, "uid": ft.metadata.get("uid")}
        problems = run_manifest.problems(manifest, present, {**identity, "run": run})
    if manifest is None or problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Verdict(False, False, "; ".join(problems[:3]) + more)
    artifacts, evaluation = run_manifest.result(prefix, manifest)
    return Verdict(True, False, f"{where} checks out", artifacts, evaluation)
