"""Built-in task functions and the registry HTTP callers choose from by name.

A task is a plain function; `@task(...)` records it with the resources it needs by default.
`serve_config.yaml` names the modules whose tasks the app registers (this one by default),
so users add their own by listing a module there. Tasks report where they ran from inside
themselves (node label, node id, IP), which is what the tests check.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .caller_code import open_function
from .models import NODE_LABEL, ResourceRequirement

# What a task says it needs for one run's arguments: fields of ResourceRequirement to change
# from its default, or None to keep the default (arguments the task itself will refuse)
Sizer = Callable[[list[Any], dict[str, Any]], "dict[str, float] | None"]


@dataclass(frozen=True)
class TaskType:
    name: str
    fn: Callable[..., Any]
    requirements: ResourceRequirement
    description: str
    sized_by: Sizer | None = None  # tasks whose needs follow their arguments (memory_task)

    def requirements_for(self, args: list[Any], kwargs: dict[str, Any]) -> ResourceRequirement:
        """What one run with these arguments needs: the default, or what `sized_by` says."""
        changes = self.sized_by(args, kwargs) if self.sized_by is not None else None
        return self.requirements.model_copy(update=changes) if changes else self.requirements


_REGISTRY: dict[str, TaskType] = {}


def task(name: str | None = None, *, cpu_count: float = 1.0, gpu_count: float = 0.0,
         memory_mb: float = 0.0, sized_by: Sizer | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a task type: `@task(gpu_count=1)`. `sized_by(args, kwargs)`, for
    a task whose needs follow its arguments, says what one run needs beyond the default."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name or fn.__name__
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[task_name] = TaskType(
            task_name, fn,
            ResourceRequirement(cpu_count=cpu_count, gpu_count=gpu_count, memory_mb=memory_mb),
            doc[0] if doc else "", sized_by,
        )
        return fn

    return register


def load_task_modules(modules: list[str]) -> dict[str, TaskType]:
    """Import the modules named in the app config; their `@task`s register themselves."""
    for module in modules:
        importlib.import_module(module)
    return dict(_REGISTRY)


def where_am_i() -> dict[str, str]:
    """The node this code runs on, as seen from inside: its grid name, Ray node id, IP and hostname
    (the machine's own, from the process: what shows which host really ran it)."""
    return dict(_this_node())


@functools.lru_cache(maxsize=1)
def _this_node() -> tuple[tuple[str, str], ...]:
    """Asked once per worker process (a worker never changes node): the labels lookup costs
    more than a no-op task itself, and every task's envelope needs it."""
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    labels = context.get_node_labels()
    ip = ray.util.get_node_ip_address()
    return (("node", labels.get(NODE_LABEL) or ip), ("node_id", node_id), ("ip", ip), ("hostname", socket.gethostname()))


@task()
def compute_task(task_id: int = 0) -> dict[str, Any]:
    """Report where the task ran: task id, node name, node id, IP, hostname."""
    return {"task_id": task_id, **where_am_i()}


@task()
def noop(task_id: int = 0) -> int:
    """Do nothing; for measuring overhead."""
    return task_id


@task()
def cpu_task(task_id: int = 0, iterations: int = 200_000) -> dict[str, Any]:
    """Burn CPU for a while (a sum of squares) and report where."""
    _check_range("iterations", iterations, 0, 10**9)
    total = 0
    for i in range(iterations):
        total += i * i
    return {"task_id": task_id, "checksum": total % 1_000_003, **where_am_i()}


@task()
def sleep_task(task_id: int = 0, seconds: float = 0.5) -> dict[str, Any]:
    """Sleep, then report where and when it started (for queue and priority checks)."""
    _check_range("seconds", seconds, 0, 3600)
    started = time.time()
    time.sleep(seconds)
    return {"task_id": task_id, "started": started, "slept_s": seconds, **where_am_i()}


MEMORY_TASK_MB = 32  # memory_task's default block
MEMORY_TASK_MAX_MB = 16 * 1024
MEMORY_HEADROOM_MB = 32  # what a run takes besides its block (the copy and bookkeeping of its answer)


def memory_task_needs(args: list[Any], kwargs: dict[str, Any]) -> dict[str, float] | None:
    """memory_task allocates `megabytes` (its second argument): it reserves that plus headroom,
    so a block too large for every node is refused up front rather than run into a node's memory.

    >>> memory_task_needs([0, 1000], {}), memory_task_needs([], {"megabytes": 8}), memory_task_needs([0, "x"], {})
    ({'memory_mb': 1032}, {'memory_mb': 40}, None)
    """
    megabytes = kwargs.get("megabytes", args[1] if len(args) > 1 else MEMORY_TASK_MB)
    if not isinstance(megabytes, int) or isinstance(megabytes, bool) or not 0 <= megabytes <= MEMORY_TASK_MAX_MB:
        return None  # the task refuses it itself, with its own error
    return {"memory_mb": megabytes + MEMORY_HEADROOM_MB}


@task(memory_mb=MEMORY_TASK_MB + MEMORY_HEADROOM_MB, sized_by=memory_task_needs)
def memory_task(task_id: int = 0, megabytes: int = MEMORY_TASK_MB) -> dict[str, Any]:
    """Allocate and touch `megabytes` of memory (and reserve that plus 32 MB), then report where."""
    _check_range("megabytes", megabytes, 0, MEMORY_TASK_MAX_MB)
    block = bytearray(megabytes * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    return {"task_id": task_id, "allocated_mb": megabytes, **where_am_i()}


@task(gpu_count=1)
def gpu_task(task_id: int = 0) -> dict[str, Any]:
    """Report the GPU(s) Ray gave this task (CUDA_VISIBLE_DEVICES) and where it ran."""
    import ray

    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return {"task_id": task_id, "gpu_ids": list(gpu_ids),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **where_am_i()}


@task()
def slow_on_node(task_id: int = 0, node: str = "gpu2", slow_s: float = 0.5, fast_s: float = 0.05) -> dict[str, Any]:
    """Sleep `slow_s` on the named node and `fast_s` elsewhere: a deliberately slow node."""
    here = where_am_i()
    time.sleep(slow_s if here["node"] == node else fast_s)
    return {"task_id": task_id, **here}


def _check_range(name: str, value: float, low: float, high: float) -> None:
    """HTTP callers choose task arguments: refuse absurd ones before they hurt the node."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def run_task(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one task inside a Ray worker and wrap what happened, with timing and node.

    Errors are caught here so the envelope still says where and how long: the Scheduler
    releases the reservation either way.
    """
    here = where_am_i()
    started = time.time()
    began = time.perf_counter()
    try:
        result, ok, error = open_function(fn)(*args, **kwargs), True, None
    except Exception as exc:  # the user's task failed; report it, do not crash the job
        result, ok, error = None, False, f"{type(exc).__name__}: {exc}"
    return {
        "ok": ok, "result": result, "error": error, "node_id": here["node_id"], "node_name": here["node"],
        "started_at": started, "duration_s": time.perf_counter() - began,
    }


def run_call(fn: Callable[..., Any], keywords: list[str], *values: Any) -> dict[str, Any]:
    """`run_task` with the task's arguments as Ray's own: positional ones, then the values of
    `keywords`, all at the top level of the Ray call, so Ray resolves `ObjectRef`s among them
    before the task starts, as it does for a plain `f.remote(ref)` (nested ones stay refs)."""
    split = len(values) - len(keywords)
    with running_on_when_asked_back_late():
        return run_task(fn, list(values[:split]), dict(zip(keywords, values[split:])))


# A task its runner asked Ray to drop unstarted (`grid_serve.take_back`) is named here, in Ray's
# key-value store, before Ray is asked: one that had started by then runs on (see below).
TAKE_BACK_NAMESPACE = "grid-take-back"


@contextlib.contextmanager
def running_on_when_asked_back_late() -> Iterator[None]:
    """Ray drops a cancelled task that has not started; one that has gets a KeyboardInterrupt
    (`_thread.interrupt_main`, the SIGINT handler). A take-back that crossed the task's start
    must not stop it: while the task runs, an interrupt is ignored if its runner named the task
    as asked back, and handled as before otherwise (a cancelled job's tasks stop as they did)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_DFL or SIG_IGN: Ray's interrupt does nothing here anyway
        yield
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if not _asked_back():
            previous(signum, frame)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _asked_back() -> bool:
    """Whether this task's runner asked it back (read only when an interrupt comes)."""
    try:
        import ray
        from ray.experimental import internal_kv

        task_id = ray.get_runtime_context().get_task_id()
        return internal_kv._internal_kv_get(task_id, namespace=TAKE_BACK_NAMESPACE) is not None
    except Exception:  # no answer: the interrupt is handled as it would be without take-backs
        return False


def run_call_keeping_result(fn: Callable[..., Any], keywords: list[str], *values: Any) -> tuple[dict[str, Any], Any]:
    """`run_call` for a job with `result_refs`, as a Ray task with two returns: the envelope
    (without the result: its runner reads only this) and the result, which stays in Ray's
    object store for the caller."""
    envelope = run_call(fn, keywords, *values)
    return envelope, envelope.pop("result")


def run_chunk(fn: Callable[..., Any], calls: list[tuple[list[Any], dict[str, Any]]],
              stop_after_s: float) -> list[dict[str, Any]]:
    """Run several tasks of one job back to back in one Ray task (very short ones: see
    `grid_serve.lookahead.chunk_sizes`), one envelope each. Once `stop_after_s` has passed
    it stops, having run at least one: the caller dispatches the rest on their own, so a task
    that runs far longer than learned holds back no other task behind it."""
    began = time.perf_counter()
    envelopes = []
    for args, kwargs in calls:
        if envelopes and time.perf_counter() - began > stop_after_s:
            break
        envelopes.append(run_task(fn, args, kwargs))
    return envelopes
