"""Ingress: the HTTP API (`/v1/...`) and the handle API, over the same methods.

(No `from __future__ import annotations` here: FastAPI must resolve the route annotations.)

A job becomes one SchedulingRequest per task; the Scheduler answers with placements (now or
as capacity frees); each placed task is dispatched pinned to its node, and every completion
is reported back so the ledger releases it. The handle methods are the API; the HTTP routes
at the bottom are thin wrappers around them.
"""


import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from grid_serve.errors import GridError, InvalidRequestError, NoCapacityError, NotFoundError, describe_error
from grid_serve.ledger import Completion
from grid_serve.models import (
    ClusterStatus,
    JobState,
    JobStatus,
    JobSubmission,
    ResourceRequirement,
    SchedulingDecision,
    SchedulingRequest,
    TaskOutcome,
)
from grid_serve.scheduling import Rejected
from grid_serve.sharing import Allocation, SharingRequest, SharingStatus
from grid_serve.tasks import TaskType, load_task_modules, run_task

from ._common import COORDINATOR_OPTIONS, logger

API_VERSION = "v1"


class CompletionReport(BaseModel):
    """Body of `/v1/schedule/{task_id}/complete`: how the externally run task went."""

    model_config = ConfigDict(extra="forbid")
    ok: bool = True
    duration_s: float | None = Field(None, ge=0)

FINISHED_JOBS_KEPT = 200
HEALTH_MAX_AGE_S = 0.5
_run_remote = ray.remote(run_task)


@dataclass
class _Job:
    """One job's bookkeeping inside the Ingress replica."""

    id: str
    spec: JobSubmission
    fn: Callable[..., Any]
    task_name: str
    submitted_at: float = field(default_factory=time.time)
    waiting: set[str] = field(default_factory=set)  # task ids not yet placed
    running: dict[asyncio.Future, tuple[int, SchedulingDecision, ray.ObjectRef]] = field(default_factory=dict)
    outcomes: dict[int, TaskOutcome] = field(default_factory=dict)
    cancelled: bool = False
    fn_ref: Any = None  # what dispatch passes as the function: itself, or its object-store ref
    finished_at: float | None = None
    error: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def index_of(self, task_id: str) -> int:
        return int(task_id.rsplit("-", 1)[1])

    @property
    def state(self) -> JobState:
        if self.cancelled:
            return "cancelled"
        if self.done.is_set():
            return "failed" if self.error or any(not o.ok for o in self.outcomes.values()) else "succeeded"
        return "running" if self.running or self.outcomes else "queued"

    def status(self, with_results: bool = False) -> JobStatus:
        per_node: dict[str, int] = {}
        for outcome in self.outcomes.values():
            per_node[outcome.node_name] = per_node.get(outcome.node_name, 0) + 1
        failed = sum(1 for o in self.outcomes.values() if not o.ok and o.error != "cancelled")
        cancelled = sum(1 for o in self.outcomes.values() if o.error == "cancelled")
        results = [self.outcomes[i] for i in sorted(self.outcomes)] if with_results else None
        return JobStatus(
            job_id=self.id, task=self.task_name, strategy=self.spec.strategy, priority=self.spec.priority,
            state=self.state, total=self.spec.task_count, queued=len(self.waiting), running=len(self.running),
            succeeded=sum(1 for o in self.outcomes.values() if o.ok), failed=failed, cancelled=cancelled,
            per_node=dict(sorted(per_node.items())), submitted_at=self.submitted_at,
            finished_at=self.finished_at, error=self.error, results=results,
        )


