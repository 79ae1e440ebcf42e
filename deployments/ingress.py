"""Ingress: the HTTP API (`/v1/...`) and the handle API, over the same methods.

(No `from __future__ import annotations` here: FastAPI must resolve the route annotations.)

Jobs run in a JobRunner actor (`runner.py`): each Ingress replica makes one and hands it the
jobs submitted through it; a job id starts with its runner's tag, so any replica finds the
runner of any job by name (`runner_directory.py`). `/v1/schedule` decisions
(`schedule_desk.py`) and resource sharing go straight to the Scheduler and the SharingManager.
The handle methods are the API; the HTTP routes at the bottom are thin wrappers around them,
on the FastAPI app of `http_app.py` (its error shapes and middleware).
"""


import os
from typing import Any, Callable

import ray
from fastapi import Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.actor import ActorHandle
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.handle import DeploymentHandle

from grid_serve.access import CLUSTER_OWNER, LOOPBACK_HOSTS, AccessPolicy, Caller, parse_tokens
from grid_serve.caller_code import CallerCode
from grid_serve.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    describe_error,
    require_number,
)
from grid_serve.handles import stop_safe
from grid_serve.limits import Limits
from grid_serve.models import (
    ClusterStatus,
    JobStatus,
    JobSubmission,
    PlacementHistory,
    RecentDecisions,
    SchedulingDecision,
    SchedulingRequest,
    TaskPriority,
)
from grid_serve.placement import describe_strategies
from grid_serve.queues import DEFAULT_QUEUE, queue_of_caller
from grid_serve.sharing import Allocation, SharingRequest, SharingStatus
from grid_serve.tasks import TaskType, load_task_modules

from ._common import COORDINATOR_OPTIONS, WaitingCap, answer_within, call_with_timeout, grid_call, logger
from .http_app import (
    AccessGuard,
    CompletionReport,
    FiniteJSONResponse,
    caller_of,
    fastapi_app,
)
from .runner_directory import RunnerDirectory, RunnerSettings
from .schedule_desk import ScheduleDesk
from .scheduler_reads import PEER_ANSWER_S, SchedulerReads

API_VERSION = "v1"


MAX_WAIT_S = 3600.0
SHARING_REQUEST_S = 20.0  # over the SharingManager's own bounds on a request: its view (5 s), then its group (10 s)


