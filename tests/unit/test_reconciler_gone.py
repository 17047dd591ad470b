"""A pod event that arrives after its LoRAFineTune was deleted is ignored quietly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from loraf_operator.kube import ApiError
from loraf_operator.reconciler import Reconciler
from loraf_operator.settings import Settings


class GoneKube:
    def __init__(self) -> None:
        self.patches = 0

    async def patch(self, *a: Any, **kw: Any) -> Any:
        self.patches += 1
        raise ApiError(404, '{"reason": "NotFound", "message": "not found"}', "PATCH", "/x")


def test_status_patch_of_a_deleted_resource_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    kube = GoneKube()
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    ft = {
        "metadata": {"namespace": "ns", "name": "ft", "uid": "u", "generation": 1},
        "spec": {},
        "status": {"run": {"number": 1, "jobName": "ft-r1"}, "conditions": []},
    }
    job = {"metadata": {"name": "ft-r1"}, "spec": {}, "status": {}}
    with caplog.at_level(logging.DEBUG):
        asyncio.run(rec.sync("ns", "ft", {("ns", "ft"): [ft]}, {("ns", "ft-r1"): [job]}, {}, None))
    assert kube.patches == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
