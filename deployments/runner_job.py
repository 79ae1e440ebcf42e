"""One job inside its runner, on Ray's side: its books with what Ray needs to run it, the remote
functions its tasks run as (pinned to their node, one per placement shape), how its tasks go to
Ray (`chunks_of`, `TaskSender`) and how Ray's errors for a task map to the books' transitions
(`JobBooks`); and the runner's bookkeeping of its jobs (`resolve_task`, `forget_old_jobs`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import ray

from grid_serve.caller_code import CallerCode
from grid_serve.caller_jobs import object_bytes  # noqa: F401 (the runner's too)
from grid_serve.errors import InvalidRequestError, error_on_node
from grid_serve.job_books import MAX_ATTEMPTS, JobBooks
from grid_serve.limits import Limits
from grid_serve.lookahead import chunk_sizes
from grid_serve.models import JobSubmission, ResourceRequirement, SchedulingDecision, TaskPriority
from grid_serve.stopping import stop_tasks
from grid_serve.tasks import TAKE_BACK_NAMESPACE, TaskType, run_call, run_call_keeping_result, run_chunk

from ._common import logger

_run_remote = ray.remote(run_call)
_run_chunk_remote = ray.remote(run_chunk)
_run_keeping_result_remote = ray.remote(num_returns=2)(run_call_keeping_result)  # (envelope, result)
CHUNK_OVERRUN = 2.0  # a chunk hands back its rest once it has run this many times its budget
# Ray's errors for a task whose worker, raylet or node went away (not the task's own error:
# run_task catches those and returns them in its envelope)
LOST_WORKER = (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError, ray.exceptions.TaskUnschedulableError,
               ray.exceptions.LocalRayletDiedError, ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)
LOST_NODE = (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError)
CANCELLED = (ray.exceptions.TaskCancelledError, asyncio.CancelledError, concurrent.futures.CancelledError)
def size_of(value: Any) -> int:
    """Bytes a result takes when pickled (what keeping it costs, roughly)."""
    if value is None or isinstance(value, (int, float, bool)):
        return 16
    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # not picklable by the standard library: its text form is an estimate
        return len(repr(value))


@dataclass
class RunnerJob(JobBooks):
    """One job inside its runner: its books (`JobBooks`), what Ray needs to run it, and the
    events its callers and its driver wait on."""

    fn_ref: Any = None  # what dispatch passes as the function: a registered task itself, or an object ref
    runtime_env: dict[str, Any] = field(default_factory=dict)  # a handle caller's, for its own function
    code_key: str = ""  # its CallerCode's key: what Ray's remote functions are grouped by beside the placement
    refs_in_args: bool = False  # some argument is an ObjectRef: each task goes to Ray alone, with Ray's own args
    task_type: TaskType | None = None  # the registered task (None: a handle caller's own function)
    kept_bytes: int = 0  # with `result_refs`: what the results it holds refs to take in the object store
    cancel_sent: set[int] = field(default_factory=set)  # tasks Ray was asked to stop (`JobRunner._cancel_running`)
    news: asyncio.Event = field(default_factory=asyncio.Event)  # a task ended, or the job was cancelled
    # one report, cancel or registration of the job with the Scheduler at a time: two in flight
    # may land in either order (Serve routes each call on its own), and window requests a report
    # carried, landing after the cancel, were queued for a job already cancelled
    exchange: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_ended: asyncio.Event = field(default_factory=asyncio.Event)  # every task has an outcome
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.sized_by is None and self.task_type is not None and self.task_type.sized_by is not None:
            self.sized_by = self.task_type.requirements_for  # memory_task reserves the block it allocates

    def _on_all_ended(self) -> None:
        self.last_ended.set()


class PinnedFunctions:
    """`.options()` is costly per call; tasks pinned to the same node with the same
    resources share one configured remote function."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def for_decision(self, decision: SchedulingDecision, chunk: bool = False, job: RunnerJob | None = None) -> Any:
        keep_result = bool(job and job.spec.result_refs)
        key = (decision.pin_key(), chunk, keep_result, job.code_key if job else "")
        remote = self._cache.get(key)
        if remote is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            # max_retries=0: Ray would retry a lost task on the node it is pinned to, dead or
            # not; the runner places it again instead (MAX_ATTEMPTS). A caller's own function
            # runs in the caller's runtime_env, where its modules are.
            env = {"runtime_env": job.runtime_env} if job and job.runtime_env else {}
            function = _run_chunk_remote if chunk else _run_keeping_result_remote if keep_result else _run_remote
            remote = self._cache[key] = function.options(**decision.ray_options(), max_retries=0, **env)
        return remote


