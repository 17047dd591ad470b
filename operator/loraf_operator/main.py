"""`loraf-operator`: run the kopf operator with loraf's handlers.

    loraf-operator --help
    LORAF_NAMESPACES=team-a,team-b loraf-operator --peering loraf

Leader election is kopf peering: with LORAF_PEERING set, replicas announce themselves in a
(Cluster)KopfPeering object (config/kopf-peering.yaml) and only the highest-priority one
acts; each replica picks a random priority unless LORAF_PRIORITY is set.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, cast

import kopf

from . import handlers, serving_handlers
from .settings import Settings, load


def _configure_logging(cfg: Settings) -> None:
    fmt = {
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
        "json": kopf.LogFormat.JSON,
    }.get(cfg.log_format, kopf.LogFormat.PLAIN)
    # kopf prefixes each line with the object's namespace/name (or adds it as JSON fields).
    kopf.configure(verbose=cfg.verbose, log_format=fmt, log_prefix=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def liveness_endpoint(cfg: Settings) -> str | None:
    if not cfg.health_port:
        return None
    host = f"[{cfg.bind_address}]" if ":" in cfg.bind_address else cfg.bind_address
    return f"http://{host}:{cfg.health_port}/healthz"


def run(cfg: Settings) -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(cfg, registry)
    serving_handlers.register(cfg, registry)
    kopf.run(
        registry=registry,
        clusterwide=cfg.clusterwide,
        namespaces=cfg.namespaces,
        standalone=not cfg.peering,
        peering_name=cfg.peering or None,
        priority=cfg.priority,
        identity=cast(Any, cfg.identity),
        liveness_endpoint=liveness_endpoint(cfg),
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = load(sys.argv[1:] if argv is None else argv, os.environ)
    _configure_logging(cfg)
    logging.getLogger("loraf").info(
        "loraf-operator: namespaces=%s image=%s peering=%s",
        ",".join(cfg.namespaces) or "(all)",
        cfg.trainer_image,
        cfg.peering or "(standalone)",
    )
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
