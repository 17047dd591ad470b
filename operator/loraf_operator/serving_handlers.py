"""kopf glue for LoRAServing, and the LoRAFineTune → LoRAServing link.

- LoRAServing create/update(spec)/resume → server-side apply of its ConfigMap,
  Deployment and Service (builders/serving.py; owner references make the garbage
  collector delete them with it), then its status.
- Deployment events (the serving ones) → the LoRAServing's status: Ready, url,
  readyReplicas, and per adapter its state.
- LoRAFineTune events → serving_link: a succeeded run with spec.serving creates/updates
  its LoRAServing or joins a shared one; the outcome is the fine-tune's Serving condition.

Per-adapter state is what the operator can see: Loading until a replica of the current
spec is ready, then Ready (the engines load every listed adapter before /health answers;
the transformers engine's /v1/adapters has the live per-replica view).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import kopf

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
from .kube import ApiError, Kube
from .serving_link import COND_SERVING, adapter_of, dedicated_serving, plan_shared
from .settings import Settings

log = logging.getLogger("loraf.serving")

SV = (GROUP, VERSION, SERVING_PLURAL)
FT = (GROUP, VERSION, FINETUNE_PLURAL)
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVING_SELECTOR = {"app.kubernetes.io/name": "loraf-serving"}
FIELD_MANAGER = "loraf-serving"
APPLY = "application/apply-patch+yaml"
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


def serving_status(
    sv: LoRAServing, dep: dict[str, Any] | None, missing: tuple[str, ...] = ()
) -> dict[str, Any]:
    """status of a LoRAServing from its Deployment (None: not created yet).

    `missing`: its other children ("Service <name>", ...) that do not exist (yet): Ready is
    True only when every child exists, and the url only once its Service does.
    """
    gen = int(sv.metadata.get("generation") or 0)
    ds = (dep or {}).get("status") or {}
    ready = int(ds.get("readyReplicas") or 0)
    updated = int(ds.get("updatedReplicas") or 0)
    current = dep is not None and ds.get("observedGeneration") == (dep.get("metadata") or {}).get(
        "generation"
    )
    if sv.spec.replicas == 0:
        cond = conds.Cond("Ready", "False", "ScaledToZero", "spec.replicas is 0")
    elif dep is None:
        cond = conds.Cond("Ready", "False", "Creating", "the Deployment is being created")
    elif missing:
        cond = conds.Cond("Ready", "False", "Creating", f"waiting for {', '.join(missing)}")
    elif ready > 0 and current and updated > 0:
        cond = conds.Cond("Ready", "True", "ReplicasReady", f"{ready}/{sv.spec.replicas} ready")
    else:
        cond = conds.Cond(
            "Ready",
            "False",
            "ReplicasNotReady",
            f"{ready}/{sv.spec.replicas} ready; waiting for the server's /health",
        )
    state = "Ready" if cond.status == "True" else "Loading"
    old = [c.to_dict() for c in sv.status.conditions]
    service_missing = any(m.startswith("Service ") for m in missing)
    return {
        "observedGeneration": gen,
        "conditions": conds.apply(old, [cond], gen),
        "url": None if service_missing else build.service_url(sv),
        "readyReplicas": ready,
        "adapters": [{"name": a.name, "uri": a.uri, "state": state} for a in sv.spec.adapters],
    }


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
    dep: dict[str, Any] | None = None
    for child in children:
        applied = await _apply(kube, child)
        if child["kind"] == "Deployment":
            dep = applied
    await _merge(
        kube,
        "LoRAServing",
        sv.namespace,
        sv.name,
        {"status": serving_status(sv, dep)},
        sub="status",
    )


async def refresh_status(kube: Kube, ns: str, name: str) -> None:
    body = await _get(kube, "LoRAServing", ns, name)
    if body is None:
        return
    sv = LoRAServing.model_validate(body)
    dep = await _get(kube, "Deployment", ns, build.deployment_name(name))
    missing = []
    for kind, child in (
        ("Service", build.service_name(name)),
        ("ConfigMap", build.config_map_name(name)),
    ):
        if await _get(kube, kind, ns, child) is None:
            missing.append(f"{kind} {child}")
    new = serving_status(sv, dep, tuple(missing))
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