def record_ray_end(job: RunnerJob, index: int, envelope: dict[str, Any] | None, failure: BaseException | None) -> None:
    """One task's end as Ray reported it: its envelope (what the task itself did), or Ray's
    error for its whole Ray task: cancelled, lost with its worker or node (placed again while
    attempts last, `JobBooks.on_lost`), or any other error (the task failed)."""
    if index not in job.running:
        return
    stopped = index in job.reclaimed and not job.cancelled  # for a queue reclaiming its quota
    if failure is None and not (stopped and not envelope["ok"]):
        job.on_task_ended(index, envelope["ok"], envelope["error"], envelope)
    elif failure is None:  # the stop's interrupt, caught by the task's own code as an error: placed again
        job.on_taken_back(index)
    elif isinstance(failure, CANCELLED) and index in job.asked_back and not job.cancelled:
        job.on_taken_back(index)  # Ray dropped it unstarted, or stopped it reclaimed: it is queued again
    elif stopped and not isinstance(failure, LOST_NODE) and isinstance(failure, (ray.exceptions.RayTaskError,
                                                                                 *LOST_WORKER)):
        job.on_taken_back(index)  # the stop reached it as Ray's own error, or forced, its worker's death
    elif isinstance(failure, CANCELLED) or (index in job.cancel_sent
                                            and isinstance(failure, (ray.exceptions.RayTaskError, *LOST_WORKER))):
        # A cancel that reaches a task as it ends can fail it with an error of Ray's own instead
        # (seen in CI: "TypeError: 'Handlers' object is not callable", the interrupt Ray sent
        # handled after the worker had put its SIGINT handler back), or its worker's death when the
        # cancel was forced after its grace: a task Ray was asked to stop is cancelled
        job.on_task_ended(index, False, "cancelled", None)
    elif isinstance(failure, LOST_WORKER):
        decision = job.running[index][0]
        what = error_on_node(failure, decision.node_name)
        if job.on_lost(index, isinstance(failure, LOST_NODE), what) is None:
            logger.warning("job %s task %d: %s on %s; placing it again (attempt %d of %d)", job.id, index,
                           type(failure).__name__, decision.node_name, job.attempts[index], MAX_ATTEMPTS)
    else:  # anything else Ray raised: a failed task, not a failed job
        job.on_task_ended(index, False, f"{type(failure).__name__}: {failure}", None)
    job.news.set()


def ask_ray_to_drop(refs: list[Any]) -> None:
    """Take back tasks the Scheduler asked back (`grid_serve.take_back`): each is named in Ray's
    key-value store (`running_on_when_asked_back_late`: one that has started runs on), then Ray
    is asked to cancel it, which drops it if it has not started. Blocking (GCS calls): run it
    off the event loop."""
    from ray.experimental import internal_kv

    for ref in refs:
        try:
            internal_kv._internal_kv_put(ref.task_id().hex(), b"1", namespace=TAKE_BACK_NAMESPACE)
            ray.cancel(ref, force=False)
        except Exception as exc:  # it ended meanwhile, or the GCS did not answer: it runs on
            logger.debug("could not take back a task (%s)", exc)


# Ray's interrupt reaches a task only when it next runs Python bytecode: one sleeping or inside C
# (numpy, torch) runs on to its end (measured: a 10 s sleep cancelled after 1 s ended 9 s later),
# so a reclaim that waited the cancel's usual grace (2 s) kept the owed queue waiting that long
RECLAIM_GRACE_S = 0.25


def reclaim_running(job: RunnerJob, task_ids: list[str]) -> None:
    """A queue reclaiming its quota waits for these tasks (`Placements.reclaim`): stop them,
    started or not (not named in the key-value store, so a started one takes the interrupt),
    forced after `RECLAIM_GRACE_S` (`grid_serve.stopping`); each comes back to `record_ray_end`,
    which places it again."""
    asked = job.to_reclaim(task_ids)
    if asked:
        logger.info("job %s: stopping %d running task(s) to give back capacity another queue's quota owes it",
                    job.id, len(asked))
        stop_tasks([ref for _, ref in asked], grace_s=RECLAIM_GRACE_S)


