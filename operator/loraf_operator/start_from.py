"""spec.startFrom.fineTune → the adapter a run starts from (pure; the reconciler reads the
referenced LoRAFineTune and passes it in).

A fine-tune's adapter counts only once its `Succeeded` condition is True and
`status.artifacts.adapterUri` is set: the same rule serving uses (serving_link), so a run
never starts from, and serving never serves, a run that did not finish.
"""

from __future__ import annotations

from typing import Any

from .api.conditions import COND_SUCCEEDED
from .api.models import LoRAFineTune
from .api.run_layout import RunLayout


class Waiting(Exception):
    """The referenced fine-tune has no succeeded adapter yet; the message says why."""


def succeeded_adapter_uri(ft: LoRAFineTune) -> str | None:
    """s3://…/run-<n>/adapter/ of a succeeded fine-tune, else None."""
    if not any(c.type == COND_SUCCEEDED and c.status == "True" for c in ft.status.conditions):
        return None
    return (ft.status.artifacts.adapter_uri if ft.status.artifacts else None) or None


def resolve(ft: LoRAFineTune, source: dict[str, Any] | None) -> str | None:
    """The run prefix to start from (None: no startFrom.fineTune); raises Waiting while
    the referenced fine-tune (`source`, as read from the apiserver) has not succeeded."""
    start = ft.spec.start_from
    if start is None or start.fine_tune is None:
        return None
    name = start.fine_tune
    if source is None:
        raise Waiting(
            f"startFrom.fineTune {name}: no such LoRAFineTune in namespace {ft.namespace}; "
            "the run starts once it exists and succeeds"
        )
    src = LoRAFineTune.model_validate(source)
    uri = succeeded_adapter_uri(src)
    if uri is None:
        phase = src.status.phase or "Pending"
        raise Waiting(
            f"startFrom.fineTune {name} has not succeeded yet (phase {phase}); the run "
            "starts once it has"
        )
    return RunLayout.of_adapter(uri).root
