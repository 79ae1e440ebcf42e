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
from typing import Any, Awaitable, Callable

import ray
from ray.serve.handle import DeploymentHandle

from grid_serve.access import Caller, may_touch, refusal_to_touch
from grid_serve.errors import ForbiddenError, InvalidRequestError, NotFoundError
from grid_serve.job_books import JobBooks
from grid_serve.outcomes import OutcomeTable
from grid_serve.limits import Limits
from grid_serve.lookahead import interleave
from grid_serve.models import JobStatus, JobSubmission, SchedulingDecision
from grid_serve.caller_code import CallerCode
from grid_serve.handles import stop_safe
from grid_serve.stopping import stop_tasks
from grid_serve.protocol import Finished, Placements, Submit
from grid_serve.tasks import TaskType, load_task_modules

from ._common import CALL_TIMEOUT_S, ask_riding_restarts, call_with_timeout, logger, spawn
from .runner_parent import ORPHAN_KEEP_S, TAG_LEN, Parentage
from .runner_job import (RunnerJob, TaskSender, ask_ray_to_drop, chunks_of, forget_old_jobs, forget_then_stop,
                         hear_asks, reclaim_running, resolve_task, size_of)

REPORT_SPACING_S = 0.05  # at most ~20 reports a second per job: the lookahead (100 ms) covers the wait
LATE_RENEWAL_S = 1.0  # a renewal slower than this is logged: leases lapse after 5 s without one
FIRST_WINDOW = 128  # tasks sent with the submission; the rest of the window follows with the first report
END_RECORDED_WAIT_S = 5.0  # a cancel of a job whose every task ended answers once its end is recorded (within RUNNER_ANSWER_S)
# A job's end is told at the event loop's next turn, so the ends of jobs that end together go in
# one call. Not later: a 10 ms wait (for the runner's next submission to carry it) held the room of
# a job already answered, and a job sent next through another runner was placed around it
# (tests/test_metrics_integration.py caught it).
FINISH_BATCH_S = 0.0