class _PinnedFunctions:
    """`.options()` is costly per call; tasks pinned to the same node with the same
    resources share one configured remote function."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def for_decision(self, decision: SchedulingDecision) -> Any:
        key = (decision.node_id, decision.placement_group_id, decision.bundle_index,
               tuple(sorted(decision.resources.items())))
        remote = self._cache.get(key)
        if remote is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            remote = self._cache[key] = _run_remote.options(**decision.ray_options())
        return remote


fastapi_app = FastAPI(
    title="grid-serve",
    version="0.1.0",
    description="Task placement for Ray: spread, load_balanced, performance_optimized, node_specific, pack.",
)


class JsonBodiesByDefault:
    """Treat request bodies as JSON unless they say otherwise: `curl -d '{...}'` sends them as
    form data, and our API takes JSON only, so that is what the user meant."""

    FORM = b"application/x-www-form-urlencoded"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if not content_type or content_type.startswith(self.FORM):
                content_type = b"application/json"
            scope = {**scope, "headers": [*headers, (b"content-type", content_type)]}
        await self.app(scope, receive, send)


fastapi_app.add_middleware(JsonBodiesByDefault)


@fastapi_app.exception_handler(GridError)
async def _grid_error(request: Request, exc: GridError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [dict(zip(("field", "message"), describe_error(err))) for err in exc.errors()]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse({"error": f"invalid request: {summary}", "field": problems[0]["field"] if problems else None,
                         "problems": problems}, status_code=422)


@fastapi_app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


@serve.deployment(**COORDINATOR_OPTIONS)
@serve.ingress(fastapi_app)
class Ingress:
    def __init__(self, scheduler: DeploymentHandle, load_balancer: DeploymentHandle,
                 metrics: DeploymentHandle, task_modules: list[str] | None = None,
                 sharing: DeploymentHandle | None = None) -> None:
        self._scheduler = scheduler
        self._sharing = sharing
        self._lb = load_balancer
        self._metrics = metrics
        self._tasks: dict[str, TaskType] = load_task_modules(task_modules or ["grid_serve.tasks"])
        self._jobs: dict[str, _Job] = {}
        self._pinned = _PinnedFunctions()
        self._runners: set[asyncio.Task] = set()
        self._status_call: asyncio.Future | None = None
        self._health_status: tuple[float, ClusterStatus] | None = None  # (monotonic time, status)

    # ================================================================== handle API

    async def health(self) -> dict[str, Any]:
        """Liveness with node and queue counts, from a cluster status at most
        HEALTH_MAX_AGE_S old: probes poll this often, and a Scheduler round trip per probe
        cost half the route's rate (bench/http_api.py). /v1/cluster stays exact."""
        cached = self._health_status
        if cached is not None and time.monotonic() - cached[0] < HEALTH_MAX_AGE_S:
            status = cached[1]
        else:
            status = await self._shared_cluster_status()
            self._health_status = (time.monotonic(), status)
        alive = sum(1 for node in status.nodes if node.alive)
        return {"status": "ok", "nodes_alive": alive, "nodes": len(status.nodes), "queued": status.queued,
                "jobs_running": sum(1 for job in self._jobs.values() if not job.done.is_set())}

    async def cluster_status(self) -> ClusterStatus:
        return await self._shared_cluster_status()

    async def _shared_cluster_status(self) -> ClusterStatus:
        """One Scheduler call serves every status request that arrives while it is in flight.

        Under load the status routes cost a Scheduler round trip per request, which halved
        their rate against a bare Serve deployment (bench/http_api.py); sharing the call in
        flight keeps every answer no older than one round trip and fails all alike.
        """
        if self._status_call is None or self._status_call.done():
            self._status_call = asyncio.ensure_future(self._scheduler.cluster_status.remote())
        return await asyncio.shield(self._status_call)

    async def list_tasks(self) -> list[dict[str, Any]]:
        return [{"name": t.name, "description": t.description, "requirements": t.requirements.model_dump()}
                for t in sorted(self._tasks.values(), key=lambda t: t.name)]

    async def submit_job(self, spec: JobSubmission | dict[str, Any], fn: Callable[..., Any] | None = None) -> JobStatus:
        """Start a job. Handle callers may pass their own function `fn` instead of a task name;
        then `spec.task` only labels it. Waits for the results when `spec.wait` is set."""
        spec = spec if isinstance(spec, JobSubmission) else JobSubmission.model_validate(spec)
        custom = fn is not None
        task_name, fn, default = self._resolve_task(spec, fn)
        job = _Job(id=uuid.uuid4().hex[:12], spec=spec, fn=fn, task_name=task_name)
        requests = [spec.scheduling_request(job.id, i, default) for i in range(spec.task_count)]
        job.waiting = {request.task_id for request in requests}
        placements = await self._scheduler.submit.remote(requests)
        if len(placements.rejected) == spec.task_count:
            await self._scheduler.finished.remote(job.id)
            raise InvalidRequestError(placements.rejected[0].reason, field="node" if spec.node else "resources")
        self._jobs[job.id] = job
        self._forget_old_jobs()
        # A registered task travels inline (pickled by reference: a few bytes); a caller's own
        # function goes to the object store once per job rather than once per task.
        fn_ref = job.fn_ref = ray.put(job.fn) if custom else job.fn
        self._apply(job, placements, fn_ref)
        runner = asyncio.get_running_loop().create_task(self._run(job, fn_ref))
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        if spec.wait:
            try:
                await asyncio.wait_for(job.done.wait(), spec.timeout_s)
            except asyncio.TimeoutError:
                pass
        return job.status(with_results=job.done.is_set() and spec.wait)

    async def get_job(self, job_id: str, results: bool = False) -> JobStatus:
        return self._job(job_id).status(with_results=results)

    async def wait_job(self, job_id: str, timeout_s: float = 600.0, results: bool = True) -> JobStatus:
        job = self._job(job_id)
        try:
            await asyncio.wait_for(job.done.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        return job.status(with_results=results)

    async def list_jobs(self) -> list[JobStatus]:
        return [job.status() for job in self._jobs.values()]

    async def cancel_job(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        if job.done.is_set():
            return job.status()
        job.cancelled = True
        for task_id in await self._scheduler.cancel.remote(job.id):
            job.waiting.discard(task_id)
            self._record(job, job.index_of(task_id), None, ok=False, error="cancelled")
        for _, _, ref in list(job.running.values()):
            ray.cancel(ref, force=False)
        job.changed.set()
        return job.status()

    async def schedule(self, request: SchedulingRequest | dict[str, Any], lease_s: float = 300.0,
                       wait_s: float = 30.0) -> SchedulingDecision:
        """Decide and reserve a node for a task the caller will submit itself. The reservation
        holds until `complete(task_id)` or until the lease runs out. Each such task is its own
        group (a `job_id` is ignored), so its decision can never be delivered to anyone else."""
        request = request if isinstance(request, SchedulingRequest) else SchedulingRequest.model_validate(request)
        if request.job_id is not None:  # decisions are delivered per group: never share one with a job
            request = request.model_copy(update={"job_id": None})
        placements = await self._scheduler.submit.remote([request], lease_s)
        deadline = time.monotonic() + wait_s
        while not placements.placed and not placements.rejected and time.monotonic() < deadline:
            placements = await self._scheduler.wait_placed.remote(request.group, min(5.0, wait_s))
        if placements.rejected:
            reason = placements.rejected[0].reason
            raise InvalidRequestError(reason, field="task_id" if reason.startswith("task id") else "requirements")
        if not placements.placed:
            await self._scheduler.finished.remote(request.group)
            raise NoCapacityError(f"no node had room for task {request.task_id} within {wait_s:g}s; try again later")
        return placements.placed[0]

    async def complete(self, task_id: str, ok: bool = True, duration_s: float | None = None) -> dict[str, Any]:
        completion = Completion(task_id=task_id, ok=ok, duration_s=duration_s)
        if not await self._scheduler.complete_external.remote(completion):
            raise NotFoundError(f"no /v1/schedule reservation for task {task_id!r} (already released, expired, "
                                "or a job's task, which its job releases)", field="task_id")
        return {"task_id": task_id, "released": True}

    # ------------------------------------------------------------------ resource sharing

    async def sharing_status(self) -> SharingStatus:
        """Allocations, pending requests, shareable capacity and use per node."""
        return await self._call_sharing("status")

    async def request_resources(self, body: SharingRequest | dict[str, Any]) -> Allocation:
        """A node borrows capacity: granted on a donor now, or queued (see its `state`)."""
        if not isinstance(body, SharingRequest):
            try:
                body = SharingRequest.model_validate(body)
            except ValidationError as exc:
                field, message = describe_error(exc.errors()[0])
                raise InvalidRequestError(f"invalid sharing request: {field}: {message}", field=field) from None
        record = await self._call_sharing("request", body)
        await self._scheduler.sharing_changed.remote()
        return record

    async def get_sharing(self, record_id: str) -> Allocation:
        return await self._call_sharing("get", record_id)

    async def release_resources(self, record_id: str) -> Allocation:
        """End an allocation (running tasks finish first) or withdraw a pending request."""
        record = await self._call_sharing("release", record_id)
        await self._scheduler.sharing_changed.remote()
        return record

    async def _call_sharing(self, method: str, *args: Any) -> Any:
        if self._sharing is None:
            raise NotFoundError("resource sharing is not part of this deployment", field="resource_sharing")
        try:
            return await getattr(self._sharing, method).remote(*args)
        except ray.exceptions.RayTaskError as exc:  # the manager's GridErrors reach callers as themselves
            if isinstance(exc.cause, GridError):
                raise exc.cause from None
            raise

    # ================================================================== job running

    def _resolve_task(self, spec: JobSubmission, fn: Callable[..., Any] | None) -> tuple[str, Callable[..., Any], ResourceRequirement]:
        if fn is not None:
            name = spec.task if spec.task != "compute_task" else getattr(fn, "__name__", "custom")
            return name, fn, ResourceRequirement()
        task_type = self._tasks.get(spec.task)
        if task_type is None:
            known = ", ".join(sorted(self._tasks))
            raise InvalidRequestError(f"unknown task {spec.task!r}; registered tasks: {known}", field="task")
        return task_type.name, task_type.fn, task_type.requirements

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        return job

    def _forget_old_jobs(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.done.is_set()]
        for job_id in finished[:-FINISHED_JOBS_KEPT] if len(finished) > FINISHED_JOBS_KEPT else []:
            del self._jobs[job_id]

    def _apply(self, job: _Job, placements: Any, fn_ref: ray.ObjectRef) -> None:
        """Dispatch what the Scheduler placed; record what it rejected. Placements that reach a
        cancelled job are never run, and their reservations are handed straight back."""
        unused = []
        for decision in placements.placed:
            job.waiting.discard(decision.task_id)
            index = job.index_of(decision.task_id)
            if job.cancelled:
                self._record(job, index, decision, ok=False, error="cancelled")
                unused.append(Completion(task_id=decision.task_id, ok=False))
                continue
            args, kwargs = job.spec.call_args(index)
            ref = self._pinned.for_decision(decision).remote(fn_ref, args, kwargs)
            job.running[asyncio.wrap_future(ref.future())] = (index, decision, ref)
        rejection: Rejected
        for rejection in placements.rejected:
            job.waiting.discard(rejection.task_id)
            self._record(job, job.index_of(rejection.task_id), None, ok=False, error=rejection.reason)
        if unused:
            self._background(self._scheduler.complete.remote(unused), f"release cancelled tasks of {job.id}")
        job.changed.set()

    def _background(self, call: Any, what: str) -> None:
        """Run a call to another deployment without waiting for it; failures are logged."""

        async def run() -> None:
            try:
                await call
            except Exception:
                logger.exception("could not %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    def _record(self, job: _Job, index: int, decision: SchedulingDecision | None, ok: bool,
                error: str | None = None, envelope: dict[str, Any] | None = None) -> None:
        envelope = envelope or {}
        job.outcomes[index] = TaskOutcome(
            task_id=f"{job.id}-{index}", index=index,
            node_id=envelope.get("node_id") or (decision.node_id if decision else ""),
            node_name=envelope.get("node_name") or (decision.node_name if decision else "(not placed)"),
            ok=ok, result=envelope.get("result"), error=error,
            started_at=envelope.get("started_at", 0.0), duration_s=envelope.get("duration_s", 0.0),
        )

    async def _run(self, job: _Job, fn_ref: ray.ObjectRef) -> None:
        """Feed placements in and completions out until every task has an outcome."""
        loop = asyncio.get_running_loop()
        receiver = loop.create_task(self._receive_placements(job, fn_ref))
        watcher = loop.create_task(self._watch_completions(job))
        try:
            running = {receiver, watcher}
            while not watcher.done():  # the job ends with its watcher; a receiver error ends it early
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        except Exception as exc:  # never leave a job hanging: say what broke
            logger.exception("job %s failed", job.id)
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            receiver.cancel()
            watcher.cancel()
            job.finished_at = time.time()
            job.done.set()
            try:
                await self._scheduler.finished.remote(job.id)
            except Exception:
                logger.exception("could not tell the scheduler that job %s finished", job.id)

    async def _receive_placements(self, job: _Job, fn_ref: ray.ObjectRef) -> None:
        while job.waiting and not job.cancelled:
            placements = await self._scheduler.wait_placed.remote(job.id, 5.0)
            self._apply(job, placements, fn_ref)

    async def _watch_completions(self, job: _Job) -> None:
        while job.waiting or job.running:
            if job.cancelled and not job.running:
                break
            if not job.running:
                job.changed.clear()
                await job.changed.wait()
                continue
            job.changed.clear()
            changed = asyncio.ensure_future(job.changed.wait())
            done, _ = await asyncio.wait([*job.running, changed], return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            finished = [future for future in job.running if future.done()]
            if finished:
                await self._finish(job, finished)

    async def _finish(self, job: _Job, finished: list[asyncio.Future]) -> None:
        completions = []
        for future in finished:
            index, decision, _ = job.running.pop(future)
            try:
                envelope = future.result()
                ok, error = envelope["ok"], envelope["error"]
            except (ray.exceptions.TaskCancelledError, asyncio.CancelledError):
                envelope, ok, error = None, False, "cancelled"
            except Exception as exc:  # the worker or its node died: a failed task, not a failed job
                envelope, ok, error = None, False, f"{type(exc).__name__}: {exc}"
            self._record(job, index, decision, ok, error, envelope)
            completions.append(Completion(task_id=decision.task_id, ok=ok,
                                          duration_s=envelope["duration_s"] if envelope else None))
        placements = await self._scheduler.complete_for.remote(job.id, completions)
        self._apply(job, placements, job.fn_ref)

    # ================================================================== HTTP routes

    @fastapi_app.get(f"/{API_VERSION}/health")
    async def http_health(self) -> dict[str, Any]:
        return await self.health()

    @fastapi_app.get(f"/{API_VERSION}/cluster", response_model=ClusterStatus)
    async def http_cluster(self) -> ClusterStatus:
        return await self.cluster_status()

    @fastapi_app.get(f"/{API_VERSION}/tasks")
    async def http_tasks(self) -> list[dict[str, Any]]:
        return await self.list_tasks()

    @fastapi_app.post(f"/{API_VERSION}/jobs", response_model=JobStatus, response_model_exclude_none=True)
    async def http_submit(self, body: JobSubmission) -> JSONResponse:
        status = await self.submit_job(body)
        code = 200 if status.state in ("succeeded", "failed", "cancelled") else 202
        return JSONResponse(status.model_dump(mode="json", exclude_none=True), status_code=code)

    @fastapi_app.get(f"/{API_VERSION}/jobs", response_model=list[JobStatus], response_model_exclude_none=True)
    async def http_jobs(self) -> list[JobStatus]:
        return await self.list_jobs()

    @fastapi_app.get(f"/{API_VERSION}/jobs/{{job_id}}", response_model=JobStatus, response_model_exclude_none=True)
    async def http_job(self, job_id: str, results: bool = Query(False), wait_s: float = Query(0.0, ge=0, le=3600)) -> JobStatus:
        if wait_s:
            return await self.wait_job(job_id, wait_s, results)
        return await self.get_job(job_id, results)

    @fastapi_app.delete(f"/{API_VERSION}/jobs/{{job_id}}", response_model=JobStatus, response_model_exclude_none=True)
    async def http_cancel(self, job_id: str) -> JobStatus:
        return await self.cancel_job(job_id)

    @fastapi_app.post(f"/{API_VERSION}/schedule", response_model=SchedulingDecision)
    async def http_schedule(self, body: SchedulingRequest, lease_s: float = Query(300.0, gt=0, le=86400),
                            wait_s: float = Query(30.0, ge=0, le=600)) -> SchedulingDecision:
        return await self.schedule(body, lease_s, wait_s)

    @fastapi_app.post(f"/{API_VERSION}/schedule/{{task_id}}/complete")
    async def http_complete(self, task_id: str, body: CompletionReport | None = None) -> dict[str, Any]:
        return await self.complete(task_id, body.ok if body else True, body.duration_s if body else None)

    @fastapi_app.get(f"/{API_VERSION}/sharing", response_model=SharingStatus)
    async def http_sharing_status(self) -> SharingStatus:
        return await self.sharing_status()

    @fastapi_app.post(f"/{API_VERSION}/sharing", response_model=Allocation)
    async def http_sharing_request(self, body: SharingRequest) -> JSONResponse:
        record = await self.request_resources(body)
        return JSONResponse(record.model_dump(mode="json"), status_code=201 if record.state == "active" else 202)

    @fastapi_app.get(f"/{API_VERSION}/sharing/{{record_id}}", response_model=Allocation)
    async def http_sharing_get(self, record_id: str) -> Allocation:
        return await self.get_sharing(record_id)

    @fastapi_app.post(f"/{API_VERSION}/sharing/{{record_id}}/release", response_model=Allocation)
    async def http_sharing_release(self, record_id: str) -> Allocation:
        return await self.release_resources(record_id)
