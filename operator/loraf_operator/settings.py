"""Operator settings: environment variables, overridable by command-line flags.

Each setting has an env var (LORAF_NAMESPACES, LORAF_TRAINER_IMAGE, LORAF_S3_ENDPOINT,
LORAF_S3_REGION, LORAF_STATUS_INTERVAL_SECONDS, LORAF_POD_CREATE_TIMEOUT_SECONDS,
LORAF_METRICS_PORT, LORAF_HEALTH_PORT, LORAF_PEERING, LORAF_PRIORITY, LORAF_LOG_FORMAT)
and a flag; the table with defaults and meanings is in docs/operations.md. Flags win over
the environment.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .builders.common import DEFAULT_TRAINER_IMAGE, BuildDefaults
from .peering import own_identity


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    s3_endpoint: str | None = None
    s3_region: str | None = None
    # Every unfinished run not synced for this long is re-read from the apiserver and its
    # status re-derived (repairs a transition whose status write failed).
    status_interval_seconds: float = 60.0
    # How long the Job controller may fail to create a run's pod (FailedCreate events: an
    # unknown PriorityClass, a ResourceQuota, Pod Security) before the run ends Failed.
    pod_create_timeout_seconds: float = 180.0
    metrics_port: int = 8080
    health_port: int = 8081
    # Where the health and metrics endpoints listen (tests and sidecars: 127.0.0.1).
    bind_address: str = "0.0.0.0"
    peering: str = ""
    # Same-priority peers all freeze (kopf), so each replica picks its own at random.
    priority: int = field(default_factory=lambda: random.randint(1, 2**31 - 1))
    # This replica's peering identity (given to kopf.run; the resync checks the peering too).
    identity: str = field(default_factory=own_identity)
    log_format: str = "plain"
    verbose: bool = False
    # Seconds between kopf's retries of a failed API call (watches included), in order;
    # the call fails after the last. kopf's own 1,1,2,3,5,8,13,21 made the operator come
    # back up to 21 s after an apiserver outage ended: same ~55 s in all, 3 s apart at most.
    api_retry_backoffs: tuple[float, ...] = (0.5, 1.0, 1.0, 2.0, 2.0, *([3.0] * 16))

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def build_defaults(self) -> BuildDefaults:
        return BuildDefaults(self.trainer_image, self.s3_endpoint, self.s3_region)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        base = cls()
        prio = env.get("LORAF_PRIORITY", "").strip()
        return cls(
            namespaces=tuple(
                n.strip() for n in env.get("LORAF_NAMESPACES", "").split(",") if n.strip()
            ),
            trainer_image=env.get("LORAF_TRAINER_IMAGE", "").strip() or DEFAULT_TRAINER_IMAGE,
            s3_endpoint=env.get("LORAF_S3_ENDPOINT", "").strip() or None,
            s3_region=env.get("LORAF_S3_REGION", "").strip() or None,
            status_interval_seconds=float(
                env.get("LORAF_STATUS_INTERVAL_SECONDS", "").strip() or base.status_interval_seconds
            ),
            pod_create_timeout_seconds=float(
                env.get("LORAF_POD_CREATE_TIMEOUT_SECONDS", "").strip()
                or base.pod_create_timeout_seconds
            ),
            metrics_port=_int(env, "LORAF_METRICS_PORT", 8080),
            health_port=_int(env, "LORAF_HEALTH_PORT", 8081),
            bind_address=env.get("LORAF_BIND_ADDRESS", "").strip() or base.bind_address,
            peering=env.get("LORAF_PEERING", "").strip(),
            priority=int(prio) if prio else base.priority,
            log_format=env.get("LORAF_LOG_FORMAT", "").strip() or "plain",
            api_retry_backoffs=tuple(
                float(x) for x in env.get("LORAF_API_RETRY_BACKOFFS", "").split(",") if x.strip()
            )
            or base.api_retry_backoffs,
        )

    def with_args(self, args: argparse.Namespace) -> Settings:
        """Flags given on the command line win over the environment."""
        changes = {k: v for k, v in vars(args).items() if v is not None and hasattr(self, k)}
        if "namespaces" in changes:
            changes["namespaces"] = tuple(changes["namespaces"])
        return replace(self, **changes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraf-operator",
        description="loraf operator: reconciles LoRAFineTune resources into GPU Jobs. "
        "Every flag has an environment variable (see docs/operations.md); flags win.",
    )
    p.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        help="watch this namespace (repeat; env LORAF_NAMESPACES; default: all)",
    )
    p.add_argument("--trainer-image", help="default trainer image (env LORAF_TRAINER_IMAGE)")
    p.add_argument("--s3-endpoint", help="default S3 endpoint URL (env LORAF_S3_ENDPOINT)")
    p.add_argument("--s3-region", help="default S3 region (env LORAF_S3_REGION)")
    p.add_argument(
        "--status-interval",
        dest="status_interval_seconds",
        type=float,
        help="an unfinished run not synced for this many seconds is re-read and its status "
        "re-derived (env LORAF_STATUS_INTERVAL_SECONDS; 60)",
    )
    p.add_argument(
        "--pod-create-timeout",
        dest="pod_create_timeout_seconds",
        type=float,
        help="seconds the Job controller may fail to create a run's pod before the run fails "
        "PodCreationRefused (env LORAF_POD_CREATE_TIMEOUT_SECONDS; 180)",
    )
    p.add_argument(
        "--metrics-port", type=int, help="Prometheus port, 0 disables (env LORAF_METRICS_PORT)"
    )
    p.add_argument(
        "--health-port", type=int, help="liveness port, 0 disables (env LORAF_HEALTH_PORT)"
    )
    p.add_argument(
        "--bind-address",
        help="address of the health and metrics endpoints (env LORAF_BIND_ADDRESS; 0.0.0.0)",
    )
    p.add_argument("--peering", help="kopf peering name; empty = standalone (env LORAF_PEERING)")
    p.add_argument(
        "--priority", type=int, help="peering priority (env LORAF_PRIORITY; default random)"
    )
    p.add_argument("--log-format", choices=["plain", "full", "json"], help="env LORAF_LOG_FORMAT")
    p.add_argument(
        "--api-retry-backoffs",
        type=lambda v: tuple(float(x) for x in v.split(",") if x.strip()),
        help="seconds between kopf's retries of a failed API call, comma list "
        "(env LORAF_API_RETRY_BACKOFFS; 0.5,1,1,2,2 then 3 x16)",
    )
    p.add_argument("--verbose", action="store_true", default=None, help="debug logging")
    return p


def load(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    return Settings.from_env(env).with_args(parser().parse_args(argv))
