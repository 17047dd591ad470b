"""A LoRAServing's status, from its Deployment and what its pods say. Pure.

- `Ready` (reasons `ReplicasReady`, `ReplicasNotReady`, `Creating`, `ScaledToZero`,
  `EngineExited`): true only when every child exists and a replica of the current
  Deployment generation is ready; with none ready and a server container that exited,
  `EngineExited` carries its exit code and termination message (the log's tail:
  `FallbackToLogsOnError`).
- `adapters[]`: per listed adapter, the replicas' own reports (GET /v1/adapters on each
  ready pod): `Failed` (with the reason) if any replica refused it, `Ready` when every
  reporting replica serves it, otherwise `Loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import status as conds
from .api import conditions as why
from .api.conditions import COND_READY
from .api.models import AdapterStatus, LoRAServing, LoRAServingStatus
from .builders import serving as build

SERVER = "server"


@dataclass(frozen=True)
class Replicas:
    """What the serving's pods said."""

    reports: list[dict[str, Any]] = field(default_factory=list)  # /v1/adapters bodies
    engine_exit: str | None = None
    missing: tuple[str, ...] = ()  # other children ("Service <name>", …) not there (yet)


def pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )


def engine_exit(pods: list[dict[str, Any]]) -> str | None:
    """How the latest server container that failed ended, if one did."""
    seen: list[tuple[str, str]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != SERVER:
                continue
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                t = state.get("terminated")
                if t and int(t.get("exitCode") or 0) != 0:
                    msg = (t.get("message") or "").strip()
                    tail = msg.splitlines()[-1] if msg else t.get("reason") or "no message"
                    seen.append(
                        (
                            str(t.get("finishedAt") or ""),
                            f"the engine exited with code {t['exitCode']} in pod "
                            f"{pod['metadata']['name']}: {tail[:400]}",
                        )
                    )
    return max(seen)[1] if seen else None


def adapter_states(sv: LoRAServing, reports: list[dict[str, Any]]) -> list[AdapterStatus]:
    views = [{a.get("name"): a for a in r.get("adapters") or []} for r in reports]
    out = []
    for a in sv.spec.adapters:
        seen = [v[a.name] for v in views if a.name in v and v[a.name].get("uri") == a.uri]
        failed = next((x for x in seen if x.get("state") == "Failed"), None)
        if failed is not None:
            why_not = str(failed.get("reason") or "refused by the engine")[:500]
            entry = AdapterStatus(name=a.name, uri=a.uri, state="Failed", reason=why_not)
        elif views and len(seen) == len(views) and all(x.get("state") == "Ready" for x in seen):
            entry = AdapterStatus(name=a.name, uri=a.uri, state="Ready")
        else:
            entry = AdapterStatus(name=a.name, uri=a.uri, state="Loading")
        out.append(entry)
    return out


def serving_status(
    sv: LoRAServing, dep: dict[str, Any] | None, replicas: Replicas | None = None
) -> dict[str, Any]:
    """status of a LoRAServing (dep None: the Deployment is not created yet)."""
    replicas = replicas or Replicas()
    gen = int(sv.metadata.get("generation") or 0)
    ds = (dep or {}).get("status") or {}
    ready = int(ds.get("readyReplicas") or 0)
    updated = int(ds.get("updatedReplicas") or 0)
    current = dep is not None and ds.get("observedGeneration") == (dep.get("metadata") or {}).get(
        "generation"
    )
    if sv.spec.replicas == 0:
        cond = conds.Cond(COND_READY, "False", why.REASON_SCALED_TO_ZERO, "spec.replicas is 0")
    elif dep is None:
        cond = conds.Cond(
            COND_READY, "False", why.REASON_CREATING, "the Deployment is being created"
        )
    elif replicas.missing:
        waiting = ", ".join(replicas.missing)
        cond = conds.Cond(COND_READY, "False", why.REASON_CREATING, f"waiting for {waiting}")
    elif ready > 0 and current and updated > 0:
        cond = conds.Cond(
            COND_READY, "True", why.REASON_REPLICAS_READY, f"{ready}/{sv.spec.replicas} ready"
        )
    elif replicas.engine_exit:
        cond = conds.Cond(COND_READY, "False", why.REASON_ENGINE_EXITED, replicas.engine_exit)
    else:
        cond = conds.Cond(
            COND_READY,
            "False",
            why.REASON_REPLICAS_NOT_READY,
            f"{ready}/{sv.spec.replicas} ready; waiting for the server's /health",
        )
    old = [c.to_dict() for c in sv.status.conditions]
    states = adapter_states(sv, replicas.reports if cond.status == "True" else [])
    status = LoRAServingStatus.model_validate(
        {
            "observedGeneration": gen,
            "conditions": conds.apply(old, [cond], gen),
            # The url only once its Service exists.
            "url": None
            if any(m.startswith("Service ") for m in replicas.missing)
            else build.service_url(sv),
            "readyReplicas": ready,
            "adapters": states,
            "adapterSummary": adapter_summary(states),
        },
        extra="forbid",
    )
    return status.to_patch()


def adapter_summary(states: list[AdapterStatus]) -> str | None:
    """ "a, b, c (Failed)": every name, and the state of those not Ready."""
    if not states:
        return None
    return ", ".join(a.name if a.state == "Ready" else f"{a.name} ({a.state})" for a in states)
