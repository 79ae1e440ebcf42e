"""Ingress: the HTTP API (`/v1/...`) and the handle API, over the same methods.

(No `from __future__ import annotations` here: FastAPI must resolve the route annotations.)

Jobs run in a JobRunner actor (`runner.py`): each Ingress replica makes one and hands it the
jobs submitted through it; a job id starts with its runner's tag, so any replica finds the
runner of any job by name. `/v1/schedule` decisions and resource sharing go straight to the
Scheduler and the SharingManager. The handle methods are the API; the HTTP routes at the
bottom are thin wrappers around them.
"""


import asyncio
import contextlib
import math
import os
import time
import uuid
from typing import Any, Callable, Iterator

import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.actor import ActorHandle
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.handle import DeploymentHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException

from grid_serve import ui
from grid_serve.access import CLUSTER_OWNER, LOOPBACK_HOSTS, AccessPolicy, Caller, parse_tokens
from grid_serve.caller_code import CallerCode
from grid_serve.errors import (
    ForbiddenError,
    GridError,
    InvalidRequestError,
    NoCapacityError,
    NotFoundError,
    TooBusyError,
    UnavailableError,
    describe_error,
    plain_seconds,
    require_id,
    require_number,
)
from grid_serve.handles import stop_safe
from grid_serve.ledger import EXTERNAL_PREFIX, Completion
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
    non_finite_path,
)
from grid_serve.protocol import Submit
from grid_serve.sharing import Allocation, SharingRequest, SharingStatus
from grid_serve.tasks import TaskType, load_task_modules

from ._common import COORDINATOR_OPTIONS, call_with_timeout, grid_call, logger, spawn
from .runner import RUNNER_NAMESPACE, TAG_LEN, JobRunner, is_runner_of, runner_name

API_VERSION = "v1"


class CompletionReport(BaseModel):
    """Body of `/v1/schedule/{task_id}/complete`: how the externally run task went."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ok: bool = True
    duration_s: float | None = Field(None, ge=0)


class Problem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what went wrong, and the field it is about when there is one."""

    error: str
    field: str | None = None
    problems: list[Problem] | None = Field(None, description="every invalid field, for validation errors")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "bad request"), (401, "this route needs the API token (token_env)"),
                         (403, "a foreign Host header, a cross-site browser request, another caller's job, "
                               "reservation or allocation, or critical priority not allowed to this caller"),
                         (404, "no such job, reservation or allocation"),
                         (410, "a finished job's results were dropped (results_bytes_kept)"),
                         (422, "invalid request: the body or a parameter, named in `field`"),
                         (429, "busy, try later: the queue or the waiting requests are at their cap, or no node had "
                               "room within wait_s; retry after Retry-After seconds"),
                         (503, "something the app relies on failed (Ray's GCS): nothing was done; retry"))
}

HEALTH_MAX_AGE_S = 0.5
MAX_WAIT_S = 3600.0
RUNNER_ANSWER_S = 10.0  # a runner answers a read or a cancel within this (beyond a wait), or it is called stopped
_RunnerActor = ray.remote(JobRunner)


def _caller(request: Request) -> Caller:
    """Who sent this HTTP request, as the replica's access policy sees it."""
    return AccessGuard.policy.caller(request.headers)


class FiniteJSONResponse(JSONResponse):
    """JSON that a task's NaN or infinity cannot turn into a 500: strict JSON has no such
    numbers, so they go out as null (the common case pays one failed attempt only when they occur)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            if non_finite_path(content) is None:
                raise
            return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


fastapi_app = FastAPI(
    title="grid-serve",
    version="0.1.0",
    description="Task placement for Ray: spread, load_balanced, performance_optimized, node_specific, pack.",
    default_response_class=FiniteJSONResponse,
    responses=ERROR_RESPONSES,
    docs_url=None,  # served below from the package: FastAPI's own pages load their scripts from a CDN
    redoc_url=None,
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


class AccessGuard:
    """Refuses foreign hosts, cross-site browser requests and missing tokens (grid_serve.access)
    before any route runs. The policy is the replica's own: its Ingress sets `policy` at start."""

    policy = AccessPolicy()

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            query = dict(QueryParams(scope.get("query_string", b"")))  # as the routes read it: the last value wins
            refusal = AccessGuard.policy.refusal(scope["method"], scope["path"], query, headers,
                                                 scope.get("root_path", ""))
            if refusal is not None:
                extra = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
                response = JSONResponse({"error": refusal.message, "field": refusal.field}, status_code=refusal.status,
                                        headers=extra)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


