"""What the process kubelet gives pods in place of a pod network and cluster DNS (pure
parts): the hosts file and the per-Job port mapping (hack/loraf_dev/kubelet.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from loraf_dev.kubelet import hosts_file, rewrite_ports


def _pod(hostname: str | None, subdomain: str | None) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(name="job-r1-0-abcde", namespace="ns"),
        spec=SimpleNamespace(hostname=hostname, subdomain=subdomain),
    )


def test_indexed_pod_resolves_itself_and_its_peers() -> None:
    text = hosts_file(_pod("job-r1-1", "job-r1"), ["job-r1-0", "job-r1-1"])
    lines = text.splitlines()
    assert lines[0].split() == ["127.0.0.1", "localhost", socket.gethostname()]
    named = {n: line.split()[0] for line in lines[2:] for n in line.split()[1:]}
    for host in ("job-r1-0", "job-r1-1"):
        for name in (f"{host}.job-r1", f"{host}.job-r1.ns.svc.cluster.local", host):
            assert named[name] == "127.0.0.1"
    assert len(lines) == 4  # its own name once, not twice


def test_plain_pod_gets_its_own_name_only() -> None:
    text = hosts_file(_pod(None, None), [])
    assert text.splitlines()[-1].split() == ["127.0.0.1", "job-r1-0-abcde"]


def test_declared_ports_are_rewritten_in_env() -> None:
    env = {"A": "29400", "B": "job-r1-0.job-r1:29400", "C": "129400", "D": "x:29401"}
    assert rewrite_ports(env, {29400: 41234}) == {
        "A": "41234",
        "B": "job-r1-0.job-r1:41234",
        "C": "129400",
        "D": "x:29401",
    }
