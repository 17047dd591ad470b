"""A private s3s-fs server (S3 with sigv4 auth) for fault tests: stop it (an outage),
start it again on the same port and data, or freeze it (a hung server). Binds 127.0.0.1
on a free port; the binary comes from the pinned cache (hack/fetch-bins.sh)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from loraf_dev import cluster as cp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    def __init__(self, root: Path, binary: Path) -> None:
        self.root = root
        self.binary = binary
        self.port = _free_port()
        self.access_key = "fault-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        (root / "data").mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """AWS_* variables the trainer reads (as the Job sets them from the Secret)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 30) -> None:
        log = (self.root / "s3s-fs.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--access-key",
                self.access_key,
                "--secret-key",
                self.secret_key,
                str(self.root / "data"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "s3s-fs.log").read_text()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"s3s-fs not listening on {self.port} after {timeout} s")

    def stop(self) -> None:
        """An outage: the process is killed, connections are refused."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        """A hung server: connections are accepted by the kernel, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


def s3s_fs_binary() -> Path:
    bin_dir = os.environ.get("LORAF_BIN_DIR") or cp.fetch_bins()
    return Path(bin_dir) / "s3s-fs"