fastapi_app.add_middleware(AccessGuard)  # added last: runs first


@fastapi_app.exception_handler(GridError)
async def _grid_error(request: Request, exc: GridError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry_after)} if exc.status == 429 and retry_after else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [dict(zip(("field", "message"), describe_error(err))) for err in exc.errors()]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse({"error": f"invalid request: {summary}", "field": problems[0]["field"] if problems else None,
                         "problems": problems}, status_code=422)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals in our shape: a body it cannot parse (one nested past what Python's
    JSON parser takes) is 400 on `body`; an unknown route is 404."""
    body: dict[str, Any] = {"error": str(exc.detail)}
    if exc.status_code == 400:
        body["field"] = "body"
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


@fastapi_app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def _docs_response(page: HTMLResponse) -> HTMLResponse:
    """An API docs page, held by the browser to this app's own files and routes."""
    page.headers["Content-Security-Policy"] = ui.DOCS_CONTENT_SECURITY_POLICY
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def _asset_response(name: str) -> Response:
    """A file of the page, or 404. `no-cache`: a browser revalidates, so an upgraded app never
    runs yesterday's script against today's API."""
    try:
        found = ui.asset(name)
    except KeyError:
        raise NotFoundError(f"no page file {name!r}", field="name") from None
    return Response(found.body, media_type=found.media_type,
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": ui.CONTENT_SECURITY_POLICY})


def head_node_id() -> str:
    """The head node's id (Ray gives it the resource `node:__internal_head__`); this node's when
    no live node says so."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return ray.get_runtime_context().get_node_id()


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
        self._waiting_requests = 0
        self._schedule_waits = 0  # /v1/schedule requests waiting for room now (max_schedule_waits)
        self._scheduler = stop_safe(scheduler)
        self._unheard: set[asyncio.Task] = set()  # releases of /v1/schedule requests whose caller left
        self._sharing = stop_safe(sharing)
        self._lb = load_balancer
        self._metrics = metrics
        self._task_modules = task_modules or ["grid_serve.tasks"]
        self._tasks: dict[str, TaskType] = load_task_modules(self._task_modules)
        self._interval_s = interval_s
        self._chunk_s = chunk_ms / 1000.0
        context = ray.get_runtime_context()
        self._namespace = RUNNER_NAMESPACE
        self._app = serve.get_replica_context().app_name
        own_name = context.get_actor_name()
        self._parent = (own_name, SERVE_NAMESPACE) if own_name else None
        self._runner_node = head_node_id()  # where its runners live (it never changes)
        self._tag, self._runner = self._take_over_orphan() or self._new_runner()
        self._status_call: asyncio.Future | None = None
        self._health_status: tuple[float, ClusterStatus] | None = None  # (monotonic time, status)

    def _take_over_orphan(self) -> tuple[str, ActorHandle] | None:
        """A runner of this app whose Ingress replica is gone, made this replica's own (its tag
        and its jobs with it): a killed or replaced replica's jobs stay readable, listed and
        cancellable, and no runner is left behind. None when there is none to take."""
        if self._parent is None:
            return None
        for name in self._runner_names():
            try:
                runner = ray.get_actor(name, namespace=self._namespace)
                taken = ray.get(runner.take_over.remote(self._parent, self._limits, self._interval_s, self._chunk_s),
                                timeout=RUNNER_ANSWER_S)
            except Exception:  # gone meanwhile, or not answering: not one to take
                continue
            if taken:
                logger.info("Ingress replica %s took over runner %s and its jobs", self._parent[0], name)
                return name.rsplit("-", 1)[1], runner
        return None

    def _runner_names(self) -> list[str]:
        """This app's runners on the cluster, every replica's (a GCS lookup: it blocks)."""
        return sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                      if entry["namespace"] == self._namespace and is_runner_of(entry["name"], self._app))

    def _new_runner(self) -> tuple[str, ActorHandle]:
        """A new tag and a runner started under it."""
        tag = uuid.uuid4().hex[:TAG_LEN]
        return tag, self._start_runner(tag)

    def _start_runner(self, tag: str) -> ActorHandle:
        """This replica's JobRunner: detached, so jobs outlive a replaced replica, on the head node,
        so that no worker node's death takes a runner's jobs and results with it (the head's
        takes the cluster's GCS anyway)."""
        return _RunnerActor.options(
            name=runner_name(self._app, tag), namespace=self._namespace, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_concurrency=10_000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self._runner_node, soft=False),
        ).remote(self._scheduler.handle, self._task_modules, runner_name(self._app, tag), tag,
                 self._parent, self._interval_s, self._limits, self._chunk_s)

    # ================================================================== handle API

    async def health(self) -> dict[str, Any]:
        """Liveness with node and queue counts, from a cluster status at most
        HEALTH_MAX_AGE_S old: probes poll this often, and a Scheduler round trip per probe
        cost much of the route's rate (bench/http_api.py; BENCHMARKS.md). /v1/cluster stays exact."""
        cached = self._health_status
        if cached is not None and time.monotonic() - cached[0] < HEALTH_MAX_AGE_S:
            status = cached[1]
        else:
            status = await self._shared_cluster_status()
            self._health_status = (time.monotonic(), status)
        alive = sum(1 for node in status.nodes if node.alive)
        stale = sum(1 for node in status.nodes if node.alive and node.stale)
        return {"status": "degraded" if stale else "ok", "nodes_alive": alive, "nodes_stale": stale,
                "nodes": len(status.nodes), "queued": status.queued, "jobs_running": status.jobs_running,
                "snapshot_age_s": round(status.snapshot_age_s, 2)}

    async def cluster_status(self) -> ClusterStatus:
        return await self._shared_cluster_status()

    async def _shared_cluster_status(self) -> ClusterStatus:
        """One Scheduler call serves every status request that arrives while it is in flight.

        Under load the status routes cost a Scheduler round trip per request, which cut
        their rate well below a bare Serve deployment's (bench/http_api.py; BENCHMARKS.md); sharing the call in
        flight keeps every answer no older than one round trip and fails all alike.
        """
        if self._status_call is None or self._status_call.done():
            self._status_call = asyncio.ensure_future(self._scheduler.cluster_status.remote())
        return await asyncio.shield(self._status_call)

    async def list_tasks(self) -> list[dict[str, Any]]:
        return [{"name": t.name, "description": t.description, "requirements": t.requirements.model_dump()}
                for t in sorted(self._tasks.values(), key=lambda t: t.name)]

    async def submit_job(self, spec: JobSubmission | dict[str, Any],
                         fn: Callable[..., Any] | CallerCode | None = None) -> JobStatus:
        """Start a job. Handle callers may pass their own function `fn` instead of a task name;
        then `spec.task` only labels it. Waits for the results when `spec.wait` is set. A
        `CallerCode` (what `HandleClient` sends) stays packed here and in the runner."""
        return await self._submit(spec, fn, None)

    async def _submit(self, spec: JobSubmission | dict[str, Any], fn: Callable[..., Any] | CallerCode | None,
                      caller: Caller | None) -> JobStatus:
        """`caller`: who sent it over HTTP (None: a handle call, trusted inside the cluster)."""
        spec = spec if isinstance(spec, JobSubmission) else JobSubmission.model_validate(spec)
        self._check_priority(spec.priority, caller)
        owner, key = self._claim(caller)
        with self._waiting_slot(spec.wait):
            try:  # the runner resolves the task name (an unknown one comes back as its 422)
                status = await grid_call(self._runner.submit_job.remote(spec, fn, owner))
            except ray.exceptions.RayActorError:  # the runner was killed: start a new one for new jobs
                self._replace_runner("was killed")
                status = await grid_call(self._runner.submit_job.remote(spec, fn, owner))
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

    @contextlib.contextmanager
    def _waiting_slot(self, waits: bool) -> Iterator[None]:
        """Count a request that waits for a job; past `max_waiting_requests` it is turned away
        (429), so waiting clients never take every slot the health and status routes need."""
        if not waits:
            yield
            return
        if self._waiting_requests >= self._limits.max_waiting_requests:
            raise TooBusyError(f"{self._waiting_requests} requests already wait for jobs on this replica "
                               f"(max_waiting_requests); ask again, or poll without waiting",
                               field="wait", retry_after_s=self._limits.retry_after_s)
        self._waiting_requests += 1
        try:
            yield
        finally:
            self._waiting_requests -= 1

    async def check_health(self) -> None:
        """Serve's periodic health check: a runner that died is replaced, so this replica
        keeps taking jobs even when no submission has come through it since."""
        try:
            await call_with_timeout(self._runner.ping.remote(), RUNNER_ANSWER_S)
        except ray.exceptions.RayActorError:
            self._replace_runner("is gone")
        except asyncio.TimeoutError:  # stopped or stuck: its jobs stay its own, new ones go to another
            self._runner.retire.remote()  # heard once it answers again
            self._replace_runner(f"did not answer within {RUNNER_ANSWER_S:g} s")

    def _replace_runner(self, why: str) -> None:
        logger.warning("runner %s %s; starting a new one", runner_name(self._app, self._tag), why)
        self._tag, self._runner = self._new_runner()

    async def get_job(self, job_id: str, results: bool = False, reader: Caller | None = None) -> JobStatus:
        """`reader` (HTTP with tokens only) must own the job to read its results."""
        runner = await self._runner_of(job_id)
        return await self._runner_answer(job_id, runner.get_job.remote(job_id, bool(results), reader))

    async def wait_job(self, job_id: str, timeout_s: float = 600.0, results: bool = True,
                       reader: Caller | None = None) -> JobStatus:
        timeout_s = require_number("timeout_s", timeout_s, 0, MAX_WAIT_S)
        with self._waiting_slot(timeout_s > 0):
            runner = await self._runner_of(job_id)
            return await self._runner_answer(job_id, runner.wait_job.remote(job_id, timeout_s, bool(results), reader),
                                             beyond_s=timeout_s)

    @staticmethod
    async def _runner_answer(job_id: str, call: Any, beyond_s: float = 0.0) -> Any:
        """A runner's answer about `job_id`, or 503 once it is RUNNER_ANSWER_S late: a stopped
        (SIGSTOP) or stuck runner must not hold the request, and the replica's slot, forever."""
        try:
            return await asyncio.wait_for(grid_call(call), beyond_s + RUNNER_ANSWER_S)
        except asyncio.TimeoutError:
            raise UnavailableError(f"the runner of job {job_id!r} did not answer within "
                                   f"{plain_seconds(beyond_s + RUNNER_ANSWER_S)} (stopped or overloaded); "
                                   "retry later", field="job_id") from None

    async def list_jobs(self, limit: int = 100, offset: int = 0) -> list[JobStatus]:
        """Every runner's jobs, newest first, `limit` of them from `offset`. The web page asks
        every second: the GCS lookup of the runners runs off the replica's event loop (it
        blocks), and the runners answer at once."""
        limit = int(require_number("limit", limit, 1, 1000))
        offset = int(require_number("offset", offset, 0, 10**9))
        runners = await asyncio.to_thread(self._runner_names)
        answers = await asyncio.gather(*(self._jobs_of_runner(name) for name in runners))
        jobs = sorted((job for jobs in answers for job in jobs), key=lambda job: job.submitted_at, reverse=True)
        return jobs[offset:offset + limit]

    async def _jobs_of_runner(self, name: str) -> list[JobStatus]:
        try:
            return await asyncio.wait_for(ray.get_actor(name, namespace=self._namespace).list_jobs.remote(),
                                          RUNNER_ANSWER_S)
        except (ValueError, ray.exceptions.RayActorError):
            return []  # a runner that just exited has no jobs left to list
        except asyncio.TimeoutError:  # stopped or stuck: the others' jobs are still listed
            logger.warning("runner %s did not answer within %g s; its jobs are left out of the list",
                           name, RUNNER_ANSWER_S)
            return []

    async def cancel_job(self, job_id: str, caller: Caller | None = None) -> JobStatus:
        """`caller` (HTTP only) must own the job; handle calls may cancel any job."""
        runner = await self._runner_of(job_id)
        return await self._runner_answer(job_id, runner.cancel_job.remote(job_id, caller))

    async def _runner_of(self, job_id: str) -> ActorHandle:
        """The runner that holds `job_id` (its id starts with the runner's tag)."""
        tag = require_id("job_id", job_id)[:TAG_LEN]
        if tag == self._tag:
            return self._runner
        try:
            return ray.get_actor(runner_name(self._app, tag), namespace=self._namespace)
        except ValueError:  # no such runner: a bad id, or the runner died with its jobs
            fate = await self._scheduler.job_fate.remote(job_id)
            raise NotFoundError(f"no job {job_id!r}" + (f": {fate}" if fate else ""), field="job_id") from None

    async def schedule(self, request: SchedulingRequest | dict[str, Any], lease_s: float = 300.0,
                       wait_s: float = 30.0, caller: Caller | None = None) -> SchedulingDecision:
        """Decide and reserve a node for a task the caller will submit itself. The reservation
        holds until `complete(task_id)` or until the lease runs out. Each such task is its own
        group (a `job_id` is ignored), so its decision can never be delivered to anyone else,
        and its id lives apart from jobs' task ids (`EXTERNAL_PREFIX`). Only `caller` (who sent
        it over HTTP) may complete it; a handle call's belongs to the cluster."""
        request = request if isinstance(request, SchedulingRequest) else SchedulingRequest.model_validate(request)
        lease_s = require_number("lease_s", lease_s, 0, 86400, low_open=True)
        wait_s = require_number("wait_s", wait_s, 0, 600)
        self._check_priority(request.priority, caller)
        owner, key = self._claim(caller)
        inner = request.model_copy(update={"task_id": EXTERNAL_PREFIX + request.task_id, "job_id": None})
        request_key = uuid.uuid4().hex  # this request's alone: a hang-up releases only what it made
        with self._schedule_wait_slot():
            try:
                placements = await self._scheduler.submit.remote(Submit(requests=[inner], lease_s=lease_s, owner=owner,
                                                                        request_key=request_key))
                deadline = time.monotonic() + wait_s
                while not placements.placed and not placements.rejected and time.monotonic() < deadline:
                    placements = await self._scheduler.wait_placed.remote(inner.group, min(5.0, wait_s))
            except asyncio.CancelledError:  # the caller went away (its connection closed) before it heard the decision
                self._forget_unheard(inner.task_id, request_key)
                raise
        if placements.rejected:
            reason = placements.rejected[0].reason.replace(repr(inner.task_id), repr(request.task_id))
            raise InvalidRequestError(reason, field="task_id" if reason.startswith("task id") else "requirements")
        if not placements.placed:
            await self._scheduler.finished.remote(inner.group)
            raise NoCapacityError(f"no node had room for task {request.task_id} within {plain_seconds(wait_s)}; the "
                                  "cluster is busy: try again later, or wait longer (wait_s)", field="wait_s",
                                  retry_after_s=self._limits.retry_after_s)
        return placements.placed[0].model_copy(update={"task_id": request.task_id, "owner_key": key})

    @contextlib.contextmanager
    def _schedule_wait_slot(self) -> Iterator[None]:
        """Count a /v1/schedule request while it may wait: each holds a long-poll in the Scheduler,
        whose request slots the runners' lease renewals share, so past `max_schedule_waits` per
        replica it is turned away (429) before it can take them."""
        if self._schedule_waits >= self._limits.max_schedule_waits:
            raise TooBusyError(f"{self._schedule_waits} /v1/schedule requests already wait on this replica "
                               "(max_schedule_waits); ask again later", field="wait_s",
                               retry_after_s=self._limits.retry_after_s)
        self._schedule_waits += 1
        try:
            yield
        finally:
            self._schedule_waits -= 1

    def _forget_unheard(self, task_id: str, request_key: str) -> None:
        """A /v1/schedule request whose caller left before its answer: nobody got its owner key,
        so nobody could ever release it; released now (or dropped from the queue), not held for
        its lease. In a task of its own: the request's own task is being cancelled."""
        spawn(self._unheard, self._scheduler.abandon.remote(task_id, request_key),
              f"release /v1/schedule request {task_id} whose caller left (its lease ends it)")

    async def complete(self, task_id: str, ok: bool = True, duration_s: float | None = None,
                       caller: Caller | None = None) -> dict[str, Any]:
        require_id("task_id", task_id)
        if duration_s is not None:
            duration_s = require_number("duration_s", duration_s, 0, 1e9)
        completion = Completion(task_id=EXTERNAL_PREFIX + task_id, ok=bool(ok), duration_s=duration_s)
        if not await grid_call(self._scheduler.complete_external.remote(completion, caller)):
            raise NotFoundError(f"no /v1/schedule reservation for task {task_id!r} (already released, expired, "
                                "or a job's task, which its job releases)", field="task_id")
        return {"task_id": task_id, "released": True}

    async def recent_decisions(self, limit: int = 50, job_id: str | None = None) -> RecentDecisions:
        """The Scheduler's latest decisions with their reasons; one job's when `job_id` is given."""
        return await self._scheduler.recent_decisions.remote(limit, job_id)

    async def placement_history(self, window_s: float = 600.0) -> PlacementHistory:
        return await self._scheduler.placement_history.remote(window_s)

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
        record = await self._call_sharing("request", body, owner)
        await self._scheduler.sharing_changed.remote()
        return record.model_copy(update={"owner_key": key}) if key else record

    async def get_sharing(self, record_id: str) -> Allocation:
        return await self._call_sharing("get", record_id)

    async def release_resources(self, record_id: str, caller: Caller | None = None) -> Allocation:
        """End an allocation (running tasks finish first) or withdraw a pending request."""
        record = await self._call_sharing("release", record_id, caller)
        await self._scheduler.sharing_changed.remote()
        return record

    async def _call_sharing(self, method: str, *args: Any) -> Any:
        if self._sharing is None:
            raise NotFoundError("resource sharing is not part of this deployment", field="resource_sharing")
        return await grid_call(getattr(self._sharing, method).remote(*args))

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
    async def http_submit(self, body: JobSubmission, request: Request) -> JSONResponse:
        status = await self._submit(body, None, _caller(request))
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
        reader = AccessGuard.policy.results_reader(_caller(request))
        if wait_s:
            return await self.wait_job(job_id, wait_s, results, reader)
        return await self.get_job(job_id, results, reader)

    @fastapi_app.delete(f"/{API_VERSION}/jobs/{{job_id}}", response_model=JobStatus, response_model_exclude_none=True)
    async def http_cancel(self, job_id: str, request: Request) -> JobStatus:
        """Only whoever made the job may cancel it: its token identity, or its owner key."""
        return await self.cancel_job(job_id, _caller(request))

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
                            lease_s: float = Query(300.0, gt=0, le=86400),
                            wait_s: float = Query(30.0, ge=0, le=600)) -> SchedulingDecision:
        return await self.schedule(body, lease_s, wait_s, _caller(request))

    @fastapi_app.post(f"/{API_VERSION}/schedule/{{task_id}}/complete")
    async def http_complete(self, task_id: str, request: Request,
                            body: CompletionReport | None = None) -> dict[str, Any]:
        """Only whoever made the reservation may complete it: its token identity, or its owner key."""
        return await self.complete(task_id, body.ok if body else True, body.duration_s if body else None,
                                   _caller(request))

    @fastapi_app.get(f"/{API_VERSION}/sharing", response_model=SharingStatus)
    async def http_sharing_status(self) -> SharingStatus:
        return await self.sharing_status()

    @fastapi_app.post(f"/{API_VERSION}/sharing", response_model=Allocation)
    async def http_sharing_request(self, body: SharingRequest, request: Request) -> JSONResponse:
        record = await self.request_resources(body, _caller(request))
        return FiniteJSONResponse(record.model_dump(mode="json"), status_code=201 if record.state == "active" else 202)

    @fastapi_app.get(f"/{API_VERSION}/sharing/{{record_id}}", response_model=Allocation)
    async def http_sharing_get(self, record_id: str) -> Allocation:
        return await self.get_sharing(record_id)

    @fastapi_app.post(f"/{API_VERSION}/sharing/{{record_id}}/release", response_model=Allocation)
    async def http_sharing_release(self, record_id: str, request: Request) -> Allocation:
        """Only whoever made the allocation may release it: its token identity, or its owner key."""
        return await self.release_resources(record_id, _caller(request))

    # ================================================================== the web page

    @fastapi_app.get("/", include_in_schema=False)
    async def http_root(self, request: Request) -> RedirectResponse:
        """`/` is the page: people open the bare address in a browser."""
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui", status_code=307)

    @fastapi_app.get("/ui", include_in_schema=False)
    async def http_ui(self) -> Response:
        return _asset_response("index.html")

    @fastapi_app.get("/ui/{name}", include_in_schema=False)
    async def http_ui_asset(self, name: str) -> Response:
        return _asset_response(name)

    # ================================================================== the API docs, offline

    @fastapi_app.get("/docs", include_in_schema=False)
    async def http_docs(self, request: Request) -> HTMLResponse:
        """Swagger UI from the package's files: clusters often have no internet."""
        root = request.scope.get("root_path", "")
        return _docs_response(get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title="grid-serve API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css", swagger_favicon_url=f"{root}/ui/icon.svg",
            swagger_ui_parameters={"validatorUrl": None}))  # its default sends the document to a public validator

    @fastapi_app.get("/redoc", include_in_schema=False)
    async def http_redoc(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _docs_response(get_redoc_html(
            openapi_url=f"{root}/openapi.json", title="grid-serve API",
            redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/ui/icon.svg", with_google_fonts=False))

    @fastapi_app.get("/docs/assets/{name}", include_in_schema=False)
    async def http_docs_asset(self, name: str) -> Response:
        try:
            found = ui.docs_asset(name)
        except KeyError:
            raise NotFoundError(f"no docs file {name!r}", field="name") from None
        return Response(found.body, media_type=found.media_type,
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

