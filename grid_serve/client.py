"""Typed clients: over HTTP (`GridClient`) and over a Serve handle (`HandleClient`).

Both speak the models in `grid_serve.models` and raise `GridError`s, so code can switch
between them. `IntelligentScheduler` is the user guide's name for the handle-side scheduler:

    scheduler = IntelligentScheduler.connect()
    decision = await scheduler.schedule_task(request)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from .access import CLUSTER_OWNER, OWNER_KEY_HEADER
from .caller_code import CallerCode
from .caller_jobs import RESULTS_SENT_BYTES, CallerJobs, Keeping, runs_in_caller
from .handles import connect_ray, ray_address, stop_safe  # noqa: F401 (ray_address: re-exported)
from .errors import ForbiddenError, GoneError, GridError, InvalidRequestError, NotFoundError, TooBusyError, UnavailableError
from .models import (ClusterStatus, JobStatus, JobSubmission, RecentDecisions, SchedulingDecision, SchedulingRequest,
                     is_object_ref)
from .queues import queue_of_ray_job
from .sharing import Allocation, SharingRequest, SharingStatus

DEFAULT_ADDRESS = "http://127.0.0.1:8000"
APP_NAME = "grid"
_ERRORS_BY_STATUS = {403: ForbiddenError, 404: NotFoundError, 410: GoneError, 422: InvalidRequestError, 429: TooBusyError, 503: UnavailableError}


class AppUnreachableError(GridError):
    """Nothing answered at the address: the app is not running there."""

    status = 503


def default_address() -> str:
    """The app's HTTP address: $GRID_ADDRESS, else what `grid up` started, else :8000."""
    if os.environ.get("GRID_ADDRESS"):
        return os.environ["GRID_ADDRESS"].rstrip("/")
    from .local_cluster import read_state

    state = read_state()
    return (state or {}).get("http", DEFAULT_ADDRESS).rstrip("/")


def app_handle(app_name: str = APP_NAME) -> Any:
    """The running grid app's Serve handle, joining its Ray cluster first if needed."""
    from ray import serve

    connect_ray()
    return serve.get_app_handle(app_name)


