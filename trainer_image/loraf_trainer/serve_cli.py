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
from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/loraf-serving/serve.yaml"


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    cfg = ServeConfig.load(args.config)
    if args.port:
        cfg = ServeConfig(**{**cfg.__dict__, "port": args.port})
    serve(cfg)
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="serve config (YAML)")
    p.add_argument("--port", type=int, help="override the config's port")
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
