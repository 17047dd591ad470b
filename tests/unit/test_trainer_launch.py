"""The torchrun launch of a run of more than one rank (pure parts), and ranks' env."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraf_trainer import launch, ranks


def test_one_pod_is_standalone() -> None:
    lch = launch.from_env(4, 1, 120, env={})
    argv = launch.torchrun_argv(lch, ["train", "--config", "/etc/loraf/config.yaml"])
    assert argv[:2] == ["--nproc-per-node=4", "--standalone"]
    assert "--shutdown-timeout=119" in argv  # before the kubelet's SIGKILL
    assert launch.rank_grace_s(120) == 116 and launch.rank_grace_s(3) == 1
    assert argv[-5:] == ["-m", "loraf_trainer", "train", "--config", "/etc/loraf/config.yaml"]
    assert not any(a.startswith("--rdzv-endpoint") for a in argv)


@pytest.mark.parametrize(("index", "host"), [("0", "true"), ("2", "false")])
def test_multi_node_meets_on_index_0(index: str, host: str) -> None:
    env = {
        "LORAF_RENDEZVOUS_ENDPOINT": "demo-r1-0.demo-r1:29400",
        "LORAF_RENDEZVOUS_ID": "demo-r1",
        "LORAF_POD_IP": "10.0.0.7",
        "JOB_COMPLETION_INDEX": index,
    }
    argv = launch.torchrun_argv(launch.from_env(8, 3, 60, env=env), ["train"])
    assert "--nnodes=3" in argv and "--rdzv-backend=c10d" in argv
    assert "--rdzv-endpoint=demo-r1-0.demo-r1:29400" in argv
    assert "--rdzv-id=demo-r1" in argv
    assert f"--rdzv-conf=is_host={host}" in argv
    assert "--local-addr=10.0.0.7" in argv
    assert f"--max-restarts={launch.MAX_RESTARTS}" in argv


def test_multi_node_without_an_endpoint_is_an_error() -> None:
    with pytest.raises(ValueError, match="LORAF_RENDEZVOUS_ENDPOINT"):
        launch.from_env(1, 2, 60, env={})


@pytest.mark.parametrize(
    ("world", "strategy", "needed"),
    [(1, "auto", False), (1, "ddp", False), (1, "fsdp", True), (2, "auto", True)],
)
def test_torchrun_needed(world: int, strategy: str, needed: bool) -> None:
    assert launch.needed(world, strategy) is needed


def test_ranks_from_torchrun_env() -> None:
    r = ranks.current({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.node_rank) == (3, 4, 1, 1)
    assert r.distributed and not r.main
    assert ranks.current({}) == ranks.Ranks() and ranks.Ranks().main
    assert ranks.under_torchrun({"TORCHELASTIC_RUN_ID": "x"})
    assert not ranks.under_torchrun({})
    assert ranks.agree(True, False) == (True, False)  # no process group: as given


def test_first_failed_rank_exit_code_and_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real torchrun (2 CPU workers): rank 1 exits 65 with a message; the launcher exits
    65 with that message, not torchrun's 1."""
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import os, sys, time\n"
        "from loraf_trainer.cli import write_termination_message\n"
        "if os.environ['RANK'] == '1':\n"
        "    write_termination_message('row 7: no instruction')\n"
        "    sys.exit(65)\n"
        "time.sleep(30)\n"
    )
    term = tmp_path / "termination-log"
    monkeypatch.setattr(
        launch, "torchrun_argv", lambda lch, args: ["--nproc-per-node=2", "--standalone",
                                                    "--shutdown-timeout=5", str(script)]
    )  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", ":".join(sys.path))
    assert launch.run(launch.Launch(2), [], str(term)) == 65
    assert term.read_text() == "row 7: no instruction"