class OwnerKeys:
    """The owner keys of what a client made (without a token, only their holder may cancel,
    complete or release it): kept in memory, or in a file when given one (the CLI keeps
    them in `$GRID_HOME/owner-keys.json`, so `release` in one command finds what `request`
    made in another). The newest `KEPT` are kept.

    Several `grid` commands may run at once: each write takes a lock (`flock` on a file
    beside it), reads what the others wrote meanwhile, adds its own key and replaces the
    file whole (a temporary file, created with mode 600, then `os.replace`), so no key is
    lost, no reader sees half a file, and no other user can ever read one."""

    KEPT = 1000

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._keys: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text()) if self._path else {}
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def remember(self, what: str, key: str | None) -> None:
        if not key:
            return
        if self._path is None:
            self._add(what, key)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._keys = {**self._load(), **{k: v for k, v in self._keys.items() if k != what}}
            self._add(what, key)
            self._write()

    def _add(self, what: str, key: str) -> None:
        self._keys.pop(what, None)
        self._keys[what] = key  # last, as the newest
        while len(self._keys) > self.KEPT:
            del self._keys[next(iter(self._keys))]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Only one writer at a time, across processes (released if the process dies)."""
        assert self._path is not None
        fd = os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _write(self) -> None:
        """The whole file at once: a private temporary file beside it, then renamed over it."""
        assert self._path is not None
        temporary = f"{self._path}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # new, so made private: a key lets its holder cancel
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self._keys, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def headers(self, what: str) -> dict[str, str]:
        key = self._keys.get(what)
        return {OWNER_KEY_HEADER: key} if key else {}


class GridClient:
    """The HTTP API, typed. `GridClient()` talks to `$GRID_ADDRESS` or http://127.0.0.1:8000.

    Sends `$GRID_TOKEN` when set; remembers the owner key of each job, reservation and
    allocation it makes and sends it back to cancel, complete or release them."""

    def __init__(self, address: str | None = None, timeout_s: float = 30.0, owner_keys: OwnerKeys | None = None) -> None:
        self.address = (address or default_address()).rstrip("/")
        token = os.environ.get("GRID_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=self.address, timeout=timeout_s, headers=headers)
        self.owner_keys = owner_keys or OwnerKeys()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GridClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, timeout_s: float | None = None, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, timeout=timeout_s or self._http.timeout, **kwargs)
        except httpx.TransportError as exc:
            raise AppUnreachableError(
                f"grid-serve is not reachable at {self.address} ({type(exc).__name__}); "
                "start it with `grid up --local` or point --address / GRID_ADDRESS at it"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or "error" not in body:  # not our API answering
                raise AppUnreachableError(
                    f"no grid-serve app answers at {self.address} (HTTP {response.status_code} for {path}: "
                    f"{response.text[:120].strip() or response.reason_phrase}); start it with `grid up --local`")
            message, field = body["error"], body.get("field")
            error = _ERRORS_BY_STATUS.get(response.status_code, GridError)(message, field)
            error.status = response.status_code
            raise error
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health", timeout_s=5.0)

    def cluster_status(self) -> ClusterStatus:
        return ClusterStatus.model_validate(self._call("GET", "/v1/cluster"))

    def list_tasks(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/tasks")

    def list_strategies(self) -> list[dict[str, Any]]:
        """The placement strategies the app runs: name, what each chooses, what makes a task wait."""
        return self._call("GET", "/v1/strategies")

    def submit_job(self, spec: JobSubmission | dict[str, Any]) -> JobStatus:
        spec = spec if isinstance(spec, JobSubmission) else JobSubmission.model_validate(spec)
        body = spec.model_dump(mode="json", exclude_none=True)
        timeout = spec.timeout_s + 30 if spec.wait else None
        status = JobStatus.model_validate(self._call("POST", "/v1/jobs", json=body, timeout_s=timeout))
        self.owner_keys.remember(f"job/{status.job_id}", status.owner_key)
        return status

    def get_job(self, job_id: str, results: bool = False) -> JobStatus:
        return JobStatus.model_validate(self._call("GET", f"/v1/jobs/{job_id}", params={"results": results}))

    def wait_job(self, job_id: str, timeout_s: float = 600.0, results: bool = True) -> JobStatus:
        params = {"results": results, "wait_s": timeout_s}
        return JobStatus.model_validate(self._call("GET", f"/v1/jobs/{job_id}", params=params, timeout_s=timeout_s + 30))

    def list_jobs(self, limit: int = 100, offset: int = 0) -> list[JobStatus]:
        """Jobs, newest first: `limit` (at most 1,000) from `offset`."""
        return [JobStatus.model_validate(job)
                for job in self._call("GET", "/v1/jobs", params={"limit": limit, "offset": offset})]

    def cancel_job(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._call("DELETE", f"/v1/jobs/{job_id}",
                                                   headers=self.owner_keys.headers(f"job/{job_id}")))

    def recent_decisions(self, limit: int = 50, job_id: str | None = None) -> RecentDecisions:
        """Placement decisions, newest first (at most 500); one job's latest 100 with `job_id`."""
        params: dict[str, Any] = {"limit": limit} | ({"job_id": job_id} if job_id else {})
        return RecentDecisions.model_validate(self._call("GET", "/v1/decisions", params=params))

    def schedule(self, request: SchedulingRequest, lease_s: float = 300.0, wait_s: float = 30.0) -> SchedulingDecision:
        body = request.model_dump(mode="json")
        data = self._call("POST", "/v1/schedule", json=body, params={"lease_s": lease_s, "wait_s": wait_s},
                          timeout_s=wait_s + 30)
        decision = SchedulingDecision.model_validate(data)
        self.owner_keys.remember(f"schedule/{decision.task_id}", decision.owner_key)
        return decision

    def complete(self, task_id: str, ok: bool = True, duration_s: float | None = None) -> dict[str, Any]:
        return self._call("POST", f"/v1/schedule/{task_id}/complete", json={"ok": ok, "duration_s": duration_s},
                          headers=self.owner_keys.headers(f"schedule/{task_id}"))

    def sharing_status(self) -> SharingStatus:
        return SharingStatus.model_validate(self._call("GET", "/v1/sharing"))

    def request_resources(self, request: SharingRequest | dict[str, Any]) -> Allocation:
        """Borrow capacity for a node: `{"node": "gpu-master", "type": "cpu", "amount": 2, "priority": "high"}`."""
        body = request.model_dump(mode="json", exclude_none=True) if isinstance(request, SharingRequest) else request
        record = Allocation.model_validate(self._call("POST", "/v1/sharing", json=body))
        self.owner_keys.remember(f"sharing/{record.id}", record.owner_key)
        return record

    def get_sharing(self, record_id: str) -> Allocation:
        return Allocation.model_validate(self._call("GET", f"/v1/sharing/{record_id}"))

    def release_resources(self, record_id: str) -> Allocation:
        return Allocation.model_validate(self._call("POST", f"/v1/sharing/{record_id}/release",
                                                    headers=self.owner_keys.headers(f"sharing/{record_id}")))


