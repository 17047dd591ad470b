"""Shared fixtures: one real control plane + S3 server per test session.

Set LORAF_CLUSTER_DIR to a cluster started with `hack/cluster.sh up` to reuse it (it is
then left running); otherwise the session starts its own and stops it at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loraf_dev import cluster as cp

ROOT = Path(__file__).resolve().parents[1]
VLLM_IMAGE_REPO = "vllm/vllm-openai"


def vllm_env() -> Path:
    """The CPU vLLM environment (hack/vllm-venv.sh; installed on first use, then cached)."""
    out = subprocess.run(
        [str(ROOT / "hack" / "vllm-venv.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


@dataclass
class Cluster:
    state: cp.State

    @property
    def kubeconfig(self) -> str:
        return str(self.state.path("admin.kubeconfig"))

    @property
    def operator_kubeconfig(self) -> str:
        return str(self.state.path("operator.kubeconfig"))

    @property
    def bin_dir(self) -> str:
        return self.state.bin_dir

    @property
    def s3_endpoint(self) -> str:
        return self.state.s3_endpoint

    @property
    def s3_access_key(self) -> str:
        return self.state.s3_access_key

    @property
    def s3_secret_key(self) -> str:
        return self.state.s3_secret_key

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, **cp.env_vars(self.state)}
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [f"{self.bin_dir}/kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {res.stderr}")
        return res

    def get_json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json", **kw).stdout)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reuse = os.environ.get("LORAF_CLUSTER_DIR")
    if reuse and (Path(reuse) / "state.json").exists():
        yield Cluster(cp.State.load(Path(reuse)))
        return
    os.environ["LORAF_CLUSTER_DIR"] = str(ROOT / ".cache" / "test-cluster")
    try:
        st = cp.up()
        yield Cluster(st)
    finally:
        sd = cp.state_dir()
        if (sd / "state.json").exists():
            cp.down_state(cp.State.load(sd))
        os.environ.pop("LORAF_CLUSTER_DIR", None)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    raw = request.node.name.lower().replace("_", "-")
    base = "".join(c for c in raw if c.isalnum() or c == "-")
    name = f"t-{base[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def s3(cluster: Cluster) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        aws_access_key_id=cluster.s3_access_key,
        aws_secret_access_key=cluster.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


@pytest.fixture
def s3_bucket(s3: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    files = sorted((ROOT / "crds").glob("*.yaml"))
    if not files:
        pytest.skip("crds/ has no generated CRDs yet")
    for f in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    names = [f.name.removesuffix(".yaml") for f in files]
    for n in names:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{n}", "--timeout=60s")
    # Discovery caches in kubectl lag a moment behind Established.
    time.sleep(1)
    return names


@pytest.fixture(scope="session")
def process_kubelet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run pods bound to the `loraf-local` node as local processes (loraf_dev.kubelet)."""
    import sys

    workdir = tmp_path_factory.mktemp("process-kubelet")
    env = cluster.env
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    log = open(workdir / "kubelet.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraf_dev.kubelet",
            "--kubeconfig",
            cluster.kubeconfig,
            "--node",
            cp.LOCAL_NODE,
            "--workdir",
            str(workdir),
            "--shared-cache",
            str(cp.cache_root() / "pods"),
            # vLLM serving pods run the real engine from the CPU vLLM environment.
            "--image-path",
            f"{VLLM_IMAGE_REPO}={vllm_env() / 'bin'}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield workdir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
