"""kopf glue: register handlers that hand over to `Reconciler`. No decisions in here.

- LoRAFineTune create/update(spec)/resume -> `Reconciler.reconcile` (start/stop runs).
- Job and Pod events of fine-tune runs (`RUN_SELECTOR`: not the serving pods) ->
  `Reconciler.sync`.
- No kopf timers or daemons: kopf would put a finalizer on every LoRAFineTune for them, and
  a finalizer makes resources undeletable while the operator is down. The safety net is
  the Reconciler's own resync task instead (started at startup): every unfinished run not
  synced for LORAF_STATUS_INTERVAL_SECONDS is re-read from the apiserver and its status
  re-derived, which repairs a transition whose status write failed.
- In-memory indexes of LoRAFineTunes, run Jobs (by owning resource) and run Pods, fed by
  the same watches, so following a run needs no extra reads.
- The operator's one Kubernetes client (`memo.kube`, kube.py) is made at startup here and
  closed at cleanup; the Reconciler and the serving handlers share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from . import metrics
from .api.models import FINETUNE_PLURAL, GROUP, VERSION
from .builders.labels import FINETUNE, JOB_NAME, RUN_SELECTOR
from .kube import Kube
from .reconciler import Reconciler
from .settings import Settings

FT = (GROUP, VERSION, FINETUNE_PLURAL)
JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")


def _slim(body: Any, keep_spec: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A small view of a watched object for the indexes (no managedFields).

    No deep copy: each watch event brings a fresh object that nobody mutates, and copying
    every LoRAFineTune on every event was the operator's biggest CPU cost in the burst
    benchmark.
    """
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {
        "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
        "status": body.get("status") or {},
    }
    spec = body.get("spec") or {}
    out["spec"] = spec if keep_spec is None else {k: spec[k] for k in keep_spec if k in spec}
    for k in ("apiVersion", "kind"):
        if k in body:
            out[k] = body[k]
    return out


def _owner(body: Any) -> str | None:
    return ((body.get("metadata") or {}).get("annotations") or {}).get(FINETUNE)


def register(cfg: Settings, registry: kopf.OperatorRegistry) -> None:
    """Register every handler on `registry` with the given settings."""

    @kopf.on.startup(registry=registry, id="startup")
    async def startup(**kw: Any) -> None:
        settings: kopf.OperatorSettings = kw["settings"]
        memo: kopf.Memo = kw["memo"]
        # kopf's own bookkeeping goes to annotations, never into our status.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="loraf.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="loraf.dev", key="last-handled-configuration"
        )
        settings.persistence.finalizer = "loraf.dev/kopf-finalizer"  # unused: no delete handlers
        settings.posting.reporting_component = "loraf-operator"
        # kopf's own log-derived Events only from WARNING up ("Handler ... failed"), not one
        # per successful handler; loraf's transition Events are posted explicitly.
        settings.posting.level = logging.WARNING
        settings.peering.mandatory = bool(cfg.peering)
        # Watch streams are renewed this often (kopf resumes them from the last
        # resourceVersion: no re-list; the resync task is the safety net).
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 30
        # Failed API calls (watches too) retried at most 3 s apart by default: with kopf's
        # own backoffs the operator came back up to 21 s after the apiserver did.
        settings.networking.error_backoffs = cfg.api_retry_backoffs
        memo.kube = await Kube.connect()
        memo.reconciler = Reconciler(memo.kube, cfg)
        memo.reconciler.jobs = kw["run_jobs"]
        memo.resync = asyncio.create_task(memo.reconciler.resync_forever(kw["finetunes"]))
        metrics.serve(cfg.metrics_port, cfg.bind_address)

    @kopf.on.login(registry=registry, id="login")
    def login(**kw: Any) -> kopf.ConnectionInfo | None:
        # An explicit registry has no default login handlers: in-cluster token, else kubeconfig.
        return kopf.login_with_service_account(**kw) or kopf.login_with_kubeconfig(**kw)

    @kopf.on.cleanup(registry=registry, id="cleanup")
    async def cleanup(**kw: Any) -> None:
        task = getattr(kw["memo"], "resync", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        kube = getattr(kw["memo"], "kube", None)
        if kube is not None:
            await kube.close()

    # -- indexes (kwargs only: kopf passes many, and mypy checks them against its protocols) --

    @kopf.index(*FT, registry=registry, id="finetunes")
    async def finetunes(**kw: Any) -> dict[Any, Any]:
        return {(kw["namespace"], kw["name"]): _slim(kw["body"])}

    @kopf.index(*JOBS, labels=RUN_SELECTOR, registry=registry, id="run_jobs")
    async def run_jobs(**kw: Any) -> dict[Any, Any]:
        # Keyed by the owning LoRAFineTune: its run bookkeeping is derived from these Jobs.
        owner = _owner(kw["body"])
        slim = _slim(kw["body"], keep_spec=("suspend", "backoffLimit"))
        return {(kw["namespace"], owner): slim} if owner else {}

    @kopf.index(*PODS, labels=RUN_SELECTOR, registry=registry, id="run_pods")
    async def run_pods(**kw: Any) -> dict[Any, Any]:
        job = kw["labels"].get(JOB_NAME)
        return {(kw["namespace"], job): _slim(kw["body"], keep_spec=("nodeName",))} if job else {}

    # -- the LoRAFineTune ---------------------------------------------------------------------

    @kopf.on.resume(*FT, registry=registry, id="reconcile")
    @kopf.on.create(*FT, registry=registry, id="reconcile")
    @kopf.on.update(*FT, field="spec", registry=registry, id="reconcile")
    async def reconcile(**kw: Any) -> None:
        with metrics.timed("reconcile"):
            await kw["memo"].reconciler.reconcile(dict(kw["body"]), kw["run_jobs"], kw["logger"])

    @kopf.on.event(*FT, registry=registry, id="finetune_gone")
    async def finetune_gone(**kw: Any) -> None:
        if kw["type"] == "DELETED" and hasattr(kw["memo"], "reconciler"):
            kw["memo"].reconciler.forget((kw["namespace"], kw["name"]))

    # -- the run's Job and Pods ---------------------------------------------------------------

    async def _follow(kw: dict[str, Any]) -> None:
        owner = _owner(kw["body"])
        memo = kw["memo"]
        if owner and hasattr(memo, "reconciler"):
            deleted = (
                kw["name"] if kw["type"] == "DELETED" and kw["body"].get("kind") == "Job" else None
            )
            await memo.reconciler.sync(
                kw["namespace"], owner, kw["finetunes"], kw["run_jobs"], kw["run_pods"], deleted
            )

    @kopf.on.event(*JOBS, labels=RUN_SELECTOR, registry=registry, id="job_event")
    async def job_event(**kw: Any) -> None:
        with metrics.timed("job_event"):
            await _follow(kw)

    @kopf.on.event(*PODS, labels=RUN_SELECTOR, registry=registry, id="pod_event")
    async def pod_event(**kw: Any) -> None:
        with metrics.timed("pod_event"):
            await _follow(kw)