class JobRunner:
    """Runs the jobs submitted through one Ingress replica (a detached, named async actor)."""

    def __init__(self, scheduler: DeploymentHandle, task_modules: list[str], name: str, tag: str,
                 parent: tuple[str, str] | None, interval_s: float = 1.0, limits: Limits | None = None,
                 chunk_s: float = 0.0) -> None:
        """`chunk_s`: learned run time a Ray task may carry when very short tasks share one
        (the app's `chunk_ms`); 0 runs every task as its own Ray task."""
        self._scheduler = stop_safe(scheduler)
        self._sender = TaskSender(chunk_s)
        self._limits = limits or Limits()
        self._tasks: dict[str, TaskType] = load_task_modules(task_modules)
        self._name = name
        self._tag = tag
        self._parentage = Parentage(name, parent)
        self._interval_s = interval_s
        self._jobs: dict[str, RunnerJob] = {}
        self._epoch: str | None = None  # the Scheduler instance that knows our jobs
        self._adopting: set[str] = set()
        self._finished: list[Finished] = []  # jobs over, not yet told (`_tell_finished`)
        self._background: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None

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
        task_name, fn, default, task_type = resolve_task(self._tasks, spec, fn)
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
        submission = Submit(requests=requests, runner=self._name, unsent=job.unsent, publish=not spec.wait,
                            takes_back=True)
        placements = await ask_riding_restarts(lambda: self._scheduler.submit.remote(submission))
        if placements.rejected and len(placements.rejected) == len(requests):  # every task is of one kind
            await ask_riding_restarts(lambda: self._scheduler.finished.remote(job_id))
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
        forget_old_jobs(self._jobs, self._limits)

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
        if job.done.is_set() or job.all_ended:  # nothing left to stop: answer once its end is recorded
            await self._wait(job, END_RECORDED_WAIT_S)  # (before, it still reads "running")
            return job.status()
        job.cancelled = True  # from now on no window requests are made
        async with job.exchange:  # a report in flight lands first, so the cancel drops what it queued
            never_sent = job.begin_cancel()
            dropped = await ask_riding_restarts(lambda: self._scheduler.cancel.remote(job.id))
        job.on_cancelled([request.task_id for request in never_sent] + dropped)
        self._cancel_running(job)
        job.news.set()
        return job.status()

    # ================================================================== dispatch

    def _take(self, job: RunnerJob, placements: Placements) -> None:
        """Hand Ray what the Scheduler placed (the books record the rest), then top up the window."""
        if not placements.known and not job.done.is_set():
            self._spawn(self._adopt(job), f"register job {job.id} again")
        alike: dict[tuple, list[tuple[int, SchedulingDecision]]] = {}  # pinned alike: may share a Ray task
        for index, decision in job.on_placements(placements):
            alike.setdefault(decision.pin_key(), []).append((index, decision))
        # every node's first tasks go to Ray before any node's later ones (see `interleave`)
        for chunk in interleave([chunks_of(job, tasks, self._sender.chunk_s) for tasks in alike.values()]):
            self._sender.send(job, chunk)
        if placements.take_back:
            self._ask_back(job, placements.take_back)
        reclaim_running(job, placements.reclaim)
        job.top_up()
        job.news.set()

    def _ask_back(self, job: RunnerJob, task_ids: list[str]) -> None:
        """Higher-priority work waits for these tasks' nodes: ask Ray to drop those that have not
        started (off the loop: GCS calls); those it drops come back to `record_ray_end`."""
        asked = job.to_take_back(task_ids)
        if asked:
            self._sender.in_order(ask_ray_to_drop, [ref for _, ref in asked])

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
            self._take(job, await ask_riding_restarts(lambda: self._scheduler.report.remote(report)))
            return True

    @staticmethod
    async def _space_reports(job: RunnerJob, seconds: float) -> None:
        """Wait before the next report, but not past the job's last task: the job ends (and
        a waiting caller gets its answer) as soon as every task has an outcome."""
        if seconds > 0 and not job.last_ended.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.last_ended.wait(), seconds)

    async def _poll(self, job: RunnerJob) -> None:
        """Long-poll for placements made as other jobs free capacity (and asks to take back)."""
        while not job.settled:
            if job.waiting and not job.cancelled:
                self._take(job, await ask_riding_restarts(lambda: self._scheduler.wait_placed.remote(job.id, 5.0)))
            else:
                await asyncio.sleep(self._interval_s / 2)

    async def _end(self, job: RunnerJob) -> None:
        self._cancel_running(job)  # only after a failure: stop what runs
        batch = job.on_end()
        job.fn_ref = None  # a caller's function in the object store is freed with the job's arguments
        job.result_bytes = job.kept_bytes if job.spec.result_refs else job.outcomes.result_bytes(size_of)
        job.done.set()  # a waiting caller gets its answer while the Scheduler's upkeep below goes on
        # Before any await: a caller woken by `done` reads the kept results within their bound
        # (after the Scheduler's reply, a read of an older job's results could still find them)
        forget_old_jobs(self._jobs, self._limits)
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
            await ask_riding_restarts(lambda: self._scheduler.end_groups.remote(finished), grace_s=CALL_TIMEOUT_S)
        except Exception:  # their leases lapse and the Scheduler reclaims them anyway
            logger.warning("could not tell the Scheduler that job(s) %s finished; their leases will lapse",
                           ", ".join(one.group for one in finished))

    def _cancel_running(self, job: RunnerJob) -> None:
        """Ask Ray to stop what the job has running (a chunk once, however many tasks it holds),
        forcing what still runs after a grace (`grid_serve.stopping`)."""
        job.cancel_sent.update(job.running)
        refs = {id(ref): ref for _, ref in job.running.values()}
        asked = {id(ref): ref for index, (_, ref) in job.running.items() if index in job.asked_back}
        stop_tasks([ref for key, ref in refs.items() if key not in asked])
        if asked:  # asked back, and started: their names go first, or their workers would ignore this cancel
            self._sender.in_order(forget_then_stop, list(asked.values()))

    async def _wait(self, job: RunnerJob, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(job.done.wait()), timeout_s)
        except asyncio.TimeoutError:
            pass

    # ================================================================== ownership

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
                placements = await ask_riding_restarts(lambda: self._scheduler.adopt.remote(adoption))
                self._epoch = placements.epoch
                self._take(job, placements)
        finally:
            self._adopting.discard(job.id)

    async def take_over(self, parent: tuple[str, str], limits: Limits, interval_s: float, chunk_s: float) -> bool:
        """A new Ingress replica asks to make this runner its own: accepted when the replica that
        made it is gone (killed, replaced by a deploy, scaled down), so its jobs, running or
        finished, stay readable by id instead of leaving with it once idle. The new replica's
        settings apply from now on."""
        if not await self._parentage.take_over(parent):
            return False
        self._limits, self._interval_s, self._sender.chunk_s = limits, interval_s, chunk_s
        self._start()
        logger.info("runner %s now belongs to Ingress replica %s", self._name, parent[0])
        return True

    async def retire(self) -> None:
        """Its Ingress replica runs new jobs elsewhere now (this runner did not answer, stopped
        or stuck): leave once the jobs it has are over, as an orphan does."""
        self._parentage.replaced = True
        self._start()

    async def _exit_if_orphaned(self) -> None:
        """No job left: leave if no Ingress replica holds this runner any more (`Parentage`)."""
        if not await self._parentage.may_leave(job.finished_at for job in self._jobs.values()):
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
            self._spawn(hear_asks(self._jobs, self._scheduler, self._take, self._interval_s), "hear asks to take back")

    def _spawn(self, work: Awaitable[Any], what: str) -> None:
        spawn(self._background, work, what)

    def _job(self, job_id: str) -> RunnerJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        return job
