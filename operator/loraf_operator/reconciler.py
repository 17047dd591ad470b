"""The operator's actions: start/stop runs, create children, keep the status true.

All writes to a LoRAFineTune's status go through `Reconciler` under a per-object lock, so
the CR handler and the Job/Pod watchers never interleave their read-modify-write of the
conditions. Reads come from kopf's in-memory indexes (fed by watches) plus the last status
patch response, so following a run costs no GETs: only patches when something changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf
from pydantic import ValidationError

from . import metrics
from .api.models import COND_FAILED, LoRAFineTune
from .builders import build_run, child_name, config_map_name, run_spec_hash
from .builders.labels import QUEUE_NAME, SPEC_HASH
from .kube import ApiError, Kube
from .run_tracking import job_deleted, observe
from .runs import (
    Plan,
    append_history,
    finished,
    gpu_hours,
    history_entry,
    invalid_conditions,
    plan,
    result_for_run,
    run_of,
    start_conditions,
)
from .settings import Settings
from .status import COND_SCHEDULED, apply, is_warning, now_iso, summary, transitions

Obj = dict[str, Any]
Key = tuple[str, str]
Index = Mapping[Any, Iterable[Any]]

# Child kinds in deletion order (the Job first: it is what consumes GPUs).
_CHILD_KINDS = ("Job", "RoleBinding", "Role", "ServiceAccount", "ConfigMap")
log = logging.getLogger(__name__)


def _first(index: Index | None, key: Any) -> Obj | None:
    if index is None:
        return None
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _rv(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


def _owned_by(obj: Obj, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _ref(body: Obj) -> kopf.Body:
    """What kopf.event needs to address an Event to the LoRAFineTune."""
    return kopf.Body(cast(kopf.RawBody, body))


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(parts) + more


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._latest: dict[Key, Obj] = {}  # last status-patch response per object

    # -- state ------------------------------------------------------------------------------

    def freshest(self, key: Key, body: Obj | None) -> Obj | None:
        """The newer of `body` (from a watch) and our own last patch response."""
        mine = self._latest.get(key)
        if body is None:
            return None  # deleted: our cached copy is no evidence it exists
        if mine is not None and mine["metadata"].get("uid") == body["metadata"].get("uid"):
            return mine if _rv(mine) > _rv(body) else body
        return body

    def forget(self, key: Key) -> None:
        self._latest.pop(key, None)
        self._locks.pop(key, None)
        metrics.set_phase("/".join(key), None)

    async def _patch_status(self, body: Obj, patch: Obj) -> Obj:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        resp = await self.kube.patch(
            "LoRAFineTune", key[0], key[1], {"status": patch}, sub="status"
        )
        self._latest[key] = resp
        metrics.set_phase("/".join(key), (resp.get("status") or {}).get("phase"))
        return resp

    def _emit(self, body: Obj, old: list[Obj], new: list[Obj]) -> None:
        changed = transitions(old, new)
        failed_now = any(c["type"] == COND_FAILED and c["status"] == "True" for c in changed)
        for c in changed:
            if c["status"] != "True" and not is_warning(c):
                continue  # "not yet"/"no longer" conditions are not news
            if not c.get("message"):
                continue  # a companion of another transition (Succeeded=False, ...)
            if failed_now and c["type"] != COND_FAILED:
                continue  # a failure is one Warning: the Failed condition says it all
            kind = "Warning" if is_warning(c) else "Normal"
            msg = f"{c['type']}={c['status']}" + (f": {c['message']}" if c.get("message") else "")
            kopf.event(_ref(body), type=kind, reason=c["reason"] or c["type"], message=msg[:1024])

    # -- reconcile (create / update / resume) --------------------------------------------------

    async def reconcile(self, body: Obj, jobs: Index | None, logger: logging.Logger | Any) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self._locks[key]:
            fresh = self.freshest(key, body) or body
            try:
                ft = LoRAFineTune.model_validate(fresh)
            except ValidationError as e:
                msg = _validation_message(e)
                await self._invalid(fresh, msg)
                raise kopf.PermanentError(f"InvalidSpec: {msg}") from e
            status = fresh.get("status") or {}
            gen = int(meta.get("generation") or 0)
            run = run_of(status)
            run_hash = None
            if run.get("number") and int(run.get("generation") or 0) != gen:
                run_hash = await self._run_hash(ft, int(run["number"]), jobs)
            p = plan(status, gen, run_spec_hash(ft.spec), run_hash)
            logger.debug("plan %s", p)
            if p.action == "start":
                await self._start(ft, fresh, p, jobs)
            elif p.action == "ensure":
                try:
                    await self._ensure_children(ft, p.run, jobs)
                except ApiError as e:
                    if not e.refused:
                        raise
                    await self._refused(ft, fresh, p.run, e, {})
                    return
                await self._observed(fresh, gen)
            elif p.action == "sync":
                await self._sync_suspend(ft, p.run, jobs)
                await self._observed(fresh, gen, run_generation=True)
            else:
                await self._observed(fresh, gen, run_generation=True)

    async def _observed(self, body: Obj, gen: int, run_generation: bool = False) -> None:
        status = body.get("status") or {}
        patch: Obj = {}
        if status.get("observedGeneration") != gen:
            patch["observedGeneration"] = gen
        if run_generation and run_of(status).get("generation") != gen:
            patch["run"] = {"generation": gen}
        if patch:
            await self._patch_status(body, patch)

    async def _run_hash(self, ft: LoRAFineTune, run: int, jobs: Index | None) -> str | None:
        """The spec hash run `run` was built from (Job, else its ConfigMap)."""
        job = _first(jobs, (ft.namespace, child_name(ft.name, run)))
        if job is None:
            job = await self.kube.get("Job", ft.namespace, child_name(ft.name, run))
        if job is None:
            job = await self.kube.get("ConfigMap", ft.namespace, config_map_name(ft.name, run))
        if job is None:
            return None
        return ((job.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH)

    async def _ensure_children(self, ft: LoRAFineTune, run: int, jobs: Index | None) -> None:
        """Create run `run`'s children that are missing; adopt ours, refuse strangers'."""
        uid = str(ft.metadata.get("uid"))
        job = _first(jobs, (ft.namespace, child_name(ft.name, run)))
        if job is not None and _owned_by(job, uid):
            return  # the Job is created last: everything before it exists
        sa, role, binding, cm, job_obj = build_run(ft, run, self.settings.build_defaults)
        # In parallel where allowed: the RoleBinding needs its Role (the apiserver checks we
        # hold what it grants by reading the Role), and the Job goes last: it marks the
        # run's children complete.
        await asyncio.gather(*(self._create_owned(obj, uid) for obj in (sa, role, cm)))
        await self._create_owned(binding, uid)
        if await self._create_owned(job_obj, uid):
            metrics.RUNS_STARTED.inc()

    async def _create_owned(self, obj: Obj, uid: str) -> bool:
        """Create `obj`; True if created, False if ours already existed."""
        try:
            await self.kube.create(obj)
            return True
        except ApiError as e:
            if e.refused:
                e.refused_kind = f"{obj['kind']} {obj['metadata']['name']}"
            if e.status != 409:
                raise
            meta = obj["metadata"]
            existing = await self.kube.get(obj["kind"], meta["namespace"], meta["name"])
            if existing is not None and not _owned_by(existing, uid):
                # E.g. left over from a deleted LoRAFineTune of the same name, pending GC.
                raise kopf.TemporaryError(
                    f"{obj['kind']} {meta['name']} exists but is not owned by this "
                    "LoRAFineTune; waiting for it to go",
                    delay=3,
                ) from e
            return False

    async def _stop_run(self, ft: LoRAFineTune, run: int) -> Obj | None:
        """Delete run `run`'s children (its pods go with the Job). Returns the Job seen."""
        job = await self.kube.get("Job", ft.namespace, child_name(ft.name, run))
        for kind in _CHILD_KINDS:
            name = (
                config_map_name(ft.name, run) if kind == "ConfigMap" else child_name(ft.name, run)
            )
            await self.kube.delete(kind, ft.namespace, name, propagation="Background")
        return job

    async def _start(self, ft: LoRAFineTune, body: Obj, p: Plan, jobs: Index | None) -> None:
        status = body.get("status") or {}
        now = now_iso()
        patch: Obj = {}
        if p.stop is not None:
            old_job = await self._stop_run(ft, p.stop)
            patch["history"] = append_history(status, history_entry(status, now))
            used = (
                gpu_hours(old_job, ft.spec.resources.gpus, now)
                if not finished(status.get("conditions") or [])
                else 0.0
            )
            if used:
                patch["gpuHours"] = round(float(status.get("gpuHours") or 0) + used, 4)
            msg = f"spec changed: stopped run {p.stop}"
            kopf.event(_ref(body), type="Normal", reason="RunStopped", message=msg)
        if status.get("progress") is not None:
            # The one write of status.progress by the operator: a new run starts with none,
            # so run 2 never shows run 1's 100 %, loss and ETA while it waits. The old run's
            # trainer can no longer write it back: its Role went with its children above.
            patch["progress"] = None
        try:
            await self._ensure_children(ft, p.run, jobs)
        except ApiError as e:
            if not e.refused:
                raise
            await self._refused(ft, body, p.run, e, patch)
            return
        gen = int(ft.metadata.get("generation") or 0)
        old_conds = [c for c in status.get("conditions") or [] if c.get("type") != COND_SCHEDULED]
        conds = apply(old_conds, start_conditions(ft.spec.suspend), gen, now)
        phase, message = summary(conds)
        patch.update(
            observedGeneration=gen,
            model=ft.spec.base_model.display_name,
            conditions=conds,
            phase=phase,
            message=message,
            run={
                "number": p.run,
                "generation": gen,
                "jobName": child_name(ft.name, p.run),
                "startTime": now,
                "completionTime": None,
            },
        )
        await self._patch_status(body, patch)
        kopf.event(
            _ref(body),
            type="Normal",
            reason="RunStarted",
            message=f"started run {p.run}: Job {child_name(ft.name, p.run)}",
        )

    async def _refused(
        self, ft: LoRAFineTune, body: Obj, run: int, err: ApiError, patch: Obj
    ) -> None:
        """The apiserver refused one of run `run`'s children (e.g. a 422 for its pod
        template): the run ends Failed/InvalidSpec with the apiserver's message, and the
        children already created are deleted, so nothing is left behind or retried."""
        await self._stop_run(ft, run)
        status = body.get("status") or {}
        gen = int(ft.metadata.get("generation") or 0)
        now = now_iso()
        message = f"Kubernetes refused the run's {err.refused_kind or 'object'}: {err.message}"
        old = [c for c in status.get("conditions") or [] if c.get("type") != COND_SCHEDULED]
        conds = apply(old, invalid_conditions(message), gen, now)
        phase, summary_msg = summary(conds)
        patch = {
            **patch,
            "observedGeneration": gen,
            "model": ft.spec.base_model.display_name,
            "conditions": conds,
            "phase": phase,
            "message": summary_msg,
            # The run number stays taken (its plan is "none" from now on: no retry loop);
            # there is no Job to follow.
            "run": {
                "number": run,
                "generation": gen,
                "jobName": None,
                "startTime": now,
                "completionTime": now,
            },
        }
        await self._patch_status(body, patch)
        self._emit(body, list(status.get("conditions") or []), conds)

    async def _sync_suspend(self, ft: LoRAFineTune, run: int, jobs: Index | None) -> None:
        """Only suspend/serving changed: let the same Job follow spec.suspend."""
        name = child_name(ft.name, run)
        job = _first(jobs, (ft.namespace, name)) or await self.kube.get("Job", ft.namespace, name)
        if job is None:
            await self._ensure_children(ft, run, jobs)
            return
        current = bool((job.get("spec") or {}).get("suspend"))
        if current == ft.spec.suspend:
            return
        if not ft.spec.suspend and (job.get("metadata") or {}).get("labels", {}).get(QUEUE_NAME):
            return  # Kueue decides when a queued Job runs; only pausing is ours to pass on
        await self.kube.patch("Job", ft.namespace, name, {"spec": {"suspend": ft.spec.suspend}})

    async def _invalid(self, body: Obj, message: str) -> None:
        """Failed/InvalidSpec, no Job. A running run of an older spec is stopped."""
        meta = body["metadata"]
        status = body.get("status") or {}
        gen = int(meta.get("generation") or 0)
        now = now_iso()
        patch: Obj = {}
        run = run_of(status)
        if run.get("number") and not finished(status.get("conditions") or []):
            for kind in _CHILD_KINDS:
                number = int(run["number"])
                name = (
                    config_map_name(meta["name"], number)
                    if kind == "ConfigMap"
                    else child_name(meta["name"], number)
                )
                await self.kube.delete(kind, meta["namespace"], name)
            patch["history"] = append_history(status, history_entry(status, now, "InvalidSpec"))
        if run.get("number"):
            patch["run"] = None
            if "history" not in patch:
                patch["history"] = append_history(status, history_entry(status, now))
        old = list(status.get("conditions") or [])
        conds = apply(old, invalid_conditions(message), gen, now)
        phase, msg = summary(conds)
        patch.update(observedGeneration=gen, conditions=conds, phase=phase, message=msg)
        await self._patch_status(body, patch)
        self._emit(body, old, conds)

    # -- follow the run (Job/Pod events, timer) ------------------------------------------------

    async def sync(
        self,
        namespace: str,
        name: str,
        finetunes: Index | None,
        jobs: Index | None,
        pods: Index | None,
        deleted_job: str | None = None,
    ) -> None:
        """Recompute the current run's conditions; `deleted_job`: a Job that just went away."""
        key = (namespace, name)
        async with self._locks[key]:
            body = self.freshest(key, _first(finetunes, key))
            if body is None:
                return
            status = body.get("status") or {}
            run = run_of(status)
            conds = list(status.get("conditions") or [])
            if not run.get("number") or not run.get("jobName") or finished(conds):
                return
            job_name = str(run["jobName"])
            job = _first(jobs, (namespace, job_name))
            run_pods = list((pods or {}).get((namespace, job_name)) or [])
            gen = int(status.get("observedGeneration") or body["metadata"].get("generation") or 0)
            now = now_iso()
            updates = observe(job, run_pods, conds)
            if job is None and deleted_job == job_name:
                # Deleted before it finished (by hand, or by a controller): the run is over.
                updates = job_deleted(job_name)
            new = apply(conds, updates, gen, now)
            phase, message = summary(new)
            if new == conds and phase == status.get("phase") and message == status.get("message"):
                return
            patch: Obj = {"conditions": new, "phase": phase, "message": message}
            if finished(new):
                patch.update(self._finish(body, job, new, now))
            try:
                await self._patch_status(body, patch)
            except ApiError as e:
                if e.status != 404:
                    raise
                # Deleted meanwhile (a pod event can outlive its LoRAFineTune): nothing to
                # report, and not an error worth a traceback.
                log.debug("%s/%s is gone; its run's events are ignored", namespace, name)
                self._latest.pop(key, None)
                return
            self._emit(body, conds, new)

    def _finish(self, body: Obj, job: Obj | None, conds: list[Obj], now: str) -> Obj:
        status = body.get("status") or {}
        run = run_of(status)
        out: Obj = {
            "run": {
                "completionTime": ((job or {}).get("status") or {}).get("completionTime") or now
            }
        }
        gpus = int(((body.get("spec") or {}).get("resources") or {}).get("gpus", 1))
        used = gpu_hours(job, gpus, now)
        if used:
            out["gpuHours"] = round(float(status.get("gpuHours") or 0) + used, 4)
        if phase_succeeded(conds):
            got = result_for_run(status, int(run.get("number") or 0))
            if got is not None:
                out["artifacts"], out["evaluation"] = got
        return out


def phase_succeeded(conds: list[Obj]) -> bool:
    return summary(conds)[0] == "Succeeded"
