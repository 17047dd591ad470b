"""`loraf serve --config FILE`: the transformers serving engine's entry point.

Kept out of cli.py (the trainer's) on purpose: `add_serve_parser(sub)` registers the
subcommand on cli.py's subparsers, and `python -m loraf_trainer.serve_cli --config FILE`
runs it standalone (what the operator's transformers Deployment runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .serve import ServeConfig

DEFAULT_CONFIG = "/etc/loraf-serving/serve.yaml"


log = logging.getLogger("loraf.serve")


def sync_dir(cfg: ServeConfig, dest: Path, done: dict[str, str]) -> list[str]:
    """Fetch (verified) every listed adapter not yet in dest into dest/<name>, atomically
    (a temp folder renamed into place, so vLLM's resolver never sees half an adapter).
    Returns the problems; `done` (name → uri) is updated in place."""
    import shutil

    from .serve import fetch_adapter, read_adapter_list

    problems = []
    for name, uri in read_adapter_list(cfg.adapters_file).items():
        if done.get(name) == uri:
            continue
        tmp = dest / f".{name}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            fetch_adapter(uri, tmp, cfg.endpoint, cfg.region)
        except Exception as e:
            problems.append(f"{name}: {e}")
            log.error("adapter %s (%s) not fetched: %s", name, uri, e)
            continue
        shutil.rmtree(dest / name, ignore_errors=True)
        tmp.rename(dest / name)
        done[name] = uri
        log.info("adapter %s fetched from %s", name, uri)
    return problems


def cmd_fetch(args: argparse.Namespace) -> int:
    """Init container / sidecar of the vLLM engine: base model (S3) and adapters."""
    from .serve import ServeConfig

    cfg = ServeConfig.load(args.config)
    dest = Path(args.fetch_to)
    dest.mkdir(parents=True, exist_ok=True)
    if args.base_to:
        from .model_loading import resolve_source

        resolved = resolve_source(cfg.base_model)
        link = Path(args.base_to)
        if not link.exists():
            link.symlink_to(resolved.path, target_is_directory=True)
    done: dict[str, str] = {}
    problems = sync_dir(cfg, dest, done)
    if not args.watch:
        return 1 if problems else 0
    while True:
        time.sleep(cfg.poll_seconds)
        sync_dir(cfg, dest, done)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    if args.fetch_to:
        return cmd_fetch(args)
    cfg = ServeConfig.load(args.config)
    if args.port:
        cfg = ServeConfig(**{**cfg.__dict__, "port": args.port})
    serve(cfg)
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="serve config (YAML)")
    p.add_argument("--port", type=int, help="override the config's port")
    p.add_argument("--fetch-to", help="only fetch the listed adapters into DIR/<name> (vLLM)")
    p.add_argument("--base-to", help="with --fetch-to: also fetch the base model, link it here")
    p.add_argument("--watch", action="store_true", help="with --fetch-to: keep syncing")
    p.set_defaults(func=cmd_serve)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register `serve` on an existing subparsers object (cli.py's)."""
    _add_args(sub.add_parser("serve", help="serve a base model + LoRA adapters (OpenAI API)"))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LORAF_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    p = argparse.ArgumentParser(prog="loraf serve", description=__doc__)
    _add_args(p)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
