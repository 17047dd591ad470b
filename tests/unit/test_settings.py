"""Operator settings: the bind address of the health and metrics endpoints, API retries."""

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


def test_api_retry_backoffs_from_env_and_flag() -> None:
    """kopf's API retries are at most 3 s apart by default (its own go up to 21 s)."""
    default = load([], {})
    assert max(default.api_retry_backoffs) == 3.0 and sum(default.api_retry_backoffs) > 50
    assert load([], {"LORAF_API_RETRY_BACKOFFS": "1, 1,2"}).api_retry_backoffs == (1, 1, 2)
    cfg = load(["--api-retry-backoffs", "5,8"], {"LORAF_API_RETRY_BACKOFFS": "1"})
    assert cfg.api_retry_backoffs == (5.0, 8.0)
