"""`loraf serve --config FILE`: the trainer image's serving entry points.

- no flag: the transformers engine (what the operator's transformers Deployment runs);
- `--base-to DIR`: the vLLM engine's init container (base model as a folder);
- `--sync-vllm DIR`: the vLLM engine's adapter sidecar (loraf_trainer.vllm_sync).

Kept out of cli.py (the trainer's) on purpose: `add_serve_parser(sub)` registers the
subcommand on cli.py's subparsers, and `python -m loraf_trainer.serve_cli …` runs it
standalone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from loraf_operator.api.serve_config import ServeConfig

DEFAULT_CONFIG = "/etc/loraf-serving/serve.yaml"


log = logging.getLogger("loraf.serve")


def cmd_fetch_base(cfg: ServeConfig, link: Path) -> int:
    """The vLLM engine's init container: the base model as a folder vLLM reads (an S3
    copy; a GGUF file converted once, as the trainer does), linked at `link`."""
    from .model_loading import materialize, resolve_source
    from .storage import s3_client

    client = s3_client(cfg.endpoint, cfg.region) if cfg.base_model.s3 else None
    folder = materialize(resolve_source(cfg.base_model, client), cfg.base_model.trust_remote_code)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(folder, target_is_directory=True)
    log.info("base model %s ready at %s", cfg.base_name, folder)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    cfg = ServeConfig.load(args.config)
    if args.port:
        cfg = cfg.model_copy(update={"port": args.port})
    if args.base_to:
        return cmd_fetch_base(cfg, Path(args.base_to))
    if args.sync_vllm:
        from .vllm_sync import run

        run(cfg, Path(args.sync_vllm))
        return 0
    serve(cfg)
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="serve config (YAML)")
    p.add_argument("--port", type=int, help="override the config's port")
    p.add_argument("--base-to", help="vLLM init container: fetch the base model, link it here")
    p.add_argument(
        "--sync-vllm",
        metavar="DIR",
        help="vLLM sidecar: fetch the listed adapters into DIR and register them in vLLM",
    )
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
