"""`grid.remote`: a Ray program's own remote functions, placed by grid-serve.

    import ray, grid_serve as grid

    @grid.remote                      # or grid.remote(num_cpus=2), grid.remote(fn), grid.remote(ray_fn)
    def compute_task(i): ...

    refs = [compute_task.options(scheduling_strategy="SPREAD").remote(i) for i in range(100)]
    ray.get(refs)                     # Ray's own ObjectRefs

The caller's process submits the Ray tasks itself (caller-side dispatch), so they belong to its
Ray job: its `runtime_env` and modules, its workers, its logs, its `ObjectRef`s (top-level ref
arguments resolved as Ray resolves them, results left in the object store). Only the placement
comes from grid-serve: the app's Scheduler deployment places every call (exact spread,
priorities and the queue shared with every other caller, resources, explanations), through
DeploymentHandle calls made off the call path by one background thread per process (the
`Dispatcher`), with the books kept by the pure `grid_serve.calls.Stream`.

A call takes a placement the Scheduler made ahead of it (see `grid_serve.calls`); when none is
held, `.remote()` waits for one: the cluster is full, or the stream's first call. It waits at
most `placement_timeout_s` (then raises `NoCapacityError`), holding nothing but the waiting
call itself. A call that can never fit (more GPUs than any node has) raises at once. In async
code, `.remote()` would block the event loop while it waits: use `await f.remote_async(...)`.

Each task is pinned to its node with Ray's soft node affinity: if that node dies, Ray's own
retries (`max_retries`) run it elsewhere; a `node_specific` one is pinned hard, with no
retries, and fails naming its node, as a job's task does. Ray's own strategy objects and `"DEFAULT"` pass
through to Ray untouched (not placed, not counted by grid-serve).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable

from .calls import Stream
from .errors import InvalidRequestError, NoCapacityError, plain_seconds
from .handles import connect_ray, stop_safe
from .models import ResourceRequirement, SchedulingDecision, SchedulingRequest, SchedulingStrategy, TaskPriority
from .protocol import Adopt, Placements, Submit
from .queues import queue_of_ray_job

logger = logging.getLogger("grid_serve.remote")

APP_NAME = os.environ.get("GRID_APP", "grid")
PLACEMENT_TIMEOUT_S = 600.0
TICK_S = 0.05  # the dispatcher tells the Scheduler what ended at most this often
REST_S = 30.0  # a stream quiet this long leaves the dispatcher's rounds until its next call
HURRY_S = 0.005  # how often it looks for ends while a call waits for the room they free
POLL_S = 5.0  # a stream with requests waiting long-polls the Scheduler for their placements
SYNC_ENDS = 32  # a call finding nothing held looks for ended calls itself while at most this many run
MB = 1024 * 1024
# options grid-serve reads to place a call; everything else goes to Ray as it is
GRID_OPTIONS = ("priority", "node", "label_selector", "affinity_nodes", "anti_affinity_nodes", "placement_timeout_s",
                "queue")
RESOURCE_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources")
RAY_STRINGS = ("DEFAULT",)


def remote(*args: Any, **options: Any) -> Any:
    """`@grid.remote`, `@grid.remote(num_cpus=2, ...)`, `grid.remote(fn)`, `grid.remote(ray_fn)`."""
    if len(args) == 1 and not options and callable(args[0]):
        return _wrap(args[0], {})
    if args:
        raise TypeError("grid.remote takes a function or keyword options only, like ray.remote")
    return lambda fn: _wrap(fn, options)


def _wrap(fn: Any, options: dict[str, Any]) -> RemoteFunction:
    from ray.remote_function import RemoteFunction as RayRemoteFunction

    if isinstance(fn, RayRemoteFunction):  # keep the options it was made with
        options = {**{k: v for k, v in fn._default_options.items() if v is not None}, **options}
        fn = fn._function
    return RemoteFunction(fn, options)


class RemoteFunction:
    """A function placed by grid-serve; `.options()` and `.remote()` as on Ray's own."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any],
                 template: SchedulingRequest | None = None) -> None:
        """`template`: what each call asks the Scheduler for, when the caller has it as grid-serve's
        request already (a job's spec) rather than as Ray's options."""
        self._fn = fn
        self._options = dict(options)
        self._template = template
        self._derived: dict[str, RemoteFunction] = {}
        self._stream: Stream | None = None
        self._ray_fn: Any = None
        self._pinned: dict[tuple, Any] = {}
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"remote function {self._fn.__qualname__} cannot be called directly; use "
                        f"{self._fn.__name__}.remote(...)")

    def options(self, **options: Any) -> RemoteFunction:
        """The same function with these options over its own (cheap when repeated: calls in a
        loop with equal options share one stream, so spread stays exact across them)."""
        key = repr(sorted(options.items(), key=lambda kv: kv[0]))
        derived = self._derived.get(key)
        if derived is None:
            if len(self._derived) > 256:
                self._derived.clear()
            derived = self._derived[key] = RemoteFunction(self._fn, {**self._options, **options})
        return derived

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the call to Ray on the node grid-serve places it on; returns Ray's ObjectRef(s)."""
        if self._passes_through():
            return self._ray_function().remote(*args, **kwargs)
        _refuse_in_event_loop(self._fn.__name__)
        timeout = self._options.get("placement_timeout_s", PLACEMENT_TIMEOUT_S)
        stream = self._stream_of()
        return self._submit(stream, dispatcher().placement(stream, timeout), args, kwargs)

    async def remote_async(self, *args: Any, **kwargs: Any) -> Any:
        """`.remote()` for async code: waits for a placement without blocking the event loop."""
        if self._passes_through():
            return self._ray_function().remote(*args, **kwargs)
        timeout = self._options.get("placement_timeout_s", PLACEMENT_TIMEOUT_S)
        _, refs = await self.placed_async(args, kwargs, timeout)
        return refs

    def expect(self, calls: int) -> None:
        """Say `calls` calls are coming at once (a job's tasks), so placements for them are asked
        for together rather than in doublings."""
        if not self._passes_through():
            dispatcher().expect(self._stream_of(), calls)

    async def placed_async(self, args: tuple | list, kwargs: dict[str, Any],
                           timeout_s: float) -> tuple[SchedulingDecision, Any]:
        """`remote_async`, returning where the Scheduler placed the call with its refs (a job run
        from the caller's process records it: `grid_serve.caller_jobs`). A placement held is
        taken on this thread; only waiting for one goes to a thread of its own."""
        stream = self._stream_of()
        decision = dispatcher().held(stream)
        if decision is None:
            waiting = asyncio.ensure_future(asyncio.to_thread(dispatcher().wait_for, stream, timeout_s))
            try:
                decision = await asyncio.shield(waiting)
            except asyncio.CancelledError:  # its caller gave up: what the thread still gets goes back
                waiting.add_done_callback(functools.partial(_give_back_when_placed, stream))
                raise
        return decision, self._submit(stream, decision, tuple(args), kwargs)

    # ------------------------------------------------------------------ internals

    def _passes_through(self) -> bool:
        strategy = self._options.get("scheduling_strategy")
        return strategy is not None and (not isinstance(strategy, str) or strategy.upper() in RAY_STRINGS)

    def _submit(self, stream: Stream, decision: SchedulingDecision, args: tuple, kwargs: dict) -> Any:
        """Hand Ray the call, pinned; its end (with its run time) goes back to the books. A call
        Ray refuses (an argument it cannot pickle) gives its placement back for the next."""
        try:
            refs = self._pinned_function(decision).remote(*args, **kwargs)
        except BaseException:
            dispatcher().unused(stream, decision)
            raise
        *values, timing = refs
        dispatcher().running(timing, stream, decision.task_id)
        return values[0] if len(values) == 1 else values

    def _pinned_function(self, decision: SchedulingDecision) -> Any:
        key = decision.pin_key()
        pinned = self._pinned.get(key)
        if pinned is None:
            if len(self._pinned) > 1024:
                self._pinned.clear()
            options = self._pinning(decision)
            pinned = self._pinned[key] = self._ray_function().options(**options)
        return pinned

    @staticmethod
    def _pinning(decision: SchedulingDecision) -> dict[str, Any]:
        """Ray's options for a call placed by `decision`: soft node affinity, so Ray's retries
        may move it off a node that died, except for `node_specific`, which runs on its node
        or fails naming it (hard affinity, no retries), as a job's task does."""
        if decision.strategy is SchedulingStrategy.NODE_SPECIFIC:
            return {**decision.ray_options(soft=False), "max_retries": 0}
        return decision.ray_options(soft=True)

    def _ray_function(self) -> Any:
        """The Ray remote function: the caller's function, timed, with the caller's own options
        (one extra return carries its run time; the others are the function's own)."""
        if self._ray_fn is None:
            import ray

            ray_options = {k: v for k, v in self._options.items() if k not in GRID_OPTIONS}
            if self._passes_through():
                self._ray_fn = ray.remote(**ray_options)(self._fn) if ray_options else ray.remote(self._fn)
            else:
                returns = ray_options.pop("num_returns", 1)
                if not isinstance(returns, int) or returns < 1:
                    raise TypeError(f"grid.remote places functions with a fixed number of returns; "
                                    f"num_returns={returns!r} (a generator) runs with ray.remote")
                ray_options.pop("scheduling_strategy", None)
                ray_options.setdefault("name", self._fn.__qualname__)
                self._ray_fn = ray.remote(num_returns=returns + 1, **ray_options)(_timed(self._fn, returns))
        return self._ray_fn

    def _stream_of(self) -> Stream:
        if self._stream is None:
            self._stream = dispatcher().open(self._template or placement_template(self._fn, self._options))
        return self._stream


