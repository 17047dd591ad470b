"""`loraf` command line.

  loraf train --config /etc/loraf/config.yaml   # what the operator's Job runs
  loraf run finetune.yaml [--output DIR|s3://…] # the same manifest, on this machine
  loraf run finetune.yaml --nproc-per-node 2     # ... with 2 ranks (gloo on a CPU)
  loraf verify DIR|s3://…/run-<n>               # check an upload against its manifest
  loraf serve --config serve.yaml               # OpenAI-compatible server (transformers engine)

Exit codes follow loraf_operator.api.exitcodes; before a non-zero exit a one-line
message goes to the termination log ($LORAF_TERMINATION_LOG, default
/dev/termination-log), which the operator copies into the Failed condition.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraf_operator.api.exitcodes import ExitCode
from loraf_operator.api.mounts import ENV_PVC_ROOT
from loraf_operator.api.run_layout import MANIFEST, run_prefix

from . import launch, ranks
from .errors import ConfigInvalid, TrainerError
from .optimizations import allocator_defaults

if TYPE_CHECKING:  # train imports the training stack: loaded only when a run starts
    from .checkpoints import Preemption
    from .storage import Store
    from .train import RunContext

log = logging.getLogger("loraf")

TERMINATION_LOG = "/dev/termination-log"


def write_termination_message(message: str) -> None:
    path = os.environ.get("LORAF_TERMINATION_LOG", TERMINATION_LOG)
    if os.environ.get(launch.RANKED_TERMINATION):  # a torchrun worker: the launcher picks
        path = launch.rank_message_path(path, os.environ.get("RANK", "0"))
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(message.strip().splitlines()[0][:4000] if message.strip() else "failed")
    except OSError:
        pass  # not in a pod (or not writable): the log line below is all there is


def _work_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("LORAF_WORK_DIR") or tempfile.mkdtemp(prefix="loraf-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _execute(build: Callable[[Preemption], RunContext]) -> int:
    """Run `build()` → RunContext, then the training; map failures to exit codes."""
    from .checkpoints import Preemption

    # The grace period comes from the config (run() sets it once parsed).
    preemption = Preemption(on_deadline=write_termination_message)
    preemption.install()
    ctx = None
    try:
        ctx = build(preemption)
        from .train import run

        result = run(ctx)
        preemption.cancel()  # done: no forced exit
        print(json.dumps({"result": result}, indent=2))
        return int(ExitCode.OK)
    except TrainerError as e:
        log.error("%s", e.message)
        write_termination_message(e.message)
        if e.exit_code == ExitCode.PREEMPTED and preemption.received_at is not None:
            # SIGTERM: the grace period is running out. Skip the interpreter's teardown
            # (freeing the model and torch can take seconds): the work is checkpointed.
            if ctx is not None:
                ctx.publisher.close(timeout=1.0)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            preemption.exit_fn(int(e.exit_code))
        return int(e.exit_code)
    except Exception as e:  # unexpected: counted against the Job's backoffLimit
        traceback.print_exc()
        write_termination_message(f"unexpected error: {type(e).__name__}: {e}")
        return 1
    finally:
        if ctx is not None:
            ctx.publisher.close()
        preemption.uninstall()


def _load_config(path: str) -> Any:
    from pydantic import ValidationError

    from loraf_operator.api.trainer_config import TrainerConfig

    try:
        return TrainerConfig.load(path)
    except OSError as e:
        raise ConfigInvalid(f"cannot read config {path}: {e.strerror}") from e
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigInvalid(f"config invalid at {loc}: {first['msg']}") from e
    except Exception as e:  # YAML syntax
        raise ConfigInvalid(f"config {path} is not valid YAML: {e}") from e


def _relaunch(lch: launch.Launch, argv: list[str]) -> int:
    """This command again, as torchrun workers (launch.py); returns their exit code."""
    code = launch.run(lch, argv, os.environ.get("LORAF_TERMINATION_LOG", TERMINATION_LOG))
    if code == ExitCode.PREEMPTED:  # the grace period is running out: skip the teardown
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    if not ranks.under_torchrun():
        try:
            cfg = _load_config(args.config)
        except TrainerError as e:
            write_termination_message(e.message)
            return int(e.exit_code)
        res = cfg.spec.resources
        if launch.needed(res.world_size, res.strategy):
            work = str(_work_dir(args.work_dir))  # one scratch folder for the pod's ranks
            lch = launch.from_env(
                res.ranks_per_node, res.nodes, res.termination_grace_period_seconds
            )
            return _relaunch(lch, ["train", "--config", args.config, "--work-dir", work])

    def build(preemption: Any) -> Any:
        from .status_reporter import KubeSink, StatusPublisher
        from .storage import open_store
        from .train import RunContext, storage_retry

        cfg = _load_config(args.config)
        out = cfg.spec.output
        sink = None
        if ranks.current().main and not os.environ.get("LORAF_NO_STATUS"):  # rank 0 alone
            try:
                sink = KubeSink(cfg.namespace, cfg.name, cfg.uid or None)
            except Exception as e:  # never fail a run because status cannot be written
                log.warning("status reporting disabled: %s", e)
        publisher = StatusPublisher(sink, cfg.spec.training.status_interval_seconds)
        retry = storage_retry(cfg, publisher)
        return RunContext(
            cfg=cfg,
            store=open_store(cfg.layout().root, out.endpoint, out.region, retry, out.retry),
            work_dir=_work_dir(args.work_dir),
            publisher=publisher,
            preemption=preemption,
            retry=retry,
        )

    return _execute(build)


def _read_manifest(path: str) -> dict[str, Any]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as e:
        raise ConfigInvalid(f"cannot read {path}: {e}") from e
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "LoRAFineTune":
            return d
    raise ConfigInvalid(f"{path} holds no LoRAFineTune")


LOCAL_CLAIM = "local"  # placeholder claim of a plain local path (never mounted)
LOCAL_START_FROM = "s3://loraf-local/start-from"  # placeholder: startFrom.path is read instead


def local_inputs(spec: dict[str, Any], base_dir: Path) -> tuple[dict[str, Any], Any]:
    """`loraf run` only: plain local paths in a manifest (`baseModel.path`,
    `dataset.path`, `dataset.eval.path`, `startFrom.path` (a run folder holding
    manifest.json and adapter/); relative to the manifest's folder) become
    LocalInputs, with a placeholder PVC source so the spec still validates. A `.gguf`
    file as baseModel.path sets ggufFile. Returns the rewritten spec and the inputs."""
    from .train import LocalInputs

    spec = {**spec}
    found: dict[str, Path] = {}

    def take(section: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
        if not isinstance(section, dict) or "path" not in section:
            return section
        section = {**section}
        raw = section.pop("path")
        if not isinstance(raw, str) or not raw:
            raise ConfigInvalid(f"{key}.path must be a non-empty string")
        path = (base_dir / Path(raw).expanduser()).resolve()
        if not path.exists():
            raise ConfigInvalid(f"{key}.path: {path} does not exist")
        if key == "baseModel" and path.suffix == ".gguf" and path.is_file():
            section.setdefault("ggufFile", path.name)
            path = path.parent
        found[key] = path
        section["pvc"] = {"claimName": LOCAL_CLAIM, "path": path.name}
        return section

    spec["baseModel"] = take(spec.get("baseModel"), "baseModel")
    ds = take(spec.get("dataset"), "dataset")
    if isinstance(ds, dict) and isinstance(ds.get("eval"), dict):
        ds["eval"] = take(ds["eval"], "dataset.eval")
    spec["dataset"] = ds
    start = take(spec.get("startFrom"), "startFrom")
    if start is not None and "startFrom" in found:  # a local run folder, not an S3 source
        start.pop("pvc")
        start["s3"] = LOCAL_START_FROM
        spec["startFrom"] = start
    return spec, LocalInputs(
        model=found.get("baseModel"),
        data=found.get("dataset"),
        eval=found.get("dataset.eval"),
        start_adapter=found.get("startFrom"),
    )


def next_run_number(store_for: Callable[[int], Store]) -> int:
    """The first run-<n> without a manifest: completed runs are never overwritten, an
    interrupted one is resumed."""
    n = 1
    while store_for(n).get_bytes(MANIFEST) is not None:
        n += 1
    return n


def cmd_run(args: argparse.Namespace) -> int:
    if args.pvc_root:
        os.environ[ENV_PVC_ROOT] = args.pvc_root
    strategy = ((_read_manifest(args.manifest).get("spec") or {}).get("resources") or {}).get(
        "strategy", "auto"
    )
    if launch.needed(args.nproc_per_node, strategy) and not ranks.under_torchrun():
        work = str(_work_dir(args.work_dir))
        argv = ["run", args.manifest, "--work-dir", work]
        for flag, value in (("--output", args.output), ("--run", args.run)):
            if value is not None:
                argv += [flag, str(value)]
        if args.pvc_root:
            argv += ["--pvc-root", args.pvc_root]
        return _relaunch(launch.Launch(args.nproc_per_node), argv)

    def build(preemption: Any) -> Any:
        from pydantic import ValidationError

        from loraf_operator.api.trainer_config import TrainerConfig

        from .status_reporter import StatusPublisher
        from .storage import open_store
        from .train import RunContext, storage_retry

        obj = _read_manifest(args.manifest)
        obj.setdefault("metadata", {}).setdefault("namespace", "default")
        obj["metadata"].setdefault("name", Path(args.manifest).stem)
        obj["metadata"].setdefault("uid", "local")
        spec, local = local_inputs(obj.get("spec") or {}, Path(args.manifest).resolve().parent)
        if args.output and not spec.get("output"):
            # --output is where artifacts go; spec.output.s3 is then never read
            spec["output"] = {"s3": f"s3://loraf-local/{obj['metadata']['name']}"}
        obj["spec"] = spec
        try:
            probe = TrainerConfig.for_resource(obj, run=1)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ConfigInvalid(f"{args.manifest}: invalid at {loc}: {first['msg']}") from e
        out = probe.spec.output
        root = args.output or out.s3
        publisher = StatusPublisher(None)
        retry = storage_retry(probe, publisher)

        def store_for(n: int) -> Store:
            return open_store(run_prefix(root, n), out.endpoint, out.region, retry, out.retry)

        run_no = args.run or next_run_number(store_for)
        cfg = TrainerConfig.for_resource(obj, run=run_no)
        log.info("run %d → %s", run_no, store_for(run_no).uri())
        return RunContext(
            cfg=cfg,
            store=store_for(run_no),
            work_dir=_work_dir(args.work_dir),
            publisher=publisher,
            preemption=preemption,
            interactive=ranks.current().main,
            retry=retry,
            local=local,
        )

    return _execute(build)


def cmd_verify(args: argparse.Namespace) -> int:
    from .artifacts import verify_manifest
    from .storage import open_store

    problems = verify_manifest(open_store(args.location.rstrip("/")))
    for p in problems:
        print(p)
    if not problems:
        print("ok: every file matches the manifest")
    return 0 if not problems else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraf", description="LoRA/QLoRA fine-tuning trainer")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run the trainer config mounted by the operator")
    t.add_argument("--config", default="/etc/loraf/config.yaml")
    t.add_argument("--work-dir", help="scratch folder (default $LORAF_WORK_DIR or a temp dir)")
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("run", help="train a LoRAFineTune manifest on this machine")
    r.add_argument("manifest")
    r.add_argument("--output", help="folder or s3:// prefix (default spec.output.s3)")
    r.add_argument("--run", type=int, help="run number (default: the first without a manifest)")
    r.add_argument("--pvc-root", help="folder holding one sub-folder per PVC claim name")
    r.add_argument("--work-dir", help="scratch folder (default a temp dir)")
    r.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="training ranks on this machine (torchrun; gloo on a CPU); "
        "spec.resources.strategy says ddp or fsdp",
    )
    r.set_defaults(func=cmd_run)
    v = sub.add_parser("verify", help="check a run's files against its manifest.json")
    v.add_argument("location", help="run folder or s3://…/run-<n>")
    v.set_defaults(func=cmd_verify)
    from .serve_cli import add_serve_parser  # imports nothing heavy until it runs

    add_serve_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LORAF_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = parser().parse_args(argv)
    allocator_defaults()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
