"""JobRunner: runs jobs. It dispatches each placed task pinned to its node, records what every
task did, and reports finished tasks to the Scheduler in batches, off the task path.

Why a plain Ray actor beside the Ingress and not the Ingress itself:
  - any Ingress replica must answer for any job (`num_replicas: 2`): jobs live in a named
    actor that every replica can look up from the job id (its first `TAG_LEN` characters);
  - the tasks' owner must outlive the HTTP surface: a replaced or killed Ingress replica
    leaves its runner (detached) to finish its jobs, which the next replica reads by name. A
    runner whose Ingress replica is gone exits once its jobs are done.
Dispatching from an async actor costs a little against a plain driver, the same as Ray's own
SPREAD from that actor (bench/dispatch_prototype.py; the figures are in BENCHMARKS.md).

The hot path never waits for a Serve call: the Scheduler places tasks ahead of free capacity
(the lookahead), so when a task ends Ray already holds the slot's next task and starts it on
the same leased worker. The runner only records the end; a reporter sends the batch of ends
(with run times) at most every `REPORT_SPACING_S` and dispatches the placements the reply
carries, which refill the lookahead. Tasks learned to run far under a millisecond go to Ray
several to one Ray task (`chunk_sizes`, `run_chunk`): Ray's own cost per task is then paid
once per chunk. Each keeps its own decision, outcome and report.

A task whose worker or node died is placed again (up to `MAX_ATTEMPTS`): the runner reports
the lost attempt (its reservation frees) together with the task, queued anew, and the node Ray
said died, which the Scheduler stops using at once. Ray's own retries are off for these
tasks: they are pinned hard, so Ray would retry on the dead node. `node_specific` tasks stay
on their node: they fail, naming it.

Each job's books (window, running, outcomes, what to report, what to register again) are a
pure `grid_serve.job_books.JobBooks`; this module adds Ray and the events callers wait on.

Ownership: the runner renews its jobs' leases with the Scheduler every half interval. If the
Scheduler restarted (a new epoch) or forgot a job (its lease lapsed), the runner registers
the job again (`adopt`): what runs where, what the job placed per node, what waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from functools import partial
from typing import Any, Awaitable, Callable

import ray
from ray.serve.handle import DeploymentHandle

from grid_serve.access import Caller, may_touch, refusal_to_touch
from grid_serve.errors import ForbiddenError, GridError, InvalidRequestError, NotFoundError
from grid_serve.job_books import JobBooks
from grid_serve.outcomes import OutcomeTable
from grid_serve.limits import Limits
from grid_serve.lookahead import chunk_sizes, interleave
from grid_serve.models import (JobStatus, JobSubmission, ResourceRequirement, SchedulingDecision)
from grid_serve.caller_code import CallerCode
from grid_serve.handles import stop_safe
from grid_serve.stopping import stop_tasks
from grid_serve.protocol import Finished, Placements, Submit
from grid_serve.tasks import TaskType, load_task_modules

from ._common import call_with_timeout, logger, spawn
from .runner_job import PinnedFunctions, RunnerJob, object_bytes, record_ray_end, size_of

RUNNER_PREFIX = "grid-runner-"
RUNNER_NAMESPACE = "grid-serve"  # runners of every grid app on the cluster, named by app and tag
TAG_LEN = 4  # a job id starts with its runner's tag
REPORT_SPACING_S = 0.05  # at most ~20 reports a second per job: the lookahead (100 ms) covers the wait
CALL_TIMEOUT_S = 30.0
ORPHAN_KEEP_S = 300.0  # a runner no replica holds keeps its finished jobs readable this long, then leaves
LATE_RENEWAL_S = 1.0  # a renewal slower than this is logged: leases lapse after 5 s without one
SCHEDULER_GRACE_S = 60.0  # how long a job rides out an unreachable Scheduler before it fails
CHUNK_OVERRUN = 2.0  # a chunk hands back its rest once it has run this many times its budget
FIRST_WINDOW = 128  # tasks sent with the submission; the rest of the window follows with the first report
# A job's end is told at the event loop's next turn, so the ends of jobs that end together go in
# one call. Not later: a 10 ms wait (for the runner's next submission to carry it) held the room of
# a job already answered, and a job sent next through another runner was placed around it
# (tests/test_metrics_integration.py caught it).
FINISH_BATCH_S = 0.0


def runner_name(app: str, tag: str) -> str:
    return f"{RUNNER_PREFIX}{app}-{tag}"


def is_runner_of(name: str, app: str) -> bool:
    """Whether the actor `name` is one of `app`'s runners: its name is the prefix, the app's
    name and a tag, exactly. Another app whose name starts alike (`grid-auth` beside `grid`)
    has runners that share the prefix `grid-runner-grid-`, never the exact shape.

    >>> is_runner_of("grid-runner-grid-1a2b", "grid"), is_runner_of("grid-runner-grid-auth-1a2b", "grid")
    (True, False)
    """
    prefix = runner_name(app, "")
    tag = name[len(prefix):]
    return name.startswith(prefix) and len(tag) == TAG_LEN and all(c in "0123456789abcdef" for c in tag)


def _is_answer(exc: BaseException) -> bool:
    """Whether a Scheduler call's error is its answer (a bad request, a full queue), raised there
    and carried back by Ray, rather than a Scheduler that is away."""
    cause = getattr(exc, "cause", None)
    return isinstance(exc, (GridError, ValueError)) or isinstance(cause, (GridError, ValueError))


class JobRunner:
    """Runs the jobs submitted through one Ingress replica (a detached, named async actor)."""

    def __init__(self, scheduler: DeploymentHandle, task_modules: list[str], name: str, tag: str,
                 parent: tuple[str, str] | None, interval_s: float = 1.0, limits: Limits | None = None,
                 chunk_s: float = 0.0) -> None:
        """`chunk_s`: learned run time a Ray task may carry when very short tasks share one
        (the app's `chunk_ms`); 0 runs every task as its own Ray task."""
        self._scheduler = stop_safe(scheduler)
        self._chunk_s = chunk_s
        self._limits = limits or Limits()
        self._tasks: dict[str, TaskType] = load_task_modules(task_modules)
        self._name = name
        self._tag = tag
        self._parent = parent  # (actor name, namespace) of the Ingress replica that made this runner
        self._interval_s = interval_s
        self._jobs: dict[str, RunnerJob] = {}
        self._pinned = PinnedFunctions()
        self._epoch: str | None = None  # the Scheduler instance that knows our jobs
        self._adopting: set[str] = set()
        self._finished: list[Finished] = []  # jobs over, not yet told (`_tell_finished`)
        self._background: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None
        self._parent_seen = False
        self._replaced = False  # its Ingress replica started another runner (this one stopped answering)

    # ================================================================== API (the Ingress's, and HandleClient's submit_job)

    async def ping(self) -> str:
        self._start()
        return self._name

    async def holds(self, job_ids: list[str]) -> list[str]:
        """Which of `job_ids` this runner still runs: the Scheduler asks before it reclaims a job
        whose lease renewals stopped reaching it."""
        return [job_id for job_id in job_ids if job_id in self._jobs and not self._jobs[job_id].done.is_set()]

    async def submit_job(self, spec: JobSubmission, fn: Callable[..., Any] | CallerCode | None = None,
                         owner: str | None = None) -> JobStatus:
        """Start a job (a caller's own `fn`, or a registered task); waits when `spec.wait`.
        Only `owner` may cancel it (`grid_serve.access`)."""
        self._start()
        custom = fn is not None
        task_name, fn, default, task_type = self._resolve_task(spec, fn)
        job_id = self._tag + uuid.uuid4().hex[:12 - TAG_LEN]
        # A registered task travels inline (pickled by reference: a few bytes); a caller's own
        # function goes to the object store once per job rather than once per task.
        job = RunnerJob(id=job_id, spec=spec, fn_ref=fn, task_name=task_name, requirements=default, task_type=task_type,
                   owner=owner,
                   outcomes=OutcomeTable(job_id, spec.task_count))
        # The Scheduler holds a window of the job, not all of it: a 100,000-task job costs it
        # (and this runner) a request per task only for what may be placed soon. The first
        # part is small, since the job's first task waits for it (sending and queueing
        # requests costs time per request); the next report, while the first tasks run, fills the window.
        requests = job.next_requests(FIRST_WINDOW)
        submission = Submit(requests=requests, runner=self._name, unsent=job.unsent, publish=not spec.wait)
        placements = await self._ask(lambda: self._scheduler.submit.remote(submission))
        if placements.rejected and len(placements.rejected) == len(requests):  # every task is of one kind
            await self._ask(lambda: self._scheduler.finished.remote(job_id))
            raise InvalidRequestError(placements.rejected[0].reason, field="node" if spec.node else "resources")
        if isinstance(fn, CallerCode):  # its bytes go to the worker unopened, to run in the caller's runtime_env
            job.fn_ref, job.runtime_env, job.code_key = ray.put(fn.blob), dict(fn.runtime_env), fn.key
        else:
            job.fn_ref = ray.put(fn) if custom else fn
        job.refs_in_args = spec.has_object_refs()
        self._jobs[job.id] = job
        self._epoch = self._epoch or placements.epoch
        self._take(job, placements)
        self._spawn(self._drive(job), f"run job {job.id}")
        if spec.wait:
            await self._wait(job, spec.timeout_s)
        return job.status(with_results=job.done.is_set() and spec.wait)

    async def keep_finished(self, jobs: list[JobBooks]) -> None:
        """Keep jobs that a handle caller ran from its own process (its own function, awaited:
        `grid_serve.caller_jobs`) with this runner's finished jobs, so that they read by id like
        them; their ids start with this runner's tag."""
        self._start()
        for books in jobs:
            if not books.id.startswith(self._tag) or books.id in self._jobs or not books.ended:
                logger.warning("runner %s: not keeping %r: not a finished job of its own", self._name, books.id)
                continue
            job = RunnerJob(**{name.name: getattr(books, name.name) for name in dataclasses.fields(JobBooks)})
            job.last_ended.set()
            job.done.set()
            self._jobs[job.id] = job
        self._forget_old_jobs()

    async def get_job(self, job_id: str, results: bool = False, reader: Caller | None = None) -> JobStatus:
        """`reader`: who must own the job to read its results (None: anyone, a handle call)."""
        job = self._readable(job_id, results, reader)
        return job.status(with_results=results)

    async def wait_job(self, job_id: str, timeout_s: float = 600.0, results: bool = True,
                       reader: Caller | None = None) -> JobStatus:
        job = self._readable(job_id, results, reader)
        await self._wait(job, timeout_s)
        return job.status(with_results=results)

    def _readable(self, job_id: str, results: bool, reader: Caller | None) -> RunnerJob:
        """The job, once `reader` may read what it asks for: its results are its maker's."""
        job = self._job(job_id)
        if results and not may_touch(reader, job.owner):
            raise ForbiddenError(refusal_to_touch(job.owner, f"job {job_id}", "read its results"), field="results")
        return job

    async def list_jobs(self) -> list[JobStatus]:
        return [job.status() for job in self._jobs.values()]

    async def cancel_job(self, job_id: str, caller: Caller | None = None) -> JobStatus:
        job = self._job(job_id)
        if not may_touch(caller, job.owner):
            raise ForbiddenError(refusal_to_touch(job.owner, f"job {job_id}"), field="job_id")
        if job.done.is_set() or job.all_ended:  # nothing left to stop: its end is being recorded
            return job.status()
        job.cancelled = True  # from now on no window requests are made
        async with job.exchange:  # a report in flight lands first, so the cancel drops what it queued
            never_sent = job.begin_cancel()
            dropped = await self._ask(lambda: self._scheduler.cancel.remote(job.id))
        job.on_cancelled([request.task_id for request in never_sent] + dropped)
        self._cancel_running(job)
        job.news.set()
        return job.status()

    # ================================================================== dispatch

    def _resolve_task(self, spec: JobSubmission, fn: Callable[..., Any] | CallerCode | None
                      ) -> tuple[str, Callable[..., Any] | CallerCode, ResourceRequirement, TaskType | None]:
        if fn is not None:
            own_name = fn.name if isinstance(fn, CallerCode) else getattr(fn, "__name__", "custom")
            name = spec.name_for(own_name)
            return name, fn, ResourceRequirement(), None
        task_type = self._tasks.get(spec.task)
        if task_type is None:
            known = ", ".join(sorted(self._tasks))
            raise InvalidRequestError(f"unknown task {spec.task!r}; registered tasks: {known}", field="task")
        return task_type.name, task_type.fn, task_type.requirements, task_type

    def _take(self, job: RunnerJob, placements: Placements) -> None:
        """Hand Ray what the Scheduler placed (the books record the rest), then top up the window."""
        if not placements.known and not job.done.is_set():
            self._spawn(self._adopt(job), f"register job {job.id} again")
        alike: dict[tuple, list[tuple[int, SchedulingDecision]]] = {}  # pinned alike: may share a Ray task
        for index, decision in job.on_placements(placements):
            alike.setdefault(decision.pin_key(), []).append((index, decision))
        # every node's first tasks go to Ray before any node's later ones (see `interleave`)
        for chunk in interleave([self._chunks(job, tasks) for tasks in alike.values()]):
            self._send(job, chunk)
        job.top_up()
        job.news.set()

    def _chunks(self, job: RunnerJob, tasks: list[tuple[int, SchedulingDecision]]) -> list[list[tuple[int, SchedulingDecision]]]:
        """Tasks placed alike, grouped as they go to Ray: one Ray task each, or several per Ray
        task when they are learned to be very short. A task placed again after a lost attempt
        runs alone, so a task that kills its worker cannot take others down with it twice."""
        # ObjectRef arguments are resolved by Ray only at a task's top level, and a result kept
        # in the object store is a Ray task's own return: such tasks go alone
        budget_s = 0.0 if job.refs_in_args or job.spec.result_refs else self._chunk_s
        sizes = chunk_sizes(len(tasks), job.run_s.get(tasks[0][1].node_id), budget_s)
        chunks: list[list[tuple[int, SchedulingDecision]]] = []
        start = 0
        for size in sizes:
            chunk = tasks[start:start + size]
            start += size
            if size > 1 and any(index in job.attempts for index, _ in chunk):
                chunks += [[task] for task in chunk]
            else:
                chunks.append(chunk)
        return chunks

    def _send(self, job: RunnerJob, chunk: list[tuple[int, SchedulingDecision]]) -> None:
        """Hand Ray one chunk of tasks placed alike, as one Ray task."""
        first = chunk[0][1]
        kept = None  # with `result_refs`: the task's result, left in the object store for the caller
        if len(chunk) == 1:  # the arguments as Ray's own, so Ray resolves ObjectRefs among them
            args, kwargs = job.spec.call_args(chunk[0][0])
            ref = self._pinned.for_decision(first, job=job).remote(job.fn_ref, list(kwargs), *args, *kwargs.values())
            if job.spec.result_refs:
                ref, kept = ref
        else:
            calls = [job.spec.call_args(index) for index, _ in chunk]
            ref = self._pinned.for_decision(first, chunk=True, job=job).remote(job.fn_ref, calls,
                                                                                CHUNK_OVERRUN * self._chunk_s)
        job.on_sent(chunk, ref)
        indices = [index for index, _ in chunk]
        ref.future().add_done_callback(partial(self._from_ray_thread, asyncio.get_running_loop(), job, indices, kept))

    def _from_ray_thread(self, loop: asyncio.AbstractEventLoop, job: RunnerJob, indices: list[int], kept: Any,
                         future: Any) -> None:
        loop.call_soon_threadsafe(self._ended, job, indices, kept, future)

    def _ended(self, job: RunnerJob, indices: list[int], kept: Any, future: Any) -> None:
        """A Ray task finished (Ray already started the slot's next one): record its tasks,
        nothing more. A chunk that stopped early hands back the tasks it did not run: they go
        to Ray again on their own, on the node they were placed on. `kept`: the ref to the
        task's result in the object store (`result_refs`), which becomes its outcome's result."""
        try:
            value, failure = future.result(), None
        except (Exception, asyncio.CancelledError) as exc:  # Ray's error for the whole Ray task: each of its tasks gets it
            value, failure = None, exc
        if kept is not None and value is not None:
            job.kept_bytes += object_bytes(kept)
            value["result"] = kept if value["ok"] else None
        envelopes = value if isinstance(value, list) else [value] * len(indices)
        for index, envelope in zip(indices, envelopes):
            record_ray_end(job, index, envelope, failure)
        leftover = [(index, job.running[index][0]) for index in indices[len(envelopes):] if index in job.running]
        for task in leftover:
            self._send(job, [task])

    async def _drive(self, job: RunnerJob) -> None:
        """Report ends and collect placements until every task has an outcome; then release."""
        poller = asyncio.get_running_loop().create_task(self._poll(job))
        try:
            while not job.settled:
                await job.news.wait()
                job.news.clear()
                began = time.monotonic()
                if await self._report(job):
                    await self._space_reports(job, REPORT_SPACING_S - (time.monotonic() - began))
        except Exception as exc:  # never leave a job hanging: say what broke
            logger.exception("job %s failed", job.id)
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            poller.cancel()
            await self._end(job)

    async def _report(self, job: RunnerJob) -> bool:
        """Tell the Scheduler what ended and what to place again (the window's next requests
        among them), and take its news; False when there was nothing to tell."""
        async with job.exchange:
            report = job.take_report()
            if report is None:
                return False
            self._take(job, await self._ask(lambda: self._scheduler.report.remote(report)))
            return True

    @staticmethod
    async def _space_reports(job: RunnerJob, seconds: float) -> None:
        """Wait before the next report, but not past the job's last task: the job ends (and
        a waiting caller gets its answer) as soon as every task has an outcome."""
        if seconds > 0 and not job.last_ended.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.last_ended.wait(), seconds)

    async def _poll(self, job: RunnerJob) -> None:
        """Long-poll for placements made as other jobs free capacity."""
        while not job.settled:
            if job.waiting and not job.cancelled:
                self._take(job, await self._ask(lambda: self._scheduler.wait_placed.remote(job.id, 5.0)))
            else:
                await asyncio.sleep(self._interval_s / 2)

    async def _end(self, job: RunnerJob) -> None:
        self._cancel_running(job)  # only after a failure: stop what runs
        batch = job.on_end()
        job.result_bytes = job.kept_bytes if job.spec.result_refs else job.outcomes.result_bytes(size_of)
        job.done.set()  # a waiting caller gets its answer while the Scheduler's upkeep below goes on
        # Before any await: a caller woken by `done` reads the kept results within their bound
        # (after the Scheduler's reply, a read of an older job's results could still find them)
        self._forget_old_jobs()
        # the last ends carry run times worth learning; then everything of the job is released
        async with job.exchange:  # after an adopt in flight (a later one sees `done` and stays away)
            self._tell_finished_later([Finished(group=job.id, completions=batch)])

    def _tell_finished_later(self, finished: list[Finished]) -> None:
        """Jobs over, told at the loop's next turn (FINISH_BATCH_S) with any that end meanwhile."""
        first = not self._finished
        self._finished.extend(finished)
        if first:  # the first of a batch: its timer
            self._spawn(self._tell_finished(), "tell the Scheduler which jobs finished")

    async def _tell_finished(self) -> None:
        """Tell the Scheduler, in one call, the jobs over since the batch began."""
        await asyncio.sleep(FINISH_BATCH_S)
        finished, self._finished = self._finished, []
        if not finished:
            return
        try:
            await self._ask(lambda: self._scheduler.end_groups.remote(finished), grace_s=CALL_TIMEOUT_S)
        except Exception:  # their leases lapse and the Scheduler reclaims them anyway
            logger.warning("could not tell the Scheduler that job(s) %s finished; their leases will lapse",
                           ", ".join(one.group for one in finished))

    @staticmethod
    def _cancel_running(job: RunnerJob) -> None:
        """Ask Ray to stop what the job has running (a chunk once, however many tasks it holds),
        forcing what still runs after a grace (`grid_serve.stopping`)."""
        job.cancel_sent.update(job.running)
        stop_tasks(list({ref for _, ref in job.running.values()}))

    async def _wait(self, job: RunnerJob, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(job.done.wait()), timeout_s)
        except asyncio.TimeoutError:
            pass

    # ================================================================== ownership

    async def _ask(self, call: Callable[[], Awaitable[Any]], grace_s: float = SCHEDULER_GRACE_S) -> Any:
        """Call the Scheduler, riding out its restart: retry until `grace_s` has passed."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                return await call_with_timeout(call(), CALL_TIMEOUT_S)
            except Exception as exc:
                if _is_answer(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"the Scheduler did not answer for {grace_s:g} s "
                                       f"({type(exc).__name__}: {exc})") from None
                logger.warning("Scheduler call failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.25)

    async def _beat(self) -> None:
        """Renew every live job's lease; register again what the Scheduler does not know."""
        while True:
            await asyncio.sleep(self._interval_s / 2)
            try:
                live = [job.id for job in self._jobs.values() if not job.done.is_set()]
                if not live:
                    await self._exit_if_orphaned()
                    continue
                began = time.monotonic()
                epoch, unknown = await call_with_timeout(self._scheduler.renew.remote(live), CALL_TIMEOUT_S)
                if (took := time.monotonic() - began) > LATE_RENEWAL_S:
                    logger.warning("a lease renewal took %.1f s to reach the Scheduler and back", took)
                if epoch != self._epoch:
                    logger.warning("the Scheduler restarted (epoch %s -> %s): registering %d job(s) again",
                                   self._epoch, epoch, len(live))
                    self._epoch, unknown = epoch, live
                for job_id in unknown:
                    job = self._jobs.get(job_id)
                    if job is not None and not job.done.is_set():
                        self._spawn(self._adopt(job), f"register job {job_id} again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("lease renewal failed (%s: %s); retrying", type(exc).__name__, exc)

    async def _adopt(self, job: RunnerJob) -> None:
        if job.id in self._adopting:
            return
        self._adopting.add(job.id)
        try:
            async with job.exchange:
                if job.done.is_set():
                    return
                adoption = job.adoption(self._name)
                placements = await self._ask(lambda: self._scheduler.adopt.remote(adoption))
                self._epoch = placements.epoch
                self._take(job, placements)
        finally:
            self._adopting.discard(job.id)

    async def take_over(self, parent: tuple[str, str], limits: Limits, interval_s: float, chunk_s: float) -> bool:
        """A new Ingress replica asks to make this runner its own: accepted when the replica that
        made it is gone (killed, replaced by a deploy, scaled down), so its jobs, running or
        finished, stay readable by id instead of leaving with it once idle. The new replica's
        settings apply from now on."""
        if self._replaced or (self._parent is not None and self._parent != parent and await self._parent_alive()):
            return False
        self._parent, self._parent_seen = parent, True
        self._limits, self._interval_s, self._chunk_s = limits, interval_s, chunk_s
        self._start()
        logger.info("runner %s now belongs to Ingress replica %s", self._name, parent[0])
        return True

    async def _parent_alive(self) -> bool:
        """Whether the Ingress replica that made this runner lives: a GCS lookup, in a thread so
        that this runner's loop (its jobs' reads, its reports) never waits on the GCS."""
        try:
            await asyncio.to_thread(ray.get_actor, self._parent[0], namespace=self._parent[1])
            return True
        except ValueError:
            return False

    async def retire(self) -> None:
        """Its Ingress replica runs new jobs elsewhere now (this runner did not answer, stopped
        or stuck): leave once the jobs it has are over, as an orphan does."""
        self._replaced = True
        self._start()

    async def _exit_if_orphaned(self) -> None:
        """No job left, and the Ingress replica that made this runner is gone (or replaced this
        runner), and no new replica took it over: leave, once its finished jobs have been
        readable for ORPHAN_KEEP_S. (Asked only once the parent was seen alive, so a wrong name
        can never make a runner leave early.)"""
        if not self._replaced:
            if self._parent is None:
                return
            if await self._parent_alive():
                self._parent_seen = True
                return
            if not self._parent_seen:
                logger.warning("runner %s cannot see its Ingress replica %s; it stays", self._name, self._parent)
                self._parent = None
                return
        last_end = max((job.finished_at or 0.0 for job in self._jobs.values()), default=0.0)
        if time.time() - last_end <= ORPHAN_KEEP_S:
            return
        logger.info("runner %s: its Ingress replica is gone or replaced it, and no job has ended for %g s; exiting",
                    self._name, ORPHAN_KEEP_S)
        # exit_actor() only works inside an actor method; this runs in the heartbeat task,
        # where it raised AsyncioActorExit into the loop's error log instead of exiting
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    # ================================================================== upkeep

    def _start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def _spawn(self, work: Awaitable[Any], what: str) -> None:
        spawn(self._background, work, what)

    def _job(self, job_id: str) -> RunnerJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        return job

    def _forget_old_jobs(self) -> None:
        """Keep finished jobs within Limits: their results under `results_bytes_kept` (the
        newest kept, the oldest dropped first, their status kept), and at most
        `finished_jobs_kept` of them at all."""
        finished = [job for job in self._jobs.values() if job.done.is_set()]  # oldest first
        kept_bytes = 0
        for job in reversed(finished):
            if job.outcomes.results_dropped:
                continue
            kept_bytes += job.result_bytes
            if kept_bytes > self._limits.results_bytes_kept:
                job.outcomes.drop_results()
        for job in finished[:max(0, len(finished) - self._limits.finished_jobs_kept)]:
            del self._jobs[job.id]