def _give_back_when_placed(stream: Stream, waiting: asyncio.Future) -> None:
    """The placement a cancelled call's thread got after all, held again for the next call."""
    if not waiting.cancelled() and waiting.exception() is None:
        dispatcher().unused(stream, waiting.result())


def task_type_of(fn: Callable[..., Any]) -> str:
    """What the Scheduler learns a function's run times under: its module and qualified name."""
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', 'task')}"[-200:]


def placement_template(fn: Callable[..., Any], options: dict[str, Any]) -> SchedulingRequest:
    """What every call of `fn` with `options` asks the Scheduler for (Ray's option names)."""
    strategy = options.get("scheduling_strategy") or SchedulingStrategy.SPREAD
    node = options.get("node")
    if node and "scheduling_strategy" not in options:
        strategy = SchedulingStrategy.NODE_SPECIFIC
    try:
        return SchedulingRequest(
            task_type=task_type_of(fn),
            requirements=requirements_of(options), strategy=SchedulingStrategy(strategy),
            priority=TaskPriority(options.get("priority") or TaskPriority.NORMAL), target_node=node,
            label_selector=dict(options.get("label_selector") or {}),
            affinity_nodes=tuple(options.get("affinity_nodes") or ()),
            anti_affinity_nodes=tuple(options.get("anti_affinity_nodes") or ()), queue=options.get("queue"))
    except ValueError as exc:
        raise InvalidRequestError(f"{getattr(fn, '__qualname__', fn)}: {exc}") from None


