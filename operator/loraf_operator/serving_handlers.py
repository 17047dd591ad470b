"""kopf glue for LoRAServing, and the LoRAFineTune → LoRAServing link.

- LoRAServing create/update(spec)/resume → server-side apply of its ConfigMap,
  Deployment and Service (builders/serving.py; owner references make the garbage
  collector delete them with it), then its status.
- Deployment events (the serving ones), and a timer every REPLICA_POLL_SECONDS → the
  LoRAServing's status (serving_status.py): Ready, url, readyReplicas, engine exits, and
  per adapter its state as the ready replicas report it (GET /v1/adapters on each pod).
- LoRAFineTune events → serving_link: a succeeded run with spec.serving creates/updates
  its LoRAServing or joins a shared one; the outcome is the fine-tune's Serving condition.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from . import serving_status as svstatus
from . import status as conds
from .api.models import (
    API_VERSION,
    FINETUNE_PLURAL,
    GROUP,
    SERVING_PLURAL,
    VERSION,
    LoRAFineTune,
    LoRAServing,
)
from .builders import serving as build
from .builders.naming import serving_config_map_name
from .kube import ApiError, Kube
from .serving_link import (
    COND_SERVING,
    adapter_of,
    dedicated_serving,
    plan_shared,
    vllm_unsupported,
)
from .settings import Settings

log = logging.getLogger("loraf.serving")

SV = (GROUP, VERSION, SERVING_PLURAL)
FT = (GROUP, VERSION, FINETUNE_PLURAL)
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVING_SELECTOR = {"app.kubernetes.io/name": "loraf-serving"}
FIELD_MANAGER = "loraf-serving"
APPLY = "application/apply-patch+yaml"
#: How often each LoRAServing's replicas are asked for their adapters' states.
REPLICA_POLL_SECONDS = 10.0
REPLICA_HTTP_TIMEOUT = 3.0
MERGE = "application/merge-patch+json"

_API = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "LoRAServing": (f"/apis/{API_VERSION}", SERVING_PLURAL),
    "LoRAFineTune": (f"/apis/{API_VERSION}", FINETUNE_PLURAL),
}


def _path(kind: str, ns: str, name: str | None = None, sub: str | None = None) -> str:
    api, plural = _API[kind]
    p = f"{api}/namespaces/{quote(ns)}/{plural}"
    return p + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")


async def _get(kube: Kube, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return await kube.request("GET", _path(kind, ns, name))
    except ApiError as e:
        if e.status == 404:
            return None
        raise


async def _apply(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply with a fixed field manager: idempotent, no read-modify-write."""
    m = obj["metadata"]
    return await kube.request(
        "PATCH",
        _path(obj["kind"], m["namespace"], m["name"]),
        obj,
        query={"fieldManager": FIELD_MANAGER, "force": "true"},
        content_type=APPLY,
    )


async def _merge(
    kube: Kube, kind: str, ns: str, name: str, patch: Any, sub: str | None = None
) -> None:
    await kube.request(
        "PATCH", _path(kind, ns, name, sub), patch,
        query={"fieldManager": FIELD_MANAGER}, content_type=MERGE,
    )  # fmt: skip


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
    dep = await _get(kube, "Deployment", sv.namespace, build.deployment_name(sv.name))
    missing = []
    for kind, child in (
        ("Service", build.service_name(sv.name)),
        ("ConfigMap", serving_config_map_name(sv.name)),
    ):
        if await _get(kube, kind, sv.namespace, child) is None:
            missing.append(f"{kind} {child}")
    selector = ",".join(f"{k}={v}" for k, v in build.selector(sv).items())
    pods = (
        await kube.request(
            "GET", f"/api/v1/namespaces/{quote(sv.namespace)}/pods",
            query={"labelSelector": selector},
        )
    ).get("items", [])  # fmt: skip
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
        await _apply(kube, child)
    await refresh_status(kube, sv.namespace, sv.name)


async def refresh_status(kube: Kube, ns: str, name: str) -> None:
    body = await _get(kube, "LoRAServing", ns, name)
    if body is None:
        return
    sv = LoRAServing.model_validate(body)
    dep, replicas = await observe(kube, sv)
    new = svstatus.serving_status(sv, dep, replicas)
    if dict(body.get("status") or {}) != {k: v for k, v in new.items() if v is not None}:
        await _merge(kube, "LoRAServing", ns, name, {"status": new}, sub="status")


# ------------------------------------------------------------------ the fine-tune link


