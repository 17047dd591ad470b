"""Operator settings: the bind address of the health and metrics endpoints."""

from __future__ import annotations

from loraf_operator.main import liveness_endpoint
from loraf_operator.settings import load


def test_bind_address_from_env_and_flag() -> None:
    assert load([], {}).bind_address == "0.0.0.0"
    assert load([], {"LORAF_BIND_ADDRESS": "127.0.0.1"}).bind_address == "127.0.0.1"
    cfg = load(["--bind-address", "::1"], {"LORAF_BIND_ADDRESS": "127.0.0.1"})
    assert cfg.bind_address == "::1"


def test_liveness_endpoint_listens_on_the_bind_address() -> None:
    assert liveness_endpoint(load([], {"LORAF_HEALTH_PORT": "9"})) == "http://0.0.0.0:9/healthz"
    v6 = load(["--bind-address", "::"], {"LORAF_HEALTH_PORT": "9"})
    assert liveness_endpoint(v6) == "http://[::]:9/healthz"
    assert liveness_endpoint(load([], {"LORAF_HEALTH_PORT": "0"})) is None