def requirements_of(options: dict[str, Any]) -> ResourceRequirement:
    """Ray's resource options as grid-serve's requirement (Ray's defaults: 1 CPU, nothing else)."""
    custom = dict(options.get("resources") or {})
    return ResourceRequirement(
        cpu_count=1.0 if options.get("num_cpus") is None else float(options["num_cpus"]),
        gpu_count=float(options.get("num_gpus") or 0.0),
        memory_mb=float(options.get("memory") or 0.0) / MB,
        custom_resources=custom)


def _timed(fn: Callable[..., Any], returns: int) -> Callable[..., Any]:
    """`fn`, returning its run time as one more value (what the Scheduler learns from)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = fn(*args, **kwargs)
        elapsed = time.perf_counter() - began
        return (result, elapsed) if returns == 1 else (*result, elapsed)

    run.__name__, run.__qualname__ = fn.__name__, fn.__qualname__
    run.__module__ = fn.__module__
    return run


def _run_times(timings: list[Any]) -> list[float | None]:
    """Each ended call's run time, None where it failed (it raised, or its worker or node died)."""
    import ray

    try:
        return [float(seconds) for seconds in ray.get(timings)]
    except Exception:  # one failed: read them one by one
        outcomes: list[float | None] = []
        for timing in timings:
            try:
                outcomes.append(float(ray.get(timing)))
            except Exception:
                outcomes.append(None)
        return outcomes