@serve.deployment(**COORDINATOR_OPTIONS)
@serve.ingress(fastapi_app)
class Ingress:
    def __init__(self, scheduler: DeploymentHandle, load_balancer: DeploymentHandle,
                 metrics: DeploymentHandle, task_modules: list[str] | None = None,
                 sharing: DeploymentHandle | None = None, interval_s: float = 1.0,
                 access: tuple[str | None, tuple[str, ...], tuple[str, ...] | None] = (None, LOOPBACK_HOSTS, None),
                 limits: Limits | None = None, chunk_ms: float = 0.0) -> None:
        """`access`: (name of the environment variable holding the API token(s), or None; the
        host names the API answers to; the identities that may use `critical`, or None for
        anyone). `chunk_ms`: see AppArgs."""
        token_env, allowed_hosts, critical_callers = access
        token = os.environ.get(token_env, "") if token_env else None
        if token_env and not token:
            raise RuntimeError(f"token_env is {token_env!r} but that environment variable is empty or unset in "
                               "the Ingress replica's environment; set it where Ray runs, or drop token_env")
        AccessGuard.policy = AccessPolicy(tokens=parse_tokens(token), allowed_hosts=tuple(allowed_hosts),
                                          critical_callers=tuple(critical_callers) if critical_callers else None)
        self._limits = limits or Limits()
        self._waiting = WaitingCap(self._limits.max_waiting_requests, field="wait",
                                   retry_after_s=self._limits.retry_after_s,
                                   refusal="{count} requests already wait for jobs on this replica "
                                           "(max_waiting_requests); ask again, or poll without waiting")
        self._scheduler = stop_safe(scheduler)
        self._desk = ScheduleDesk(self._scheduler, self._limits)
        self._sharing = stop_safe(sharing)
        self._lb = load_balancer
        self._metrics = metrics
        self._task_modules = task_modules or ["grid_serve.tasks"]
        self._tasks: dict[str, TaskType] = load_task_modules(self._task_modules)
        own_name = ray.get_runtime_context().get_actor_name()
        self._runners = RunnerDirectory(RunnerSettings(
            app=serve.get_replica_context().app_name, scheduler=self._scheduler, task_modules=self._task_modules,
            parent=(own_name, SERVE_NAMESPACE) if own_name else None, interval_s=interval_s, limits=self._limits,
            chunk_s=chunk_ms / 1000.0))
        self._reads = SchedulerReads(self._scheduler)

    # ================================================================== handle API

    async def health(self) -> dict[str, Any]:
        return await self._reads.health()

    async def cluster_status(self) -> ClusterStatus:
        return await self._reads.cluster_status()

    async def list_tasks(self) -> list[dict[str, Any]]:
        return [{"name": t.name, "description": t.description, "requirements": t.requirements.model_dump()}
                for t in sorted(self._tasks.values(), key=lambda t: t.name)]

    async def list_strategies(self) -> list[dict[str, Any]]:
        """The placement strategies, as their modules declare them (`grid_serve.placement`)."""
        return describe_strategies()

    async def submit_job(self, spec: JobSubmission | dict[str, Any],
                         fn: Callable[..., Any] | CallerCode | None = None) -> JobStatus:
        """Start a job. Handle callers may pass their own function `fn` instead of a task name;
        then `spec.task` only labels it. Waits for the results when `spec.wait` is set. A
        `CallerCode` (what `HandleClient` sends) stays packed here and in the runner."""
        return await self._submit(spec, fn, None)

    async def job_runner(self) -> ActorHandle:
        """This replica's job runner, for handle callers that submit to it directly
        (`HandleClient`): the jobs are the same, one Serve call fewer each."""
        return self._runners.current

    async def _submit(self, spec: JobSubmission | dict[str, Any], fn: Callable[..., Any] | CallerCode | None,
                      caller: Caller | None) -> JobStatus:
        """`caller`: who sent it over HTTP (None: a handle call, trusted inside the cluster)."""
        spec = spec if isinstance(spec, JobSubmission) else JobSubmission.model_validate(spec)
        self._check_priority(spec.priority, caller)
        owner, key = self._claim(caller)
        if spec.queue is None:  # an HTTP caller's own queue; a handle call naming none: the cluster's default
            spec = spec.model_copy(update={"queue": queue_of_caller(caller.identity) if caller else DEFAULT_QUEUE})
        with self._waiting.slot(spec.wait):
            try:  # the runner resolves the task name (an unknown one comes back as its 422)
                status = await grid_call(self._runners.current.submit_job.remote(spec, fn, owner))
            except ray.exceptions.RayActorError:  # the runner was killed: start a new one for new jobs
                self._runners.replace("was killed")
                status = await grid_call(self._runners.current.submit_job.remote(spec, fn, owner))
        return status.model_copy(update={"owner_key": key}) if key else status

    @staticmethod
    def _claim(caller: Caller | None) -> tuple[str, str | None]:
        """Who owns what this call makes, and the owner key to hand back, if any."""
        return caller.claim() if caller is not None else (CLUSTER_OWNER, None)

    @staticmethod
    def _check_priority(priority: TaskPriority, caller: Caller | None) -> None:
        policy = AccessGuard.policy
        if priority is TaskPriority.CRITICAL and not policy.may_use_critical(caller):
            allowed = ", ".join(policy.critical_callers or ())
            raise ForbiddenError(f"critical priority is limited to {allowed} (critical_callers in serve_config); "
                                 "use high, or send one of their tokens", field="priority")

    async def check_health(self) -> None:
        """Serve's periodic health check: a runner that died is replaced, so this replica
        keeps taking jobs even when no submission has come through it since."""
        await self._runners.check()

    async def get_job(self, job_id: str, results: bool = False, reader: Caller | None = None) -> JobStatus:
        """`reader` (HTTP with tokens only) must own the job to read its results."""
        runner = await self._runners.of_job(job_id)
        status = await self._runners.answer(job_id, runner.get_job.remote(job_id, bool(results), reader))
        return await self._reads.with_pending(status)

    async def wait_job(self, job_id: str, timeout_s: float = 600.0, results: bool = True,
                       reader: Caller | None = None) -> JobStatus:
        timeout_s = require_number("timeout_s", timeout_s, 0, MAX_WAIT_S)
        with self._waiting.slot(timeout_s > 0):
            runner = await self._runners.of_job(job_id)
            return await self._reads.with_pending(await self._runners.answer(
                job_id, runner.wait_job.remote(job_id, timeout_s, bool(results), reader), beyond_s=timeout_s))


    async def list_jobs(self, limit: int = 100, offset: int = 0) -> list[JobStatus]:
        """Every runner's jobs, newest first, `limit` of them from `offset`. The web page asks
        every second: the runners answer at once."""
        limit = int(require_number("limit", limit, 1, 1000))
        offset = int(require_number("offset", offset, 0, 10**9))
        return (await self._runners.all_jobs())[offset:offset + limit]

    async def cancel_job(self, job_id: str, caller: Caller | None = None) -> JobStatus:
        """`caller` (HTTP only) must own the job; handle calls may cancel any job."""
        runner = await self._runners.of_job(job_id)
        return await self._runners.answer(job_id, runner.cancel_job.remote(job_id, caller))

    async def schedule(self, request: SchedulingRequest | dict[str, Any], lease_s: float = 300.0,
                       wait_s: float = 30.0, caller: Caller | None = None) -> SchedulingDecision:
        """Decide and reserve a node for a task the caller will submit itself (`ScheduleDesk`)."""
        request = request if isinstance(request, SchedulingRequest) else SchedulingRequest.model_validate(request)
        lease_s = require_number("lease_s", lease_s, 0, 86400, low_open=True)
        if lease_s > self._limits.max_schedule_lease_s:
            raise InvalidRequestError(f"lease_s may be at most {self._limits.max_schedule_lease_s:g} s "
                                      f"(max_schedule_lease_s in the app's limits), got {lease_s:g}: complete the "
                                      "reservation when its task ends, whatever its lease", field="lease_s")
        wait_s = require_number("wait_s", wait_s, 0, 600)
        self._check_priority(request.priority, caller)
        if request.queue is None:
            request = request.model_copy(
                update={"queue": queue_of_caller(caller.identity) if caller else DEFAULT_QUEUE})
        return await self._desk.schedule(request, lease_s, wait_s, self._claim(caller))

    async def complete(self, task_id: str, ok: bool = True, duration_s: float | None = None,
                       caller: Caller | None = None) -> dict[str, Any]:
        """Release a /v1/schedule reservation (only its caller's, over HTTP)."""
        return await self._desk.complete(task_id, ok, duration_s, caller)

    async def recent_decisions(self, limit: int = 50, job_id: str | None = None) -> RecentDecisions:
        """The Scheduler's latest decisions with their reasons; one job's when `job_id` is given."""
        return await self._reads.answer(self._scheduler.recent_decisions.remote(limit, job_id))

    async def placement_history(self, window_s: float = 600.0) -> PlacementHistory:
        return await self._reads.answer(self._scheduler.placement_history.remote(window_s))

    # ------------------------------------------------------------------ resource sharing

    async def sharing_status(self) -> SharingStatus:
        """Allocations, pending requests, shareable capacity and use per node."""
        return await self._call_sharing("status")

    async def request_resources(self, body: SharingRequest | dict[str, Any],
                                caller: Caller | None = None) -> Allocation:
        """A node borrows capacity: granted on a donor now, or queued (see its `state`). Only
        `caller` (who sent it over HTTP) may release it; a handle call's belongs to the cluster."""
        if not isinstance(body, SharingRequest):
            try:
                body = SharingRequest.model_validate(body)
            except ValidationError as exc:
                field, message = describe_error(exc.errors()[0])
                raise InvalidRequestError(f"invalid sharing request: {field}: {message}", field=field) from None
        self._check_priority(body.priority, caller)
        owner, key = self._claim(caller)
        # a grant may wait for the view and then for its placement group: a shorter wait would
        # tell its caller 503 about an allocation already made
        record = await self._call_sharing("request", body, owner, within_s=SHARING_REQUEST_S)
        await self._tell_scheduler_sharing_changed()
        return record.model_copy(update={"owner_key": key}) if key else record

    async def get_sharing(self, record_id: str) -> Allocation:
        return await self._call_sharing("get", record_id)

    async def release_resources(self, record_id: str, caller: Caller | None = None) -> Allocation:
        """End an allocation (running tasks finish first) or withdraw a pending request."""
        record = await self._call_sharing("release", record_id, caller)
        await self._tell_scheduler_sharing_changed()
        return record

    async def _call_sharing(self, method: str, *args: Any, within_s: float = PEER_ANSWER_S) -> Any:
        if self._sharing is None:
            raise NotFoundError("resource sharing is not part of this deployment", field="resource_sharing")
        return await answer_within(getattr(self._sharing, method).remote(*args), within_s, "the SharingManager")

    async def _tell_scheduler_sharing_changed(self) -> None:
        """A nudge (the Scheduler also reads the allocations each interval): one it does not take
        in time must not fail a request the SharingManager already recorded."""
        try:
            await call_with_timeout(self._scheduler.sharing_changed.remote(), PEER_ANSWER_S)
        except Exception as exc:
            logger.warning("could not tell the Scheduler that sharing changed (%s); it reads it within an interval",
                           type(exc).__name__)

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

    @fastapi_app.get(f"/{API_VERSION}/strategies")
    async def http_strategies(self) -> list[dict[str, Any]]:
        """Each strategy's name (what `strategy` takes, any case), what it chooses, what makes a
        task wait for it, and its scorers with their weights."""
        return await self.list_strategies()

    @fastapi_app.post(f"/{API_VERSION}/jobs", response_model=JobStatus, response_model_exclude_none=True)
    async def http_submit(self, body: JobSubmission, request: Request) -> JSONResponse:
        if body.result_refs:
            raise InvalidRequestError("result_refs keeps results as Ray ObjectRefs, which cannot travel over HTTP; "
                                      "submit through the handle (HandleClient) for them", field="result_refs")
        status = await self._submit(body, None, caller_of(request))
        code = 200 if status.state in ("succeeded", "failed", "cancelled") else 202
        return FiniteJSONResponse(status.model_dump(mode="json", exclude_none=True), status_code=code)

    @fastapi_app.get(f"/{API_VERSION}/jobs", response_model=list[JobStatus], response_model_exclude_none=True)
    async def http_jobs(self, limit: int = Query(100, ge=1, le=1000),
                        offset: int = Query(0, ge=0, le=10**9)) -> list[JobStatus]:
        return await self.list_jobs(limit, offset)

    @fastapi_app.get(f"/{API_VERSION}/jobs/{{job_id}}", response_model=JobStatus, response_model_exclude_none=True)
    async def http_job(self, job_id: str, request: Request, results: bool = Query(False),
                       wait_s: float = Query(0.0, ge=0, le=3600)) -> JobStatus:
        """With tokens, only the job's maker reads its results (403 on `results`); its status stays open."""
        reader = AccessGuard.policy.results_reader(caller_of(request))
        if wait_s:
            return await self.wait_job(job_id, wait_s, results, reader)
        return await self.get_job(job_id, results, reader)

    @fastapi_app.delete(f"/{API_VERSION}/jobs/{{job_id}}", response_model=JobStatus, response_model_exclude_none=True)
    async def http_cancel(self, job_id: str, request: Request) -> JobStatus:
        """Only whoever made the job may cancel it: its token identity, or its owner key."""
        return await self.cancel_job(job_id, caller_of(request))

    @fastapi_app.get(f"/{API_VERSION}/decisions", response_model=RecentDecisions)
    async def http_decisions(self, limit: int = Query(50, ge=0, le=500),
                             job_id: str | None = Query(None, description="only this job's (its latest 100)")
                             ) -> RecentDecisions:
        """Recent placement decisions, newest first, each with the reasons its node won."""
        return await self.recent_decisions(limit, job_id)

    @fastapi_app.get(f"/{API_VERSION}/placements", response_model=PlacementHistory)
    async def http_placements(self, window_s: float = Query(600.0, gt=0, le=900)) -> PlacementHistory:
        """Tasks placed per node over the last `window_s` seconds, in 10 s buckets."""
        return await self.placement_history(window_s)

    @fastapi_app.post(f"/{API_VERSION}/schedule", response_model=SchedulingDecision)
    async def http_schedule(self, body: SchedulingRequest, request: Request,
                            lease_s: float = Query(300.0, gt=0, le=86400,
                                                   description="at most max_schedule_lease_s (an hour by default)"),
                            wait_s: float = Query(30.0, ge=0, le=600)) -> SchedulingDecision:
        return await self.schedule(body, lease_s, wait_s, caller_of(request))

    @fastapi_app.post(f"/{API_VERSION}/schedule/{{task_id}}/complete")
    async def http_complete(self, task_id: str, request: Request,
                            body: CompletionReport | None = None) -> dict[str, Any]:
        """Only whoever made the reservation may complete it: its token identity, or its owner key."""
        return await self.complete(task_id, body.ok if body else True, body.duration_s if body else None,
                                   caller_of(request))

    @fastapi_app.get(f"/{API_VERSION}/sharing", response_model=SharingStatus)
    async def http_sharing_status(self) -> SharingStatus:
        return await self.sharing_status()

    @fastapi_app.post(f"/{API_VERSION}/sharing", response_model=Allocation)
    async def http_sharing_request(self, body: SharingRequest, request: Request) -> JSONResponse:
        record = await self.request_resources(body, caller_of(request))
        return FiniteJSONResponse(record.model_dump(mode="json"), status_code=201 if record.state == "active" else 202)

    @fastapi_app.get(f"/{API_VERSION}/sharing/{{record_id}}", response_model=Allocation)
    async def http_sharing_get(self, record_id: str) -> Allocation:
        return await self.get_sharing(record_id)

    @fastapi_app.post(f"/{API_VERSION}/sharing/{{record_id}}/release", response_model=Allocation)
    async def http_sharing_release(self, record_id: str, request: Request) -> Allocation:
        """Only whoever made the allocation may release it: its token identity, or its owner key."""
        return await self.release_resources(record_id, caller_of(request))