async def _set_serving_condition(
    kube: Kube, body: dict[str, Any], status: str, reason: str, message: str
) -> None:
    meta = body["metadata"]
    old = (body.get("status") or {}).get("conditions") or []
    cur = conds.get(old, COND_SERVING)
    if cur and (cur.get("status"), cur.get("reason"), cur.get("message")) == (
        status,
        reason,
        message,
    ):
        return
    gen = int(meta.get("generation") or 0)
    new = conds.apply(old, [conds.Cond(COND_SERVING, status, reason, message)], gen)  # type: ignore[arg-type]
    # resourceVersion: the conditions list is replaced whole, so never over a newer copy
    # (a 409 makes kopf retry with the fresh object).
    await _merge(
        kube,
        "LoRAFineTune",
        meta["namespace"],
        meta["name"],
        {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": {"conditions": new}},
        sub="status",
    )


async def link_finetune(kube: Kube, body: dict[str, Any]) -> None:
    ft = LoRAFineTune.model_validate(body)
    a = adapter_of(ft)
    if a is None:
        return
    assert ft.spec.serving is not None
    ref = ft.spec.serving.serving_ref
    if ref is None and ft.spec.serving.engine == "vllm" and (why := vllm_unsupported(ft.spec.lora)):
        # The apiserver refuses this shape at apply (CEL); kept for objects older than it.
        await _set_serving_condition(kube, body, "False", "AdapterUnsupported", why)
        return
    if ref is None:
        await _apply(kube, dedicated_serving(ft, a))
        await _set_serving_condition(
            kube,
            body,
            "True",
            "AdapterAdded",
            f"adapter {a.name} ({a.uri}) is in LoRAServing {ft.name}",
        )
        return
    shared = await _get(kube, "LoRAServing", ft.namespace, ref)
    if shared is None:
        await _set_serving_condition(
            kube,
            body,
            "False",
            "ServingNotFound",
            f"LoRAServing {ref} does not exist in {ft.namespace}",
        )
        raise kopf.TemporaryError(f"LoRAServing {ref} not found", delay=30)
    out = plan_shared(ft, LoRAServing.model_validate(shared), a)
    if out.adapters is not None:
        await _merge(
            kube,
            "LoRAServing",
            ft.namespace,
            ref,
            {
                "metadata": {"resourceVersion": shared["metadata"]["resourceVersion"]},
                "spec": {"adapters": out.adapters},
            },
        )
    await _set_serving_condition(kube, body, out.status, out.reason, out.message)


# ------------------------------------------------------------------ registration


def register(cfg: Settings, registry: kopf.OperatorRegistry) -> None:
    """Register the serving handlers on `registry` (called from main.run)."""

    @kopf.on.startup(registry=registry, id="serving_startup")
    async def startup(**kw: Any) -> None:
        kw["memo"].serving_kube = await Kube.connect()

    @kopf.on.cleanup(registry=registry, id="serving_cleanup")
    async def cleanup(**kw: Any) -> None:
        kube = getattr(kw["memo"], "serving_kube", None)
        if kube is not None:
            await kube.close()

    @kopf.on.resume(*SV, registry=registry, id="serving")
    @kopf.on.create(*SV, registry=registry, id="serving")
    @kopf.on.update(*SV, field="spec", registry=registry, id="serving")
    async def serving(**kw: Any) -> None:
        await reconcile_serving(kw["memo"].serving_kube, dict(kw["body"]), cfg)

    @kopf.timer(*SV, interval=REPLICA_POLL_SECONDS, registry=registry, id="serving_replicas")
    async def serving_replicas(**kw: Any) -> None:
        """Adapter states and engine exits live in the pods: poll them (no event says)."""
        kube = getattr(kw["memo"], "serving_kube", None)
        if kube is not None:
            try:
                await refresh_status(kube, kw["namespace"], kw["name"])
            except ApiError as e:
                log.warning("status of LoRAServing %s/%s: %s", kw["namespace"], kw["name"], e)

    @kopf.on.event(*DEPLOYMENTS, labels=SERVING_SELECTOR, registry=registry, id="serving_dep")
    async def serving_dep(**kw: Any) -> None:
        name = ((kw["body"].get("metadata") or {}).get("annotations") or {}).get(build.SERVING)
        kube = getattr(kw["memo"], "serving_kube", None)
        if name and kube is not None:
            try:
                await refresh_status(kube, kw["namespace"], name)
            except ApiError as e:
                log.warning("status of LoRAServing %s/%s: %s", kw["namespace"], name, e)

    @kopf.on.event(*FT, registry=registry, id="serving_link")
    async def serving_link(**kw: Any) -> None:
        kube = getattr(kw["memo"], "serving_kube", None)
        if kw["type"] == "DELETED" or kube is None:
            return
        try:
            await link_finetune(kube, dict(kw["body"]))
        except ApiError as e:
            if e.status != 409:  # 409: a newer copy is on its way as the next event
                log.warning("serving link of %s/%s: %s", kw["namespace"], kw["name"], e)
        except kopf.TemporaryError as e:
            log.info("%s", e)