RUNNER_REFRESH_S = 5.0  # how long a HandleClient sends jobs to the runner the Ingress last named


class HandleClient:
    """The same calls through a Serve handle, from any Ray job connected to the cluster.

    Async, since handle calls are; custom functions (not only registered task names) may be
    passed to `submit_job(spec, fn=...)`: they run in this process's runtime_env, and object
    refs among a job's arguments reach the task as their values, as in Ray. A job with
    `result_refs` leaves its results in Ray's object store: each outcome's `result` is an ObjectRef.
    """

    def __init__(self, handle: Any, stop_safe_calls: bool = False) -> None:
        """`stop_safe_calls`: call the Ingress so that this process, stopped (SIGSTOP, Ctrl-Z)
        while a call ends, cannot hold the Ingress replica's event loop until it resumes
        (`grid_serve.handles`); it cost about 7 ms a call (33 -> 40 ms per one-task job when
        jobs went through the Ingress, BENCHMARKS.md), so it is off by default. `submit_job`
        goes to the job runner by a plain actor call, which a stopped caller cannot hold."""
        self._handle = stop_safe(handle) if stop_safe_calls else handle
        self._runner: tuple[float, Any] | None = None  # (when the Ingress named it, its job runner)
        self._runner_tag = ""  # the first characters of its jobs' ids
        self._caller_jobs = CallerJobs()
        self._keeping = Keeping(on_failed=self._forget_runner)  # jobs run here, on their way to their runner

    @classmethod
    def connect(cls, app_name: str = APP_NAME, stop_safe_calls: bool = False) -> HandleClient:
        """Connect to the running app, joining its Ray cluster first if this process has not."""
        return cls(handle=app_handle(app_name), stop_safe_calls=stop_safe_calls)

    async def health(self) -> dict[str, Any]:
        return await self._handle.health.remote()

    async def cluster_status(self) -> ClusterStatus:
        return await self._handle.cluster_status.remote()

    async def list_strategies(self) -> list[dict[str, Any]]:
        return await self._handle.list_strategies.remote()

    async def submit_job(self, spec: JobSubmission | dict[str, Any], fn: Callable[..., Any] | None = None) -> JobStatus:
        """`fn` travels packed (`CallerCode`): opened only in the worker that runs it, which gets
        this process's runtime_env (working_dir, py_modules, env_vars, pip), so a function from
        the caller's own module works; `fn` may also be a `@ray.remote` function. An invalid
        `spec` raises pydantic's ValidationError here, before anything is sent (as GridClient);
        the job goes straight to the job runner of the Ingress replica this client reaches."""
        import ray

        spec = spec if isinstance(spec, JobSubmission) else JobSubmission.model_validate(spec)
        if spec.queue is None:  # its tasks wait in this program's queue (grid_serve.queues)
            spec = spec.model_copy(update={"queue": queue_of_ray_job(ray.get_runtime_context().get_job_id())})
        if fn is not None and runs_in_caller(spec, fn):
            return await self._run_here(spec, fn)
        code = CallerCode.of(getattr(fn, "_function", fn)) if fn is not None else None

        try:  # straight to the Ingress replica's job runner, as the Ingress would hand it on: one hop less
            runner = await self._job_runner()
            return await runner.submit_job.remote(spec, code, CLUSTER_OWNER)
        except ray.exceptions.RayActorError:  # the runner is gone: the Ingress starts another and runs it there
            self._runner = None
            return await self._handle.submit_job.remote(spec, code)

    async def _run_here(self, spec: JobSubmission, fn: Callable[..., Any]) -> JobStatus:
        """Run the job from this process (`grid_serve.caller_jobs`), then leave it with the job
        runner, which keeps it with its finished jobs: readable by id like any other job."""
        import ray

        try:
            runner = await self._job_runner()
        except ray.exceptions.RayActorError:  # gone: the Ingress replica names the one that replaces it
            self._forget_runner()
            runner = await self._job_runner()
        books = await self._caller_jobs.run(spec, fn, self._runner_tag + uuid.uuid4().hex[:8])
        status = books.status(with_results=True)
        if spec.result_refs:  # the runner's copy names the objects: holding the refs would keep them alive there
            books.outcomes.replace_results(lambda result: {"object_ref": result.hex()} if is_object_ref(result)
                                           else result)
        elif books.result_bytes > RESULTS_SENT_BYTES:
            books.outcomes.drop_results()  # the caller has them; the runner keeps the rest of the job
        self._keeping.add(runner, books)
        return status

    def _forget_runner(self) -> None:
        """Ask the Ingress replica for its job runner again at the next job (this one is gone)."""
        self._runner = None

    async def _job_runner(self) -> Any:
        """The job runner of the Ingress replica this client reaches, asked again every
        RUNNER_REFRESH_S: a runner replaced meanwhile (it stopped answering) gets no new jobs
        from this client for longer than that."""
        now = time.monotonic()
        if self._runner is None or now - self._runner[0] > RUNNER_REFRESH_S:
            runner = await self._handle.job_runner.remote()
            name = await runner.ping.remote()  # grid-runner-<app>-<tag>: its jobs' ids start with the tag
            self._runner, self._runner_tag = (now, runner), name.rsplit("-", 1)[1]
        return self._runner[1]

    async def get_job(self, job_id: str, results: bool = False) -> JobStatus:
        await self._keeping.landed()  # this client's own jobs read at once
        return await self._handle.get_job.remote(job_id, results)

    async def wait_job(self, job_id: str, timeout_s: float = 600.0, results: bool = True) -> JobStatus:
        await self._keeping.landed()  # this client's own jobs read at once
        return await self._handle.wait_job.remote(job_id, timeout_s, results)

    async def cancel_job(self, job_id: str) -> JobStatus:
        await self._keeping.landed()  # this client's own jobs read at once
        return await self._handle.cancel_job.remote(job_id)

    async def schedule(self, request: SchedulingRequest, lease_s: float = 300.0, wait_s: float = 30.0) -> SchedulingDecision:
        return await self._handle.schedule.remote(request, lease_s, wait_s)

    async def complete(self, task_id: str, ok: bool = True, duration_s: float | None = None) -> dict[str, Any]:
        return await self._handle.complete.remote(task_id, ok, duration_s)

    async def sharing_status(self) -> SharingStatus:
        return await self._handle.sharing_status.remote()

    async def request_resources(self, request: SharingRequest | dict[str, Any]) -> Allocation:
        return await self._handle.request_resources.remote(request)

    async def get_sharing(self, record_id: str) -> Allocation:
        return await self._handle.get_sharing.remote(record_id)

    async def release_resources(self, record_id: str) -> Allocation:
        return await self._handle.release_resources.remote(record_id)


class IntelligentScheduler(HandleClient):
    """The user guide's scheduler: decisions from the deployed Scheduler, through the handle.

    `schedule_task` reserves the node until `task_finished(task_id)` (or the lease ends), so
    run the task with `.options(**decision.ray_options())` and report when it is done.

    Both `IntelligentScheduler.connect()` and the guide's
    `IntelligentScheduler(cluster_config, metrics_collector, resource_manager)` work: the
    deployed app already holds its cluster config, MetricsCollector and resource-sharing
    manager, so those three arguments are accepted for compatibility and not used.
    """

    def __init__(self, cluster_config: Any = None, metrics_collector: Any = None, resource_manager: Any = None,
                 *, handle: Any = None, stop_safe_calls: bool = False) -> None:
        super().__init__(handle if handle is not None else app_handle(), stop_safe_calls=stop_safe_calls)

    async def schedule_task(self, request: SchedulingRequest, lease_s: float = 300.0,
                            wait_s: float = 30.0) -> SchedulingDecision:
        return await self.schedule(request, lease_s, wait_s)

    async def task_finished(self, task_id: str, ok: bool = True, duration_s: float | None = None) -> dict[str, Any]:
        return await self.complete(task_id, ok, duration_s)
