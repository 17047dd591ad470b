"""More than one rank: `loraf train` / `loraf run` start torchrun (torch.distributed.run,
the library) with one worker process per GPU, each running the same `loraf` command.

- One pod: `--standalone` (c10d rendezvous on localhost, a free port: concurrent runs on
  one machine never collide).
- M pods (an Indexed Job): c10d rendezvous at LORAF_RENDEZVOUS_ENDPOINT (the pod of index
  0, which hosts the store: `is_host`), `--local-addr` the pod's IP. When a pod fails, the
  Job replaces it; the surviving pods' agents restart their workers (`--max-restarts`) and
  every rank resumes from the last stored checkpoint once the new pod has joined.

torchrun itself exits 1 on any worker failure and on SIGTERM; the launcher keeps the
trainer's exit codes (api/exitcodes.py) instead: the first failed rank's code and
termination message, or 75 (Preempted) after SIGTERM, so the Job's podFailurePolicy means
the same for one rank or many.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loraf_operator.api import distributed as contract
from loraf_operator.api.exitcodes import ExitCode

log = logging.getLogger(__name__)

# Worker restarts a surviving pod's agent allows (a replaced peer pod costs one).
MAX_RESTARTS = 3
# After SIGTERM the launcher must outlive its workers and still exit before the kubelet's
# SIGKILL (137 would count against backoffLimit): the ranks plan their shutdown within
# the grace period less this (train.run), torchrun kills a straggler 1 s before the end.
LAUNCHER_MARGIN_S = 4.0


def rank_grace_s(grace_s: float) -> float:
    """The grace period a rank plans its SIGTERM shutdown in, under the launcher."""
    return max(1.0, grace_s - LAUNCHER_MARGIN_S)


RANKED_TERMINATION = "LORAF_RANKED_TERMINATION"


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int
    nnodes: int = 1
    rendezvous_endpoint: str | None = None  # host:port; None: standalone (one pod)
    rendezvous_id: str = "loraf"
    is_host: bool = True
    local_addr: str | None = None
    shutdown_timeout_s: int = 30


def needed(world_size: int, strategy: str) -> bool:
    """torchrun is used for more than one rank, and for FSDP (a process group) even at 1."""
    return world_size > 1 or strategy == "fsdp"


def from_env(
    nproc_per_node: int, nnodes: int, grace_s: int, env: Mapping[str, str] | None = None
) -> Launch:
    """The launch of one pod of a run, from the Job's env (api/distributed.py)."""
    e = os.environ if env is None else env
    if nnodes <= 1:
        return Launch(nproc_per_node, shutdown_timeout_s=grace_s)
    endpoint = e.get(contract.ENV_RENDEZVOUS_ENDPOINT)
    if not endpoint:
        raise ValueError(f"{contract.ENV_RENDEZVOUS_ENDPOINT} is not set for a multi-node run")
    return Launch(
        nproc_per_node,
        nnodes=nnodes,
        rendezvous_endpoint=endpoint,
        rendezvous_id=e.get(contract.ENV_RENDEZVOUS_ID, "loraf"),
        is_host=e.get(contract.ENV_COMPLETION_INDEX, "0") == "0",
        local_addr=e.get(contract.ENV_POD_IP) or None,
        shutdown_timeout_s=grace_s,
    )


def torchrun_argv(launch: Launch, loraf_args: Sequence[str]) -> list[str]:
    """torch.distributed.run's arguments: the workers run `python -m loraf_trainer <args>`."""
    argv = [f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.rendezvous_endpoint is None:
        argv.append("--standalone")
    else:
        argv += [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.rendezvous_endpoint}",
            f"--rdzv-id={launch.rendezvous_id}",
            f"--rdzv-conf=is_host={str(launch.is_host).lower()}",
            f"--max-restarts={MAX_RESTARTS}",
        ]
        if launch.local_addr:
            argv.append(f"--local-addr={launch.local_addr}")
    timeout = max(1, launch.shutdown_timeout_s - 1)
    argv += [f"--shutdown-timeout={timeout}", "-m", "loraf_trainer"]
    return argv + list(loraf_args)


def rank_message_path(base: str, rank: str) -> str:
    return f"{base}.rank{rank}"


def run(launch: Launch, loraf_args: Sequence[str], termination_log: str) -> int:
    """Start the workers and wait; the exit code and termination message are those of the
    first rank that failed (75 after SIGTERM)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    messages = Path(tempfile.mkdtemp(prefix="loraf-ranks-"))
    base = str(messages / "termination-log")
    os.environ["LORAF_TERMINATION_LOG"] = base
    os.environ[RANKED_TERMINATION] = "1"
    if launch.rendezvous_endpoint is not None:
        # A fresh store address every rendezvous round. With the shared store (torch's
        # default) a pod that replaces a failed one waits forever for MASTER_ADDR: the
        # surviving rank 0 publishes it only in the first round (torch 2.13).
        os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    argv = torchrun_argv(launch, loraf_args)
    log.info("torchrun %s", " ".join(argv))
    try:
        torchrun.run(torchrun.parse_args(argv))
        return int(ExitCode.OK)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        _copy_message(rank_message_path(base, str(rank)), termination_log)
        log.error("rank %s failed with exit code %d", rank, code)
        return code
    except SignalException as e:
        log.warning("%s: the ranks were stopped; the restart resumes from a checkpoint", e)
        found = sorted(messages.glob("termination-log.rank*"))
        _copy_message(str(found[0]) if found else "", termination_log)
        return int(ExitCode.PREEMPTED)


def _copy_message(src: str, dst: str) -> None:
    try:
        text = Path(src).read_text() if src else ""
    except OSError:
        text = ""
    with contextlib.suppress(OSError):  # not in a pod
        Path(dst).write_text(text or "a training rank failed without a message")
