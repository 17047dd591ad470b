"""S3 fault handling without a server: what an error means, and the outage retry
(bounded time, backoff, status callbacks; denied never retried). Issue 21 items 3, 5, 8."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from loraf_trainer.errors import StorageAccessDenied, StorageUnavailable
from loraf_trainer.storage import Retry, classify


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("InvalidAccessKeyId", 403), "denied"),
        (client_error("SignatureDoesNotMatch", 403), "denied"),
        (client_error("AccessDenied", 403), "denied"),
        (client_error("403", 403), "denied"),  # HEAD: no body, only the status
        (NoCredentialsError(), "denied"),
        (client_error("NoSuchBucket", 404), "missing"),
        (client_error("ServiceUnavailable", 503), "unavailable"),
        (client_error("InternalError", 500), "unavailable"),
        (client_error("SlowDown", 503), "unavailable"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "unavailable"),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), "unavailable"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "unavailable"),
        (client_error("InvalidArgument", 400), "other"),
        (ValueError("x"), "other"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_classify_follows_the_cause() -> None:
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        except EndpointConnectionError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert classify(outer) == "unavailable"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def make_retry(timeout: float, t: FakeTime, events: list[Any]) -> Retry:
    return Retry(
        timeout_s=timeout,
        on_error=lambda msg, n: events.append(("error", n, msg)),
        on_recovered=lambda: events.append(("recovered",)),
        clock=t.clock,
        sleep=t.sleep,
    )


def test_outage_is_retried_with_backoff_then_succeeds() -> None:
    t, events = FakeTime(), list[Any]()
    calls = iter([EndpointConnectionError(endpoint_url="u")] * 3 + [None])

    def op() -> str:
        exc = next(calls)
        if exc is not None:
            raise exc
        return "ok"

    assert make_retry(60, t, events).call("uploading x", op) == "ok"
    assert t.sleeps == [1.0, 2.0, 4.0]
    assert [e[0] for e in events] == ["error", "error", "error", "recovered"]
    assert "S3 unavailable while uploading x" in events[0][2] and events[2][1] == 3


def test_outage_longer_than_the_budget_gives_storage_unavailable() -> None:
    t, events = FakeTime(), list[Any]()

    def op() -> None:
        t.now += 0.5  # each attempt takes a while (a connect timeout)
        raise ReadTimeoutError(endpoint_url="u")

    with pytest.raises(StorageUnavailable, match=r"gave up after \d+ s .*timeoutSeconds is 20"):
        make_retry(20, t, events).call("uploading x", op)
    assert 20 <= t.now < 21  # never waits past the budget
    assert all(s <= 30 for s in t.sleeps)
    assert not any(e[0] == "recovered" for e in events)


def test_denied_is_never_retried() -> None:
    t, events = FakeTime(), list[Any]()

    def op() -> None:
        raise client_error("InvalidAccessKeyId", 403)

    with pytest.raises(StorageAccessDenied, match="InvalidAccessKeyId"):
        make_retry(600, t, events).call("listing s3://b/p", op)
    assert t.sleeps == [] and events == []


def test_other_errors_pass_through_unretried() -> None:
    t, events = FakeTime(), list[Any]()

    def op() -> None:
        raise client_error("NoSuchBucket", 404)

    with pytest.raises(ClientError):
        make_retry(600, t, events).call("x", op)
    assert t.sleeps == []


def test_storage_retry_reports_in_status_and_clears_on_recovery() -> None:
    from loraf_operator.api.trainer_config import TrainerConfig
    from loraf_trainer.status_reporter import StatusPublisher
    from loraf_trainer.train import storage_retry

    cfg = TrainerConfig.model_validate(
        {
            "namespace": "ns",
            "name": "ft",
            "uid": "u",
            "generation": 1,
            "run": 1,
            "spec": {
                "baseModel": {"huggingFace": "org/m"},
                "dataset": {"s3": "s3://bkt/d.jsonl", "format": "alpaca"},
                "training": {"maxSteps": 1},
                "output": {"s3": "s3://bkt/o", "retry": {"timeoutSeconds": 60}},
            },
        }
    )
    pub = StatusPublisher(None)
    retry = storage_retry(cfg, pub)
    assert retry.timeout_s == 60
    t = FakeTime()
    retry.clock, retry.sleep = t.clock, t.sleep
    seen: list[Any] = []
    calls = iter([ReadTimeoutError(endpoint_url="u"), None])

    def op() -> None:
        exc = next(calls)
        if exc is not None:
            raise exc
        seen.append(dict(pub.last))  # what status showed while it retried

    retry.call("uploading 3 file(s) to s3://bkt/o/run-1", op)
    assert "S3 unavailable while uploading" in seen[0]["storageError"]
    assert seen[0]["storageRetries"] == 1
    assert pub.last["storageError"] is None  # cleared: JSON null removes it in the merge patch
    # A timed-out request inside botocore is reported at once, too.
    retry.note("S3 PutObject attempt 1 timed out: ReadTimeoutError")
    assert str(pub.last["storageError"]).startswith("S3 PutObject attempt 1 timed out")
