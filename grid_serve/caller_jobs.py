"""A handle caller's own function as a job its own process runs.

`HandleClient.submit_job(spec, fn=f)` with `wait` runs the job here, in the caller's process,
rather than in a job runner: each task is a `grid.remote` call of `f` (`grid_serve.dispatch`),
placed by the Scheduler like any job's task and submitted to Ray by the caller itself. So the
tasks belong to the caller's Ray job (its runtime_env and modules, its workers, its logs, its
`ObjectRef`s) and a one-task job costs what a `grid.remote` call costs: a job runner in between
cost two actor hops and its own bookkeeping per job, 6-9x plain Ray's time (BENCHMARKS.md).

Jobs of one function with one set of placement options share one stream (placements held
ahead, slots reused, spread exact across a service's one-task jobs). Each job's books are the
pure `grid_serve.job_books.JobBooks` the runner keeps; once the job ends they go to the job
runner of the caller's Ingress replica, which keeps them with its own finished jobs, so the
job reads by id over HTTP, the handle and the web page (`JobRunner.keep_finished`).

Registered tasks and jobs without `wait` stay with the job runner: a registered task lives in
the app's `task_modules`, which the caller may not have, and a job returned at once must
outlive the call that made it.

Ownership: the caller's process owns the job while it runs (its tasks die with it, as Ray's
do; the stream's lease lapses and the Scheduler releases what it held). `timeout_s` bounds the
whole job: what has not ended by then is cancelled (no one else could await it).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import logging
import threading
import time
from typing import Any, Callable

from .access import CLUSTER_OWNER
from .dispatch import RemoteFunction, task_type_of
from .errors import InvalidRequestError, NoCapacityError, error_on_node, first_line, plain_seconds
from .job_books import JobBooks
from .models import JobSubmission, ResourceRequirement, SchedulingDecision, SchedulingRequest
from .outcomes import CANCELLED_ERROR, OutcomeTable
from .stopping import stop_tasks
from .tasks import run_task

logger = logging.getLogger("grid_serve.client")

MB = 1024 * 1024
RESULTS_SENT_BYTES = 8 * MB  # results a job's runner keeps for later reads; larger ones stay the caller's alone
INLINE_OBJECT_BYTES = 100 * 1024  # Ray keeps objects up to this size in its memory store, not in plasma
READY_GRACE_S = 1.0  # at the deadline, how long the ends Ray already has may take to reach the caller's loop
FUNCTIONS_KEPT = 256  # remote functions (streams) one client keeps, one per function and placement options


def object_bytes(ref: Any) -> int:
    """What an object this process owns takes in the object store, as its own core worker
    knows it (no RPC); an object Ray has no size for yet counts as Ray's largest inline one."""
    return objects_bytes([ref])


def objects_bytes(refs: list[Any]) -> int:
    """`object_bytes` of several objects, asked in one call."""
    from ray.experimental.locations import get_local_object_locations

    if not refs:
        return 0
    sizes = [entry.get("object_size") for entry in get_local_object_locations(refs).values()]
    return sum(int(size) if size is not None else INLINE_OBJECT_BYTES for size in sizes)


