"""The operator's one Kubernetes REST client: dict manifests in, dicts out.

Every kind the operator reads or writes (LoRAFineTune, LoRAServing, run children, serving
Deployments, peering objects) goes through `Kube`: one connection pool, one field manager
(`FIELD_MANAGER`) for creates, merge patches and server-side applies alike.

Built on `kubernetes.aio` for authentication (kubeconfig, in-cluster token, exec plugins)
and connection pooling, but sends and returns plain JSON: the builders produce wire-format
dicts, and round-tripping them through generated model classes would cost CPU and could
drop fields the client does not know.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes.aio import config as kconfig
from kubernetes.aio.client import ApiClient, Configuration

from .api.models import FINETUNE_PLURAL, GROUP, SERVING_PLURAL, VERSION

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
#: The operator's one field manager. Before issue 18 the serving objects were applied as
#: "loraf-serving": a forced apply moves those fields over, so that entry just goes stale.
FIELD_MANAGER = "loraf-operator"


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        self.refused_kind = ""  # "<Kind> <name>" of the object refused, when known
        try:
            self.reason = str(json.loads(body).get("reason", ""))
            self.message = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError):
            self.reason, self.message = "", body
        super().__init__(f"{method} {path}: {status} {self.message}")

    @property
    def refused(self) -> bool:
        """The apiserver refused the object itself: retrying the same request cannot help.

        400 (malformed) and 422 (invalid, e.g. a pod template Kubernetes rejects) always; 403
        when an admission check denied it, but not for RBAC (the operator's own permissions,
        fixed by an admin) or a ResourceQuota (frees up when other work ends).
        """
        if self.status in (400, 422):
            return True
        if self.status == 403:
            rbac = " cannot " in self.message and "resource" in self.message
            return not rbac and "exceeded quota" not in self.message
        return False


@dataclass(frozen=True)
class Kind:
    api: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str


KINDS: dict[str, Kind] = {
    "ServiceAccount": Kind("/api/v1", "serviceaccounts"),
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "Service": Kind("/api/v1", "services"),
    "Pod": Kind("/api/v1", "pods"),
    "Secret": Kind("/api/v1", "secrets"),
    "Event": Kind("/api/v1", "events"),
    "Role": Kind("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": Kind("/apis/batch/v1", "jobs"),
    "Deployment": Kind("/apis/apps/v1", "deployments"),
    "LoRAFineTune": Kind(f"/apis/{GROUP}/{VERSION}", FINETUNE_PLURAL),
    "LoRAServing": Kind(f"/apis/{GROUP}/{VERSION}", SERVING_PLURAL),
    "KopfPeering": Kind("/apis/kopf.dev/v1", "kopfpeerings"),
    "ClusterKopfPeering": Kind("/apis/kopf.dev/v1", "clusterkopfpeerings"),
}


def path_of(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    k = KINDS[kind]
    # namespace "": a cluster-scoped kind (ClusterKopfPeering).
    p = f"{k.api}/namespaces/{quote(namespace)}/{k.plural}" if namespace else f"{k.api}/{k.plural}"
    if name:
        p += f"/{quote(name)}"
    if sub:
        p += f"/{sub}"
    return p


class Kube:
    """One pooled connection to the apiserver, shared by all handlers."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    @classmethod
    async def connect(cls) -> Kube:
        cfg = Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            kconfig.load_incluster_config(client_configuration=cfg)
        else:
            # Read KUBECONFIG now (the client library reads it once, at import time).
            path = os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
            await kconfig.load_kube_config(os.path.expanduser(path), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        return cls(ApiClient(cfg))

    async def close(self) -> None:
        await self._client.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        if query:
            path = f"{path}?{urlencode(query)}"
        m, url, headers, data, _ = await self._client.param_serialize(
            method,
            path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = await self._client.call_api(m, url, header_params=headers, body=data)
        raw = await resp.read()
        if resp.status >= 300:
            raise ApiError(resp.status, raw.decode(errors="replace"), method, path)
        return json.loads(raw) if raw else {}

    # -- verbs ------------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return await self.request("GET", path_of(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str, *, labels: str = "", fields: str = ""
    ) -> list[Obj]:
        """The items of a namespaced list (one page: callers select narrowly)."""
        query = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        got = await self.request("GET", path_of(kind, namespace), query=query or None)
        return list(got.get("items") or [])

    async def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return await self.request(
            "POST",
            path_of(obj["kind"], meta["namespace"]),
            obj,
            query={"fieldManager": FIELD_MANAGER},
        )

    async def delete(
        self, kind: str, namespace: str, name: str, propagation: str = "Background"
    ) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.request(
                "DELETE",
                path_of(kind, namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    async def patch(
        self, kind: str, namespace: str, name: str, patch: Obj, sub: str | None = None
    ) -> Obj:
        return await self.request(
            "PATCH",
            path_of(kind, namespace, name, sub),
            patch,
            query={"fieldManager": FIELD_MANAGER},
            content_type=MERGE_PATCH,
        )

    async def apply(self, obj: Obj) -> Obj:
        """Server-side apply, forced: idempotent, no read-modify-write (the serving objects)."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH",
            path_of(obj["kind"], meta["namespace"], meta["name"]),
            obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type=APPLY_PATCH,
        )