def forget_asked_back(ref: Any) -> None:
    """The task asked back ended (dropped, or run): its name leaves the key-value store."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(ref.task_id().hex(), namespace=TAKE_BACK_NAMESPACE)
    except Exception as exc:  # a stale name costs a few bytes in the GCS
        logger.debug("could not forget a task taken back (%s)", exc)


def forget_then_stop(refs: list[Any]) -> None:
    """Stop tasks of a cancelled job that were asked back and had started: their names leave the
    key-value store first, so their workers take this interrupt. Blocking: off the event loop."""
    for ref in refs:
        forget_asked_back(ref)
    stop_tasks(refs)


async def hear_asks(jobs: dict[str, RunnerJob], scheduler: Any, take: Callable[[RunnerJob, Any], None],
                    interval_s: float) -> None:
    """A runner's one long-poll (`Scheduler.wait_news`) for its jobs whose tasks are all in Ray:
    they hear an ask to take some back (higher work waits for their nodes) at once, not at their
    next report; one call for all of them, not one per job. (A job with tasks waiting long-polls
    on its own, for placements and asks.)"""
    while True:
        quiet = [job.id for job in jobs.values() if job.running and not job.waiting and not job.cancelled
                 and not job.done.is_set() and job.spec.priority is not TaskPriority.CRITICAL]
        if not quiet:
            await asyncio.sleep(interval_s / 2)
            continue
        try:
            news = await asyncio.wait_for(scheduler.wait_news.remote(quiet, 1.0), 30.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the Scheduler restarting: the next report carries the news
            logger.debug("the long-poll for asks to take back failed (%s)", exc)
            await asyncio.sleep(interval_s)
            continue
        for job_id, placements in news.items():
            job = jobs.get(job_id)
            if job is not None and not job.done.is_set():
                try:
                    take(job, placements)
                except Exception:  # one job's books in trouble must not deafen the runner's other jobs
                    logger.exception("job %s: could not act on its news", job_id)


class TaskSender:
    """Hands a job's placed tasks to Ray, pinned to their node, and records their ends in the
    job's books as Ray reports them (on the runner's loop)."""

    def __init__(self, chunk_s: float) -> None:
        self.chunk_s = chunk_s  # learned run time one Ray task may carry (`chunks_of`); 0: one task each
        self._pinned = PinnedFunctions()
        # take-backs' key-value and cancel calls block (GCS): one thread, so they land in order
        # (a name put after its delete would make a cancelled job's worker ignore the cancel)
        self._take_back_calls = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                     thread_name_prefix="grid-take-back")

    def in_order(self, call: Callable[..., None], *args: Any) -> None:
        """Run a take-back's blocking `call` off the event loop, after those asked before it."""
        asyncio.get_running_loop().run_in_executor(self._take_back_calls, call, *args)

    def send(self, job: RunnerJob, chunk: list[tuple[int, SchedulingDecision]]) -> None:
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
                                                                                CHUNK_OVERRUN * self.chunk_s)
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
        except (Exception, asyncio.CancelledError) as exc:  # Ray's error for the whole Ray task, each of its tasks'
            value, failure = None, exc
        if kept is not None and value is not None:
            job.kept_bytes += object_bytes(kept)
            value["result"] = kept if value["ok"] else None
        envelopes = value if isinstance(value, list) else [value] * len(indices)
        if any(index in job.asked_back for index in indices):
            self.in_order(forget_asked_back, job.running[indices[0]][1])
        for index, envelope in zip(indices, envelopes):
            record_ray_end(job, index, envelope, failure)
        leftover = [(index, job.running[index][0]) for index in indices[len(envelopes):] if index in job.running]
        for task in leftover:
            self.send(job, [task])


def resolve_task(tasks: dict[str, TaskType], spec: JobSubmission, fn: Callable[..., Any] | CallerCode | None
                 ) -> tuple[str, Callable[..., Any] | CallerCode, ResourceRequirement, TaskType | None]:
    """What a job runs: the caller's own `fn`, or the registered task its spec names (with
    that task's default requirements); an unknown name is the caller's error, naming the known."""
    if fn is not None:
        own_name = fn.name if isinstance(fn, CallerCode) else getattr(fn, "__name__", "custom")
        return spec.name_for(own_name), fn, ResourceRequirement(), None
    task_type = tasks.get(spec.task)
    if task_type is None:
        known = ", ".join(sorted(tasks))
        raise InvalidRequestError(f"unknown task {spec.task!r}; registered tasks: {known}", field="task")
    return task_type.name, task_type.fn, task_type.requirements, task_type


def chunks_of(job: RunnerJob, tasks: list[tuple[int, SchedulingDecision]], chunk_s: float
              ) -> list[list[tuple[int, SchedulingDecision]]]:
    """Tasks placed alike, grouped as they go to Ray: one Ray task each, or several per Ray
    task when they are learned to be very short (at most `chunk_s` of learned run time). A
    task placed again after a lost attempt runs alone, so a task that kills its worker cannot
    take others down with it twice."""
    # ObjectRef arguments are resolved by Ray only at a task's top level, and a result kept
    # in the object store is a Ray task's own return: such tasks go alone
    budget_s = 0.0 if job.refs_in_args or job.spec.result_refs else chunk_s
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


def forget_old_jobs(jobs: dict[str, RunnerJob], limits: Limits) -> None:
    """Keep finished jobs within `limits`: their results under `results_bytes_kept` (the newest
    kept, the oldest dropped first, their status kept), and at most `finished_jobs_kept` of them."""
    finished = [job for job in jobs.values() if job.done.is_set()]  # oldest first
    kept_bytes = 0
    for job in reversed(finished):
        if job.outcomes.results_dropped:
            continue
        kept_bytes += job.result_bytes
        if kept_bytes > limits.results_bytes_kept:
            job.outcomes.drop_results()
    for job in finished[:max(0, len(finished) - limits.finished_jobs_kept)]:
        del jobs[job.id]