def _refuse_in_event_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{name}.remote() waits for a placement, which would block this event loop; "
                       f"use `await {name}.remote_async(...)` in async code")


# ====================================================================== the dispatcher


class Dispatcher:
    """One per process: the streams' books, and the thread that talks to the Scheduler.

    Owns nothing the cluster needs after it: the Scheduler holds each stream as a job leased to
    this process, renewed every half interval; if the process dies, the lease lapses within two
    intervals and everything it held is released (its Ray tasks die with it, as Ray's do)."""

    def __init__(self, app_name: str = APP_NAME) -> None:
        import ray
        from ray import serve

        connect_ray()
        self._scheduler = stop_safe(serve.get_deployment_handle("Scheduler", app_name=app_name))
        self._queue = queue_of_ray_job(ray.get_runtime_context().get_job_id())  # where calls naming none wait
        self._name = f"grid-caller-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._tag = uuid.uuid4().hex[:6]
        self._lock = threading.Condition()
        self._streams: dict[str, Stream] = {}  # by group: the live ones (a stream long idle rests, `_rest_idle`)
        self._opened = 0
        self._rested_at = 0.0
        self._waiting: dict[str, int] = {}  # group -> calls waiting for a placement
        self._registered: set[str] = set()
        self._polling: set[str] = set()  # streams with a wait_placed long-poll open
        self._ended: set[str] = set()  # streams the Scheduler was told are over (idle): the next call starts afresh
        self._epoch: str | None = None
        self._lease_s = 2.0
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._poked = False  # a wake-up is on its way to the thread
        self._ends: dict[Any, tuple[Stream, str]] = {}  # run-time refs of calls not yet seen to end
        self._ends_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="grid-dispatcher", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ------------------------------------------------------------------ called by callers

    def open(self, template: SchedulingRequest) -> Stream:
        with self._lock:
            group = f"{self._tag}-{self._opened}-{template.task_type.rsplit('.', 1)[-1][:40]}"
            self._opened += 1
            stream = Stream(group=group, template=template.model_copy(
                update={"job_id": group, "queue": template.queue or self._queue}))
            self._streams[group] = stream
            return stream

    def placement(self, stream: Stream, timeout_s: float) -> SchedulingDecision:
        """The next placement for a call of `stream`: at once when one is held, else after the
        Scheduler makes one (at most `timeout_s`)."""
        return self.held(stream) or self.wait_for(stream, timeout_s)

    def expect(self, stream: Stream, calls: int) -> None:
        """`stream`'s caller makes `calls` calls now: ask for their placements together."""
        with self._lock:
            self._wake_if_resting(stream)
            stream.expect(calls, time.monotonic())
            self._nudge_if_low(stream)

    def unused(self, stream: Stream, decision: SchedulingDecision) -> None:
        """A call took `decision` and never ran it: held again for the next call."""
        with self._lock:
            stream.on_unused(decision.task_id)
            self._lock.notify_all()

    def held(self, stream: Stream) -> SchedulingDecision | None:
        """A call of `stream` takes a placement held for it; None when none is (then `wait_for`)."""
        with self._lock:
            self._wake_if_resting(stream)
            decision = stream.on_call(time.monotonic())
            if decision is None and len(self._ends) <= SYNC_ENDS:  # a call that ended may have freed a slot
                self._collect_ends()
                decision = stream.take()
            if decision is not None:
                self._nudge_if_low(stream)
            return decision

    def wait_for(self, stream: Stream, timeout_s: float) -> SchedulingDecision:
        """Wait for the Scheduler to place the call that `held` found nothing for (at most
        `timeout_s`); blocks the calling thread."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._wake_if_resting(stream)
            decision = stream.take()  # placed since `held` let go of the lock
            if decision is not None:
                return decision
            self._waiting[stream.group] = self._waiting.get(stream.group, 0) + 1
            try:
                self._poke()
                while True:
                    if stream.refusal:
                        raise InvalidRequestError(stream.refusal, field="resources")
                    decision = stream.take()
                    if decision is not None:
                        return decision
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise NoCapacityError(f"no node had room for {stream.template.task_type} within "
                                              f"{plain_seconds(timeout_s)} (the cluster is busy; placement_timeout_s "
                                              "sets how long a call waits)")
                    self._lock.wait(min(left, 1.0))
            finally:
                self._waiting[stream.group] -= 1

    def _wake_if_resting(self, stream: Stream) -> None:
        """A call of a stream that rests: the dispatcher's thread looks after it again (under the lock)."""
        if stream.group not in self._streams:
            self._streams[stream.group] = stream

    def _rest_idle(self, now: float) -> None:
        """Streams quiet for `REST_S`, which the Scheduler has forgotten, leave the thread's
        rounds: a service whose jobs vary their options (resources per job) opens a stream
        per kind, and each live one costs the thread a look every tick. A call wakes one."""
        if now - self._rested_at < REST_S:
            return
        self._rested_at = now
        with self._lock:
            for group, stream in list(self._streams.items()):
                if group in self._ended and stream.quiet(now) and now - stream.last_call >= REST_S:
                    del self._streams[group]

    def running(self, timing: Any, stream: Stream, task_id: str) -> None:
        """A call went to Ray: `timing` (its run-time return) says when it ends. Ends are
        looked for in batches by the dispatcher's thread (`_collect_ends`): a callback per
        call cost the caller's thread about 60 us a call and 15% of a no-op loop's rate."""
        with self._ends_lock:
            self._ends[timing] = (stream, task_id)

    def _collect_ends(self) -> None:
        """Record the calls whose tasks ended since last looked (one `ray.wait` for all); a
        slot held again wakes the calls waiting. Called by the dispatcher's thread, and by a
        call that finds nothing held while few calls run (its predecessor's slot may be free)."""
        import ray

        with self._ends_lock:
            refs = list(self._ends)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        if not ready:
            return
        with self._ends_lock:  # the other thread may have taken some of them meanwhile
            taken = [(ref, self._ends.pop(ref)) for ref in ready if ref in self._ends]
        if not taken:
            return
        outcomes = _run_times([ref for ref, _ in taken])
        now = time.monotonic()
        with self._lock:
            held_again = [stream.on_ended(task_id, duration is not None, duration, now)
                          for (_, (stream, task_id)), duration in zip(taken, outcomes)]
            if any(held_again):
                self._lock.notify_all()

    def _calls_wait(self) -> bool:
        with self._lock:
            return any(self._waiting.values())

    def _nudge_if_low(self, stream: Stream) -> None:
        """Ask ahead before the stream runs dry: once what it holds and asked for is down to half
        its target, not at every call below it (that woke the thread, and made a Scheduler
        exchange, every few calls; BENCHMARKS.md, "slots reused")."""
        if 2 * (len(stream.stock) + len(stream.asked)) <= stream.target(time.monotonic()):
            self._poke()

    def _poke(self) -> None:
        """Wake the dispatcher's thread, once until it wakes (a wake-up per call was a syscall
        and a thread switch per call)."""
        if not self._poked:
            self._poked = True
            self._loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ the background thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        settings = await self._scheduler.caller_settings.remote()
        self._epoch, self._lease_s = settings["epoch"], settings["lease_s"]
        self._loop.create_task(self._heartbeat())
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), HURRY_S if self._calls_wait() else TICK_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            self._poked = False
            self._collect_ends()
            for stream in list(self._streams.values()):
                try:
                    await self._exchange(stream)
                except Exception as exc:  # the Scheduler is away (restarting): try again next tick
                    logger.warning("grid dispatcher: %s: %s", type(exc).__name__, exc)
                    await asyncio.sleep(0.25)
            self._rest_idle(time.monotonic())

    async def _exchange(self, stream: Stream) -> None:
        """Tell the Scheduler what changed for `stream`; take what it placed."""
        now = time.monotonic()
        with self._lock:
            cancelled = stream.on_idle(now)
            wanted = stream.wanted(now, self._waiting.get(stream.group, 0))
            if wanted:
                stream.ask(wanted)
            report = stream.take_report()
        if cancelled:
            await self._scheduler.cancel.remote(stream.group)
        try:
            if stream.group not in self._registered:
                if stream.group not in self._ended and stream.next_index > len(report.requeue):
                    # known before, and the Scheduler forgot it (restarted, or its lease lapsed): register again
                    await self._adopt(stream)  # with what runs, is held and waits; older ends no longer matter
                    return
                if not report.requeue:
                    return
                reply = await self._scheduler.submit.remote(Submit(requests=report.requeue, runner=self._name,
                                                                   publish=False))
                self._registered.add(stream.group)
                self._ended.discard(stream.group)
            elif report:
                reply = await self._scheduler.report.remote(report)
            else:
                reply = None
        except Exception:
            with self._lock:
                stream.on_report_failed(report)
            raise
        if reply is not None:
            self._take(stream, reply)
        with self._lock:
            quiet = stream.group in self._registered and stream.quiet(time.monotonic())
        if quiet:  # an idle stream holds nothing at the Scheduler, not even what a lost reply left behind
            await self._scheduler.finished.remote(stream.group)
            with self._lock:  # nothing was placed for it meanwhile: only this loop hears the Scheduler
                stream.on_forgotten()
            self._registered.discard(stream.group)
            self._ended.add(stream.group)
        if stream.asked and stream.group in self._registered and stream.group not in self._polling:
            self._polling.add(stream.group)
            self._loop.create_task(self._poll(stream))

    async def _poll(self, stream: Stream) -> None:
        """Long-poll for placements the Scheduler makes as others' work ends, while any waits."""
        try:
            while stream.asked and stream.group in self._registered:
                self._take(stream, await self._scheduler.wait_placed.remote(stream.group, POLL_S))
        except Exception as exc:
            logger.warning("grid dispatcher: waiting for placements: %s: %s", type(exc).__name__, exc)
        finally:
            self._polling.discard(stream.group)

    def _take(self, stream: Stream, reply: Placements) -> None:
        with self._lock:
            stream.on_reply(reply)
            if reply.placed or reply.rejected:
                self._lock.notify_all()
        if not reply.known:
            self._registered.discard(stream.group)

    async def _heartbeat(self) -> None:
        """Renew the streams' leases; register a stream again with a restarted Scheduler."""
        while True:
            await asyncio.sleep(self._lease_s / 4)
            groups = [group for group in list(self._streams) if group in self._registered]
            if not groups:
                continue
            try:
                epoch, unknown = await self._scheduler.renew.remote(groups)
            except Exception as exc:
                logger.warning("grid dispatcher: lease renewal failed (%s); retrying", type(exc).__name__)
                continue
            if epoch != self._epoch:
                self._epoch, unknown = epoch, groups
            for stream in [s for s in list(self._streams.values()) if s.group in unknown]:
                await self._adopt(stream)

    async def _adopt(self, stream: Stream) -> None:
        with self._lock:
            held, waiting = stream.on_scheduler_lost()
            counts = dict(stream.counts)  # what it holds, per node: the new Scheduler's spread counts
        running = [(decision, stream.template.task_type) for decision in held]
        reply = await self._scheduler.adopt.remote(Adopt(runner=self._name, group=stream.group, running=running,
                                                         waiting=waiting, placed_per_node=counts,
                                                         priority=stream.template.priority,
                                                         queue=stream.template.queue))
        self._registered.add(stream.group)
        self._take(stream, reply)

    def close(self) -> None:
        """At exit: tell the Scheduler this process's streams are over (else their leases lapse)."""
        groups = list(self._registered)
        if not groups or not self._thread.is_alive():
            return

        async def finish() -> None:
            await asyncio.gather(*(self._scheduler.finished.remote(group) for group in groups), return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(finish(), self._loop).result(timeout=2.0)
        except Exception:
            pass


_DISPATCHER: Dispatcher | None = None
_DISPATCHER_LOCK = threading.Lock()


def dispatcher() -> Dispatcher:
    """This process's dispatcher, started on first use."""
    global _DISPATCHER
    if _DISPATCHER is None:
        with _DISPATCHER_LOCK:
            if _DISPATCHER is None:
                _DISPATCHER = Dispatcher()
    return _DISPATCHER
