"""The operator's actions: start/stop runs, create children, keep the status true.

All writes to a LoRAFineTune's status go through `Reconciler` under a per-object lock, so
the CR handler, the Job/Pod watchers and the serving link (`decide_condition`) never
interleave their read-modify-write of the conditions. Reads come from kopf's in-memory
indexes (fed by watches) plus the last status patch response, so following a run costs no
GETs: only patches when something changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from pydantic import ValidationError

from . import metrics, start_from
from .api import conditions as why
from .api.conditions import COND_FAILED, COND_SCHEDULED
from .api.models import GROUP, VERSION, LoRAFineTune, LoRAFineTuneStatus
from .artifact_check import Verdict, verify_run
from .builders import (
    RUN_CHILD_KINDS,
    build_run,
    child_name,
    config_map_name,
    run_child_name,
    run_spec_hash,
)
from .builders.labels import JOB_NAME, QUEUE_NAME, SPEC_HASH
from .kube import ApiError, Kube
from .peering import standby
from .run_tracking import (
    artifacts_invalid,
    creation_refused,
    job_completed,
    job_deleted,
    job_finished,
    observe,
    verifying_artifacts,
)
from .runs import (
    Plan,
    append_history,
    finished,
    gpu_hours,
    history_entry,
    invalid_conditions,
    plan,
    run_of,
    start_conditions,
    trusted_run,
    wait_conditions,
    waits,
)
from .settings import Settings
from .status import Cond, apply, is_warning, now_iso, summary, transitions
from .status import get as get_condition

Obj = dict[str, Any]
Key = tuple[str, str]
Index = Mapping[Any, Iterable[Any]]

log = logging.getLogger(__name__)


# Status writes are retried this often (seconds between attempts) on errors that a moment
# can fix (RBAC being restored, apiserver overload, a dropped connection); what is still
# failing after that is repaired by the periodic resync.
_PATCH_RETRY_DELAYS = (0.5, 1.0, 2.0)
# A status patch that would change only condition messages waits until this long after the
# object's previous patch (issue 16: a waiting message re-patched about once a second).
MESSAGE_THROTTLE_SECONDS = 5.0


def message_only_change(old: list[Obj], new: list[Obj]) -> bool:
    """Whether `new` differs from `old` only in condition messages (same types, statuses,
    reasons): nothing a client waits for (`kubectl wait`, Argo CD) changed."""

    def shape(conds: list[Obj]) -> list[tuple[Any, ...]]:
        keys = ("type", "status", "reason", "observedGeneration")
        return [tuple(c.get(k) for k in keys) for c in conds]

    return old != new and shape(old) == shape(new)


def _transient(err: Exception) -> bool:
    if isinstance(err, ApiError):
        return err.status in (403, 409, 429) or err.status >= 500
    return isinstance(err, aiohttp.ClientError | asyncio.TimeoutError | OSError)


class RunWaiting(Exception):
    """Something the spec references is not there yet (runs.WAIT_REASONS): no Job yet."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _job(jobs: Index | None, namespace: str, job_name: str, owner: str) -> Obj | None:
    """Job `job_name` from the run-Jobs index (keyed by namespace and owning resource)."""
    for job in (jobs or {}).get((namespace, owner)) or ():
        if (job.get("metadata") or {}).get("name") == job_name:
            return cast(Obj, job)
    return None


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
        self._synced_at: dict[Key, float] = {}  # monotonic time of the last good sync
        self._tasks: set[asyncio.Task[None]] = set()  # Events posted, deferred syncs
        self._patched_at: dict[Key, float] = {}  # monotonic time of the last status patch
        self._pending: set[Key] = set()  # keys with a deferred (throttled) sync
        # The run-Jobs index (set at startup): run bookkeeping comes from the Jobs we own.
        self.jobs: Index | None = None
        # (key, uid, run) -> a final verdict on the run's upload (not re-read per event)
        self._verdicts: dict[tuple[Key, str, int], Verdict] = {}
        self._on_standby = False  # kopf peering has paused this replica (the resync too)

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
        self._synced_at.pop(key, None)
        self._patched_at.pop(key, None)
        self._verdicts = {k: v for k, v in self._verdicts.items() if k[0] != key}
        metrics.set_phase("/".join(key), None)

    async def _patch_status(self, body: Obj, patch: Obj) -> Obj:
        # a misspelled key fails here; the structural schema would prune it without a word
        patch = LoRAFineTuneStatus.patch_of(patch)
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        for delay in (*_PATCH_RETRY_DELAYS, None):
            try:
                resp = await self.kube.patch(
                    "LoRAFineTune", key[0], key[1], {"status": patch}, sub="status"
                )
                break
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as e:
                if delay is None or not _transient(e):
                    raise
                log.info("status patch of %s/%s failed (%s); retrying", key[0], key[1], e)
                await asyncio.sleep(delay)
        self._latest[key] = resp
        self._synced_at[key] = self._patched_at[key] = time.monotonic()
        metrics.set_phase("/".join(key), (resp.get("status") or {}).get("phase"))
        return resp

    def _event(self, body: Obj, *, type: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the LoRAFineTune: kopf's poster inside kopf's handlers;
        from the resync task (outside them) posted through our own client."""
        try:
            kopf.event(_ref(body), type=type, reason=reason, message=message)
            return
        except LookupError:
            pass  # no kopf event queue in this task's context
        task = asyncio.create_task(self._post_event(body, type, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_event(self, body: Obj, type_: str, reason_: str, message: str) -> None:
        meta = body["metadata"]
        now = now_iso()
        event: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion") or f"{GROUP}/{VERSION}",
                "kind": "LoRAFineTune",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason_,
            "message": message[:1024],
            "source": {"component": "loraf-operator"},
            "reportingComponent": "loraf-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(event)
        except Exception as e:  # an Event is news, never worth failing a sync for
            log.warning("could not post event %s on %s/%s: %s", reason_, *self._key(body), e)

    @staticmethod
    def _key(body: Obj) -> Key:
        return (body["metadata"]["namespace"], body["metadata"]["name"])

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
            self._event(body, type=kind, reason=c["reason"] or c["type"], message=msg[:1024])

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
            fresh = await self._trusted(fresh, jobs)
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
                except RunWaiting as e:
                    await self._wait(fresh, e)
                    return
                except ApiError as e:
                    if not e.refused:
                        raise
                    await self._refused(ft, fresh, p.run, e, {})
                    return
                if waits(status.get("conditions") or []):
                    await self._wait_over(ft, fresh, p.run)
                    return
                await self._observed(fresh, gen)
            elif p.action == "sync":
                try:
                    await self._sync_suspend(ft, p.run, jobs)
                except RunWaiting as e:
                    await self._wait(fresh, e)
                    return
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

    def _owned_jobs(self, body: Obj, jobs: Index | None) -> list[Obj]:
        meta = body["metadata"]
        mine = (jobs if jobs is not None else self.jobs or {}).get(
            (meta["namespace"], meta["name"])
        )
        return [j for j in mine or () if _owned_by(j, str(meta.get("uid")))]

    async def _trusted(self, body: Obj, jobs: Index | None) -> Obj:
        """`body` with its run bookkeeping taken from the Jobs we own (`runs.trusted_run`);
        a status that said otherwise is written back as the Jobs say."""
        status = body.get("status") or {}
        fixed = trusted_run(status, self._owned_jobs(body, jobs))
        if fixed is status:
            return body
        key = self._key(body)
        claimed = int(run_of(status).get("number") or 0)
        if claimed > int(fixed["run"]["number"]):
            # The index may lag a Job we just created: ask the apiserver before correcting.
            job = await self.kube.get("Job", key[0], child_name(key[1], claimed))
            if job is not None and _owned_by(job, str(body["metadata"].get("uid"))):
                return body
        if await self.kube.get("Job", key[0], str(fixed["run"]["jobName"])) is None:
            return body  # the index still holds a Job that is gone (deleted with its run)
        log.warning(
            "%s/%s: status.run %s does not match the Jobs it owns; corrected to %s",
            *key,
            status.get("run"),
            fixed["run"],
        )
        resp = await self._patch_status(body, {"run": fixed["run"]})
        return {**resp, "status": {**(resp.get("status") or {}), "run": fixed["run"]}}

    async def _run_hash(self, ft: LoRAFineTune, run: int, jobs: Index | None) -> str | None:
        """The spec hash run `run` was built from (Job, else its ConfigMap)."""
        job = _job(jobs, ft.namespace, child_name(ft.name, run), ft.name)
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
        job = _job(jobs, ft.namespace, child_name(ft.name, run), ft.name)
        if job is not None and _owned_by(job, uid):
            return  # the Job is created last: everything before it exists
        await self._check_secrets(ft)
        start_uri = await self._start_adapter(ft)
        *before, job_obj = build_run(
            ft, run, self.settings.build_defaults, start_adapter_uri=start_uri
        )
        binding = next(o for o in before if o["kind"] == "RoleBinding")
        # In parallel where allowed: the RoleBinding needs its Role (the apiserver checks we
        # hold what it grants by reading the Role), and the Job goes last: it marks the
        # run's children complete.
        await asyncio.gather(*(self._create_owned(o, uid) for o in before if o is not binding))
        await self._create_owned(binding, uid)
        if await self._create_owned(job_obj, uid):
            metrics.RUNS_STARTED.inc()

    async def _start_adapter(self, ft: LoRAFineTune) -> str | None:
        """startFrom.fineTune's succeeded run prefix; RunWaiting until there is one."""
        start = ft.spec.start_from
        source = None
        if start is not None and start.fine_tune is not None:
            source = await self.kube.get("LoRAFineTune", ft.namespace, start.fine_tune)
        try:
            return start_from.resolve(ft, source)
        except start_from.Waiting as e:
            raise RunWaiting(why.REASON_WAITING_FOR_STARTING_ADAPTER, str(e)) from None

    async def _check_secrets(self, ft: LoRAFineTune) -> None:
        """Raise RunWaiting unless every Secret the spec references exists with its keys.

        Only key names are looked at; no value leaves this function (none is logged,
        compared or stored).
        """
        refs: list[tuple[str, tuple[str, ...], str]] = []
        out = ft.spec.output.credentials_secret_ref
        if out is not None:
            s3_keys = (out.access_key_id_key, out.secret_access_key_key)
            refs.append((out.name, s3_keys, "spec.output.credentialsSecretRef"))
        tok = ft.spec.base_model.token_secret_ref
        if tok is not None:
            refs.append((tok.name, (tok.key,), "spec.baseModel.tokenSecretRef"))
        for name, keys, where in refs:
            secret = await self.kube.get("Secret", ft.namespace, name)
            if secret is None:
                raise RunWaiting(
                    why.REASON_SECRET_NOT_FOUND,
                    f"Secret {name} ({where}) does not exist in namespace {ft.namespace}; "
                    "no Job is created until it does",
                )
            have = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
            del secret
            missing = [k for k in keys if k not in have]
            if missing:
                raise RunWaiting(
                    why.REASON_SECRET_KEY_MISSING,
                    f"Secret {name} ({where}) has no key {', '.join(missing)}; "
                    "no Job is created until it does",
                )

    async def _wait(self, body: Obj, err: RunWaiting) -> None:
        """The run waits (no Job) for what its spec references; patch only what changed."""
        status = body.get("status") or {}
        gen = int(body["metadata"].get("generation") or 0)
        old = list(status.get("conditions") or [])
        conds = apply(old, wait_conditions(err.reason, err.message), gen)
        phase, message = summary(conds)
        patch: Obj = {}
        if conds != old or phase != status.get("phase") or message != status.get("message"):
            patch.update(conditions=conds, phase=phase, message=message)
        if status.get("observedGeneration") != gen:
            patch["observedGeneration"] = gen
        if patch:
            await self._patch_status(body, patch)
            self._emit(body, old, conds)

    async def _wait_over(self, ft: LoRAFineTune, body: Obj, run: int) -> None:
        """What a run waited for is there now and the run's Job was just created."""
        status = body.get("status") or {}
        gen = int(ft.metadata.get("generation") or 0)
        conds = apply(status.get("conditions") or [], start_conditions(ft.spec.suspend), gen)
        phase, message = summary(conds)
        await self._patch_status(
            body,
            {"observedGeneration": gen, "conditions": conds, "phase": phase, "message": message},
        )
        self._event(
            body,
            type="Normal",
            reason=why.REASON_RUN_STARTED,
            message=f"started run {run}: Job {child_name(ft.name, run)}",
        )

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
        for kind in reversed(RUN_CHILD_KINDS):  # the Job first: it holds the GPUs
            name = run_child_name(kind, ft.name, run)
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
            self._event(body, type="Normal", reason=why.REASON_RUN_STOPPED, message=msg)
        if status.get("progress") is not None:
            # The one write of status.progress by the operator: a new run starts with none,
            # so run 2 never shows run 1's 100 %, loss and ETA while it waits. The old run's
            # trainer can no longer write it back: its Role went with its children above.
            patch["progress"] = None
        waiting: RunWaiting | None = None
        try:
            await self._ensure_children(ft, p.run, jobs)
        except RunWaiting as e:
            waiting = e
        except ApiError as e:
            if not e.refused:
                raise
            await self._refused(ft, body, p.run, e, patch)
            return
        gen = int(ft.metadata.get("generation") or 0)
        old_conds = [c for c in status.get("conditions") or [] if c.get("type") != COND_SCHEDULED]
        wanted = (
            start_conditions(ft.spec.suspend)
            if waiting is None
            else wait_conditions(waiting.reason, waiting.message)
        )
        conds = apply(old_conds, wanted, gen, now)
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
        if waiting is not None:
            self._emit(body, list(status.get("conditions") or []), conds)
            return
        self._event(
            body,
            type="Normal",
            reason=why.REASON_RUN_STARTED,
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
        job = _job(jobs, ft.namespace, name, ft.name) or await self.kube.get(
            "Job", ft.namespace, name
        )
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
            for kind in reversed(RUN_CHILD_KINDS):
                name = run_child_name(kind, meta["name"], int(run["number"]))
                await self.kube.delete(kind, meta["namespace"], name)
            patch["history"] = append_history(
                status, history_entry(status, now, why.REASON_INVALID_SPEC)
            )
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

    # -- a condition another room decides (serving_handlers: the Serving condition) ----------

    async def decide_condition(
        self, body: Obj, decide: Callable[[Obj], Awaitable[Cond | None]]
    ) -> None:
        """Write the condition `decide` returns for the freshest copy of `body`, under the
        object's lock like every other status write: `decide` sees the conditions this
        Reconciler last wrote, and a later write here keeps the one it returned. Only the
        conditions are patched (no phase, no Event), and only when that condition changed."""
        key = self._key(body)
        async with self._locks[key]:
            fresh = self.freshest(key, body) or body
            cond = await decide(fresh)
            if cond is None:
                return
            old = list((fresh.get("status") or {}).get("conditions") or [])
            cur = get_condition(old, cond.type) or {}
            if (cur.get("status"), cur.get("reason"), cur.get("message")) == (
                cond.status,
                cond.reason,
                cond.message,
            ):
                return
            gen = int(fresh["metadata"].get("generation") or 0)
            await self._patch_status(fresh, {"conditions": apply(old, [cond], gen)})

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
            body = await self._trusted(body, jobs)
            status = body.get("status") or {}
            run = run_of(status)
            conds = list(status.get("conditions") or [])
            if not run.get("number") or not run.get("jobName"):
                return
            job_name = str(run["jobName"])
            job = _job(jobs, namespace, job_name, name)
            if finished(conds) and (job is None or job_finished(job)):
                return  # the outcome is recorded (a "finished" beside a live Job is redone)
            run_pods = list((pods or {}).get((namespace, job_name)) or [])
            updates = observe(job, run_pods, conds)
            if job is None and deleted_job == job_name:
                # Deleted before it finished (by hand, or by a controller): the run is over.
                updates = job_deleted(job_name)
            updates, verdict = await self._verify(body, int(run["number"]), updates)
            await self._write_observed(key, body, job, updates, verdict)

    async def _verify(
        self, body: Obj, run: int, updates: list[Any]
    ) -> tuple[list[Any], Verdict | None]:
        """A completed Job is a success only once the run's upload checks out in S3."""
        if not job_completed(updates):
            return updates, None
        uid = str(body["metadata"].get("uid"))
        verdict = self._verdicts.get((self._key(body), uid, run))
        if verdict is None:
            ft = LoRAFineTune.model_validate(body)
            verdict = await verify_run(self.kube, ft, run, self.settings.build_defaults)
            if not verdict.retry:
                self._verdicts[(self._key(body), uid, run)] = verdict
        if verdict.ok:
            return updates, verdict
        if verdict.retry:
            log.info("%s/%s: %s", *self._key(body), verdict.message)
            return verifying_artifacts(updates, verdict.message), None
        return artifacts_invalid(updates, verdict.message), None

    async def _write_observed(
        self,
        key: Key,
        body: Obj,
        job: Obj | None,
        updates: list[Any],
        verdict: Verdict | None = None,
    ) -> list[Obj]:
        """Patch the conditions `updates` lead to (nothing when nothing changed)."""
        status = body.get("status") or {}
        conds = list(status.get("conditions") or [])
        gen = int(status.get("observedGeneration") or body["metadata"].get("generation") or 0)
        now = now_iso()
        new = apply(conds, updates, gen, now)
        phase, message = summary(new)
        if new == conds and phase == status.get("phase") and message == status.get("message"):
            self._synced_at[key] = time.monotonic()
            return new
        wait = self._throttled(key, conds, new)
        if wait > 0:
            # Only a message moved (a waiting pod's kubelet message, a scheduler count): one
            # patch per MESSAGE_THROTTLE_SECONDS at most; the newest message follows then.
            self._later(key, wait)
            return conds
        patch: Obj = {"conditions": new, "phase": phase, "message": message}
        if finished(new):
            patch.update(self._finish(body, job, new, now, verdict))
        try:
            await self._patch_status(body, patch)
        except ApiError as e:
            if e.status != 404:
                raise
            # Deleted meanwhile (a pod event can outlive its LoRAFineTune): nothing to
            # report, and not an error worth a traceback.
            log.debug("%s/%s is gone; its run's events are ignored", *key)
            self._latest.pop(key, None)
            return new
        self._emit(body, conds, new)
        return new

    def _throttled(self, key: Key, old: list[Obj], new: list[Obj]) -> float:
        """Seconds to hold back a patch that changes only condition messages (0: send)."""
        if not message_only_change(old, new):
            return 0.0
        return self._patched_at.get(key, 0.0) + MESSAGE_THROTTLE_SECONDS - time.monotonic()

    def _later(self, key: Key, delay: float) -> None:
        """Re-sync `key` (re-read from the apiserver) once, in `delay` seconds."""
        if key in self._pending:
            return

        async def run() -> None:
            await asyncio.sleep(delay)
            self._pending.discard(key)
            try:
                if await self._standby({key[0]}):
                    return  # kopf peering paused this replica meanwhile: the leader reports
                await self.resync_one(key)
            except Exception as e:  # the periodic resync tries again
                log.warning("deferred sync of %s/%s failed: %s", key[0], key[1], e)

        self._pending.add(key)
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- periodic resync: repairs what a failed write or a missed event left behind -----------

    async def resync_forever(self, finetunes: Index) -> None:
        """Every unfinished run not synced for LORAF_STATUS_INTERVAL_SECONDS is re-read from
        the apiserver (its LoRAFineTune, Job, pods and the Job's FailedCreate events) and
        its status re-derived. Finished runs cost nothing; busy ones are skipped while
        their own events keep them current."""
        interval = max(1.0, float(self.settings.status_interval_seconds))
        while True:
            await asyncio.sleep(max(0.5, interval / 4))
            try:
                await self.resync(finetunes)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the safety net die
                log.exception("resync pass failed")

    async def resync(self, finetunes: Index | None) -> None:
        due = time.monotonic() - float(self.settings.status_interval_seconds)
        keys = []
        for key in list((finetunes or {}).keys()):
            body = self.freshest(key, _first(finetunes, key))
            if body is None or self._synced_at.get(key, 0.0) > due:
                continue
            status = body.get("status") or {}
            if not run_of(status).get("number") or finished(status.get("conditions") or []):
                continue
            keys.append(key)
        on_standby = bool(keys) and await self._standby({ns for ns, _ in keys})
        if on_standby != self._on_standby:
            self._on_standby = on_standby
            log.info("resync %s", "paused: on standby (kopf peering)" if on_standby else "active")
        if on_standby:
            return
        for key in keys:
            try:
                await self.resync_one(key)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one object's trouble must not stop the others'
                log.warning("resync of %s/%s failed: %s", key[0], key[1], e)

    async def _standby(self, namespaces: set[str]) -> bool:
        """Whether kopf peering has this replica paused (then another one acts)."""
        cfg = self.settings
        if not cfg.peering:
            return False
        if cfg.clusterwide:
            where = [("ClusterKopfPeering", "")]
        else:
            where = [("KopfPeering", ns) for ns in sorted(namespaces)]
        for kind, ns in where:
            obj = await self.kube.get(kind, ns, cfg.peering)
            if obj and standby(obj.get("status") or {}, cfg.identity, cfg.priority):
                return True
        return False

    async def resync_one(self, key: Key) -> None:
        ns, name = key
        retry_start: Obj | None = None
        async with self._locks[key]:
            body = await self.kube.get("LoRAFineTune", ns, name)
            if body is None:
                self.forget(key)
                return
            if _rv(body) >= _rv(self._latest.get(key)):
                self._latest[key] = body
            body = await self._trusted(body, None)
            status = body.get("status") or {}
            run = run_of(status)
            conds = list(status.get("conditions") or [])
            job_name = str(run.get("jobName") or child_name(name, int(run.get("number") or 0)))
            job = await self.kube.get("Job", ns, job_name) if run.get("number") else None
            if not run.get("number") or (finished(conds) and (job is None or job_finished(job))):
                self._synced_at[key] = time.monotonic()
                return
            if job is None and waits(conds):
                retry_start = body
            else:
                if job is None:
                    run_pods: list[Obj] = []
                    updates = job_deleted(job_name)
                else:
                    run_pods = await self.kube.list("Pod", ns, labels=f"{JOB_NAME}={job_name}")
                    updates = observe(job, run_pods, conds)
                    if not run_pods and not finished(apply(conds, updates, 0)):
                        events = await self.kube.list(
                            "Event",
                            ns,
                            fields=f"involvedObject.kind=Job,involvedObject.name={job_name}",
                        )
                        updates += creation_refused(
                            job,
                            run_pods,
                            events,
                            datetime.now(UTC),
                            self.settings.pod_create_timeout_seconds,
                        )
                updates, verdict = await self._verify(body, int(run["number"]), updates)
                new = await self._write_observed(key, body, job, updates, verdict)
                if (
                    job is not None
                    and finished(new)
                    and get_reason(new) == why.REASON_POD_CREATION_REFUSED
                ):
                    # Stop the Job controller's retries: the run is over.
                    await self.kube.delete("Job", ns, job_name)
        if retry_start is not None:
            # The run waits for a Secret: try to create its children again (reconcile
            # takes the lock itself).
            await self.reconcile(retry_start, None, log)

    def _finish(
        self, body: Obj, job: Obj | None, conds: list[Obj], now: str, verdict: Verdict | None
    ) -> Obj:
        status = body.get("status") or {}
        out: Obj = {
            "run": {
                "completionTime": ((job or {}).get("status") or {}).get("completionTime") or now
            }
        }
        gpus = int(((body.get("spec") or {}).get("resources") or {}).get("gpus", 1))
        used = gpu_hours(job, gpus, now)
        if used:
            out["gpuHours"] = round(float(status.get("gpuHours") or 0) + used, 4)
        if phase_succeeded(conds) and verdict is not None and verdict.ok:
            # From the verified manifest, never from the trainer's status.progress.result.
            out["artifacts"], out["evaluation"] = verdict.artifacts, verdict.evaluation
        return out


def get_reason(conds: list[Obj]) -> str:
    """The Failed condition's reason ('' when not failed)."""
    c = next((c for c in conds if c.get("type") == COND_FAILED), None)
    return str(c.get("reason") or "") if c and c.get("status") == "True" else ""


def phase_succeeded(conds: list[Obj]) -> bool:
    return summary(conds)[0] == "Succeeded"