class Keeping:
    """Finished jobs this process ran, on their way to their job runner (`keep_finished`).

    Sent in batches, off the job's path: the job is over and its caller has its status, and a
    call per job, awaited, cost 2.5-3.3 ms a job (more than the job), or about 1.5 ms unawaited
    on this 2-core machine (the runner's work competes with the tasks'; BENCHMARKS.md). A batch
    goes `BATCH_S` after its first job (a timer thread: the caller's event loop may be closed
    by then, as `asyncio.run` does), at `BATCH` jobs, before any read through this process's
    `HandleClient` (its own jobs read by id at once), and at exit; a read from elsewhere (HTTP)
    may see a job up to `BATCH_S` after its caller did. A batch its runner did not take is
    logged, and `on_failed` runs (the client asks for its runner again)."""

    BATCH = 64
    BATCH_S = 0.05
    LANDED_S = 10.0  # a read through the client waits this long at most for its jobs to land

    def __init__(self, on_failed: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._batch: list[tuple[Any, JobBooks]] = []  # (runner, books), in the order the jobs ended
        self._calls: list[Any] = []  # batches sent, not yet seen to land
        self._timer: threading.Timer | None = None
        self._on_failed = on_failed
        self._at_exit = False

    def add(self, runner: Any, books: JobBooks) -> None:
        with self._lock:
            if not self._at_exit:
                atexit.register(self.finish)  # after ray.init, so it runs before Ray's own shutdown
                self._at_exit = True
            self._batch.append((runner, books))
            full, first = len(self._batch) >= self.BATCH, len(self._batch) == 1
            if first and not full:
                self._timer = threading.Timer(self.BATCH_S, self.send)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.send()

    def send(self) -> None:
        """Send what waits, one call per runner."""
        import ray

        with self._lock:
            batch, self._batch = self._batch, []
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        by_runner: dict[Any, list[JobBooks]] = {}
        for runner, books in batch:
            by_runner.setdefault(runner, []).append(books)
        calls = [runner.keep_finished.remote(jobs) for runner, jobs in by_runner.items()]
        with self._lock:
            self._calls += calls
            if len(self._calls) <= self.BATCH:
                return
            landed, self._calls = ray.wait(self._calls, num_returns=len(self._calls), timeout=0)
        for call in landed:
            self._check(functools.partial(ray.get, call, timeout=0))

    async def landed(self) -> None:
        """Send what waits and wait until every batch has landed (or failed: its jobs are then
        not kept, and cannot be read by id), at most `LANDED_S`."""
        self.send()
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            await self._check_async(call)

    def finish(self) -> None:
        """At exit: send what waits, and wait a little for it to land (nothing, quietly, when
        every batch is gone already)."""
        import ray

        with self._lock:
            waiting, unseen = len(self._batch), list(self._calls)
        if not waiting and not unseen:
            return
        if not ray.is_initialized():  # shut down before exit: what was sent went, what waits cannot
            if waiting:
                logger.warning("%d finished job(s) of this process were not left with their job runner (Ray was "
                               "shut down first); they cannot be read by id", waiting)
            return
        try:
            self.send()
            ray.get(self._calls, timeout=5.0)
        except Exception as exc:  # Ray is shut down already, or the runner is gone: say what is lost
            logger.warning("finished jobs of this process (%d not sent, %d batches not seen to land) could not be "
                           "left with their job runner at exit (%s: %s); they cannot be read by id", waiting,
                           len(unseen), type(exc).__name__, first_line(exc))

    def _check(self, get: Callable[[], Any]) -> None:
        try:
            get()
        except Exception as exc:
            self._failed(exc)

    async def _check_async(self, call: Any) -> None:
        try:
            await asyncio.wait_for(call, self.LANDED_S)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        logger.warning("finished jobs could not be left with their job runner (%s: %s); they cannot be read by id",
                       type(exc).__name__, first_line(exc))
        self._on_failed()


def runs_in_caller(spec: JobSubmission, fn: Callable[..., Any] | None) -> bool:
    """Whether a handle job runs in its caller's process (see the module's docstring)."""
    return fn is not None and spec.wait


class CallerJobs:
    """The jobs one `HandleClient` runs itself: the remote function each runs as, kept per
    function and placement options so consecutive jobs share its stream."""

    def __init__(self) -> None:
        self._functions: dict[tuple[Any, ...], RemoteFunction] = {}

    async def run(self, spec: JobSubmission, fn: Callable[..., Any], job_id: str) -> JobBooks:
        """Run the job to its end (or `spec.timeout_s`); its books, ended."""
        placed = self._function_for(spec, fn)
        books = JobBooks(id=job_id, spec=spec, owner=CLUSTER_OWNER,
                         requirements=spec.resources or ResourceRequirement(),
                         task_name=spec.name_for(getattr(fn, "__name__", "custom")),
                         outcomes=OutcomeTable(job_id, spec.task_count))
        deadline = time.monotonic() + spec.timeout_s
        sent: dict[int, tuple[SchedulingDecision, Any, Any]] = {}  # index -> (decision, envelope ref, kept result ref)
        try:
            await self._send_all(spec, placed, books, sent, deadline)
            await self._await_ends(books, sent, deadline)
        except InvalidRequestError as exc:  # it can never be placed (every task of a job asks alike)
            stop_tasks([ref for _, ref, _ in sent.values()])
            raise InvalidRequestError(str(exc), field="node" if spec.node else "resources") from None
        except NoCapacityError:  # timeout_s passed while a task waited for room: record what ended already
            await self._await_ends(books, sent, deadline)
        except BaseException:  # the caller gave up, or Ray refused a call: its tasks stop, as Ray's would with it
            stop_tasks([ref for _, ref, _ in sent.values()])
            raise
        unfinished = spec.task_count - len(books.outcomes)
        if unfinished:
            stop_tasks([ref for index, (_, ref, _) in sent.items() if not books.outcomes.has(index)])
            books.begin_cancel()
        books.on_end()  # what never ended is cancelled; the stream told the Scheduler everything else
        if unfinished:
            books.error = (f"timeout_s ({plain_seconds(spec.timeout_s)}) passed before every task ended: "
                           f"{unfinished} unfinished task(s) cancelled (a job of your own function with wait "
                           "runs in your process, so nothing is left to run on)")
        books.result_bytes = objects_bytes([kept if kept is not None else ref for index, (_, ref, kept) in sent.items()
                                            if books.outcomes.ok(index)])
        return books

    @staticmethod
    async def _send_all(spec: JobSubmission, placed: RemoteFunction, books: JobBooks,
                        sent: dict[int, tuple[SchedulingDecision, Any, Any]], deadline: float) -> None:
        """Hand Ray every task, each as soon as the Scheduler placed it; arguments at the top level
        of the Ray call, so Ray resolves ObjectRefs among them as for `f.remote(ref)`."""
        placed.expect(spec.task_count)
        try:
            for index in range(spec.task_count):
                args, kwargs = spec.call_args(index)
                decision, refs = await placed.placed_async(args, kwargs, max(deadline - time.monotonic(), 0.001))
                envelope, kept = refs if spec.result_refs else (refs, None)
                books.next_index = index + 1  # handed on: to the caller's stream, which asked the Scheduler
                books.on_sent([(index, decision)], envelope)
                sent[index] = (decision, envelope, kept)
        finally:
            placed.expect(books.next_index - spec.task_count)  # what an early end will not call

    @staticmethod
    async def _await_ends(books: JobBooks, sent: dict[int, tuple[SchedulingDecision, Any, Any]],
                          deadline: float) -> None:
        """Record each task's end as Ray reports it, until all ended or the deadline; at the
        deadline, the ends Ray already has are recorded too (the caller's loop may not have
        seen them yet). O(1) per end: a job of 10,000 tasks waits on each once."""
        import ray

        waiting = {index: asyncio.ensure_future(_ended(index, ref)) for index, (_, ref, _) in sent.items()
                   if not books.outcomes.has(index) and index in books.running}
        try:
            for next_end in asyncio.as_completed(list(waiting.values()), timeout=max(deadline - time.monotonic(), 0.0)):
                index, envelope, failure = await next_end
                waiting.pop(index)
                _record_end(books, sent, index, envelope, failure)
        except asyncio.TimeoutError:
            refs = {sent[index][1]: index for index in waiting}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
            if ready:  # ended, not yet seen: their values are here already
                done, _ = await asyncio.wait([waiting[refs[ref]] for ref in ready], timeout=READY_GRACE_S)
                for future in done:
                    index, envelope, failure = future.result()
                    waiting.pop(index)
                    _record_end(books, sent, index, envelope, failure)
            for future in waiting.values():
                future.cancel()

    def _function_for(self, spec: JobSubmission, fn: Callable[..., Any]) -> RemoteFunction:
        fn = getattr(fn, "_function", fn)  # a @ray.remote function: its own function (its options are not carried)
        resources = spec.resources.model_dump_json() if spec.resources else ""
        key = (fn, spec.result_refs, spec.strategy, spec.node, spec.priority, resources,
               tuple(sorted(spec.label_selector.items())), spec.affinity_nodes, spec.anti_affinity_nodes)
        placed = self._functions.get(key)
        if placed is None:
            if len(self._functions) >= FUNCTIONS_KEPT:
                self._functions.clear()
            options = {"num_returns": 2} if spec.result_refs else {}
            placed = self._functions[key] = RemoteFunction(envelope_of(fn, spec.result_refs), options,
                                                           placement_of(spec, fn))
        return placed


def placement_of(spec: JobSubmission, fn: Callable[..., Any]) -> SchedulingRequest:
    """What each task of the job asks the Scheduler for, learned run times kept per function."""
    request = spec.scheduling_request("caller", 0, ResourceRequirement())  # its stream gives the ids
    return request.model_copy(update={"task_type": task_type_of(fn)})


def envelope_of(fn: Callable[..., Any], keep_result: bool) -> Callable[..., Any]:
    """`fn` as a job's task: what it returned, where and how long it ran (`run_task`); with
    `keep_result`, two returns, the result left in the object store apart from its envelope."""

    def run(*args: Any, **kwargs: Any) -> Any:
        envelope = run_task(fn, list(args), kwargs)
        return (envelope, envelope.pop("result")) if keep_result else envelope

    run.__name__, run.__qualname__ = getattr(fn, "__name__", "custom"), getattr(fn, "__qualname__", "custom")
    run.__module__ = getattr(fn, "__module__", __name__)
    return run


async def _ended(index: int, ref: Any) -> tuple[int, dict[str, Any] | None, BaseException | None]:
    try:
        return index, await ref, None
    except Exception as exc:
        return index, None, exc


def _record_end(books: JobBooks, sent: dict[int, tuple[SchedulingDecision, Any, Any]], index: int,
                envelope: dict[str, Any] | None, failure: BaseException | None) -> None:
    """One task's end as Ray reported it: what the task itself did (its envelope), cancelled,
    or Ray's error for it (after Ray's own retries: its worker or node died), naming the node."""
    import ray

    decision, _, kept = sent[index]
    if failure is None:
        assert envelope is not None
        if kept is not None:
            envelope["result"] = kept if envelope["ok"] else None
        books.on_task_ended(index, envelope["ok"], envelope["error"], envelope)
    elif isinstance(failure, (ray.exceptions.TaskCancelledError, concurrent.futures.CancelledError)):
        books.on_task_ended(index, False, CANCELLED_ERROR, None)
    else:
        books.on_task_ended(index, False, error_on_node(failure, decision.node_name), None)

