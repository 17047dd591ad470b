"""kopf glue for LoRAServing, and the LoRAFineTune → LoRAServing link.

- LoRAServing create/update(spec)/resume → server-side apply of its ConfigMap,
  Deployment and Service (builders/serving.py; owner references make the garbage
  collector delete them with it), then its status.
- Deployment events (the serving ones), and a timer every REPLICA_POLL_SECONDS → the
  LoRAServing's status (serving_status.py): Ready, url, readyReplicas, engine exits, and
  per adapter its state as the ready replicas report it (GET /v1/adapters on each pod).
- LoRAFineTune events → serving_link: a succeeded run with spec.serving creates/updates
  its LoRAServing or joins a shared one; the outcome is the fine-tune's Serving condition,
  written by the Reconciler under its per-object lock (`Reconciler.decide_condition`).

All I/O goes through the operator's one client (`memo.kube`, kube.py), set up at startup
by handlers.py.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from . import serving_status as svstatus
from .api.models import FINETUNE_PLURAL, GROUP, SERVING_PLURAL, VERSION, LoRAFineTune, LoRAServing
from .builders import serving as build
from .builders.naming import serving_child_name, serving_config_map_name
from .kube import ApiError, Kube
from .serving_link import (
    Outcome,
    adapter_of,
    dedicated_serving,
    plan_dedicated,
    plan_shared,
    serving_not_found,
)
from .settings import Settings
from .status import Cond

log = logging.getLogger("loraf.serving")

SV = (GROUP, VERSION, SERVING_PLURAL)
FT = (GROUP, VERSION, FINETUNE_PLURAL)
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVING_SELECTOR = {"app.kubernetes.io/name": "loraf-serving"}
#: How often each LoRAServing's replicas are asked for their adapters' states.
REPLICA_POLL_SECONDS = 10.0
REPLICA_HTTP_TIMEOUT = 3.0


# ------------------------------------------------------------------ LoRAServing status


async def _replica_reports(sv: LoRAServing, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ready replica's own view of its adapters (GET /v1/adapters on the pod: the
    transformers engine itself, or the vLLM sidecar); a replica that does not answer is
    left out (its adapters stay Loading)."""
    port = build.sync_port(sv) if sv.spec.engine == "vllm" else sv.spec.port
    timeout = aiohttp.ClientTimeout(total=REPLICA_HTTP_TIMEOUT)
    out = []
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP")
            if not ip or not svstatus.pod_ready(pod):
                continue
            try:
                async with http.get(f"http://{ip}:{port}/v1/adapters") as r:
                    if r.status == 200:
                        out.append(await r.json())
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.debug("adapters of %s: %s", pod["metadata"]["name"], e)
    return out


async def observe(kube: Kube, sv: LoRAServing) -> tuple[dict[str, Any] | None, svstatus.Replicas]:
    """The Deployment, its other children that are missing, and what its pods say."""
    dep = await kube.get("Deployment", sv.namespace, serving_child_name(sv.name))
    missing = []
    for kind, child in (
        ("Service", serving_child_name(sv.name)),
        ("ConfigMap", serving_config_map_name(sv.name)),
    ):
        if await kube.get(kind, sv.namespace, child) is None:
            missing.append(f"{kind} {child}")
    selector = ",".join(f"{k}={v}" for k, v in build.selector(sv).items())
    pods = await kube.list("Pod", sv.namespace, labels=selector)
    return dep, svstatus.Replicas(
        reports=await _replica_reports(sv, pods),
        engine_exit=svstatus.engine_exit(pods),
        missing=tuple(missing),
    )


async def reconcile_serving(kube: Kube, body: dict[str, Any], cfg: Settings) -> None:
    try:
        sv = LoRAServing.model_validate(body)
        children = [
            build.build_config_map(sv, cfg.build_defaults),
            build.build_deployment(sv, cfg.build_defaults),
            build.build_service(sv),
        ]
    except ValueError as e:
        raise kopf.PermanentError(f"invalid LoRAServing: {e}") from e
    for child in children:
        await kube.apply(child)
    await refresh_status(kube, sv.namespace, sv.name)


async def refresh_status(kube: Kube, ns: str, name: str) -> None:
    body = await kube.get("LoRAServing", ns, name)
    if body is None:
        return
    sv = LoRAServing.model_validate(body)
    dep, replicas = await observe(kube, sv)
    new = svstatus.serving_status(sv, dep, replicas)
    if dict(body.get("status") or {}) != {k: v for k, v in new.items() if v is not None}:
        await kube.patch("LoRAServing", ns, name, {"status": new}, sub="status")


# ------------------------------------------------------------------ the fine-tune link


async def link_finetune(kube: Kube, body: dict[str, Any]) -> Cond | None:
    """Serve a succeeded run's adapter as its spec.serving says; the Serving condition
    that follows (None: nothing to serve, or a spec the reconciler reports InvalidSpec for)."""
    try:
        ft = LoRAFineTune.model_validate(body)
    except ValidationError:
        return None
    a = adapter_of(ft)
    if a is None:
        return None
    assert ft.spec.serving is not None
    ref = ft.spec.serving.serving_ref
    out: Outcome
    if ref is None:
        out = plan_dedicated(ft, a)
        if out.status == "True":
            await kube.apply(dedicated_serving(ft, a))
        return out.condition()
    shared = await kube.get("LoRAServing", ft.namespace, ref)
    if shared is None:
        log.info("LoRAServing %s not found (for %s/%s)", ref, ft.namespace, ft.name)
        return serving_not_found(ft, ref).condition()
    out = plan_shared(ft, LoRAServing.model_validate(shared), a)
    if out.adapters is not None:
        await kube.patch(
            "LoRAServing",
            ft.namespace,
            ref,
            {
                "metadata": {"resourceVersion": shared["metadata"]["resourceVersion"]},
                "spec": {"adapters": out.adapters},
            },
        )
    return out.condition()


async def on_finetune_event(memo: Any, event_type: str | None, body: dict[str, Any]) -> None:
    """Any LoRAFineTune event: serve its adapter if due, and have the Reconciler write the
    Serving condition under the object's lock. An invalid spec serves nothing, quietly:
    the reconcile handler reports it (InvalidSpec)."""
    if event_type == "DELETED" or not hasattr(memo, "reconciler"):
        return
    meta = body.get("metadata") or {}

    async def decide(fresh: dict[str, Any]) -> Cond | None:
        return await link_finetune(memo.kube, fresh)

    try:
        await memo.reconciler.decide_condition(body, decide)
    except ApiError as e:
        # 409: the shared LoRAServing changed meanwhile; the fine-tune's next event retries.
        if e.status != 409:
            log.warning("serving link of %s/%s: %s", meta.get("namespace"), meta.get("name"), e)


# ------------------------------------------------------------------ registration


def register(cfg: Settings, registry: kopf.OperatorRegistry) -> None:
    """Register the serving handlers on `registry` (called from main.run)."""

    @kopf.on.resume(*SV, registry=registry, id="serving")
    @kopf.on.create(*SV, registry=registry, id="serving")
    @kopf.on.update(*SV, field="spec", registry=registry, id="serving")
    async def serving(**kw: Any) -> None:
        await reconcile_serving(kw["memo"].kube, dict(kw["body"]), cfg)

    @kopf.timer(*SV, interval=REPLICA_POLL_SECONDS, registry=registry, id="serving_replicas")
    async def serving_replicas(**kw: Any) -> None:
        """Adapter states and engine exits live in the pods: poll them (no event says)."""
        kube = getattr(kw["memo"], "kube", None)
        if kube is not None:
            try:
                await refresh_status(kube, kw["namespace"], kw["name"])
            except ApiError as e:
                log.warning("status of LoRAServing %s/%s: %s", kw["namespace"], kw["name"], e)

    @kopf.on.event(*DEPLOYMENTS, labels=SERVING_SELECTOR, registry=registry, id="serving_dep")
    async def serving_dep(**kw: Any) -> None:
        name = ((kw["body"].get("metadata") or {}).get("annotations") or {}).get(build.SERVING)
        kube = getattr(kw["memo"], "kube", None)
        if name and kube is not None:
            try:
                await refresh_status(kube, kw["namespace"], name)
            except ApiError as e:
                log.warning("status of LoRAServing %s/%s: %s", kw["namespace"], name, e)

    @kopf.on.event(*FT, registry=registry, id="serving_link")
    async def serving_link(**kw: Any) -> None:
        await on_finetune_event(kw["memo"], kw["type"], dict(kw["body"]))
